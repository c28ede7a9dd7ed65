"""Infections after CAR-T: time window, prophylaxis at onset and a CTCAE v5.0 grade suggested from treatment
(grading.md section 6: 6.1 record and windows, 6.2 CTCAE v5.0 infection terms and their "automatable part",
6.4 IAGO, Rejeski et al., Nat Med 2025). Criteria are data in mappings/infection-grading.yaml.

Combining rules:
- 6.1: one event per coded infection Condition with onset on day >= 0; window by onset day (profile setting).
- 6.2 / 11.19: an anti-infective is this infection's treatment when its reasonReference names the Condition,
  or, not linked elsewhere and not prophylactic, when it starts near the onset (intent "unknown") or while
  the infection runs (intent "treatment"). Prophylaxis is never read as treatment.
- 6.2: oral only -> 2, IV -> 3, vasopressor or mechanical ventilation during the infection -> 4; then the
  grades the CTCAE term has (Bacteremia 2 only, Sepsis 3-5): a diagnosis of a term starting at N is >= N.
- Decision 2 / 11.15: no grade 5; a death while the infection runs is flagged for a clinician.
- 6.4 Optimization: anti-infective prophylaxis whose interval covers the onset is reported with the event.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from ..errors import ConfigError
from ..model import ConditionFact, DrugAdmin, Reading
from ..tables import DrugTable, InfectionTable, Row, Table
from ..timeline import Course
from .result import Assessment, Event, Findings, State, Toxicity

NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
ASSESSMENT_CODE = "infection-grade-ctcae"
MISSING_TREATMENT = "anti-infective treatment (MedicationAdministration linked to the infection)"
MISSING_DEATH_CAUSE = "cause of death attributed to the infection (clinician-entered)"


class InfectionSettings(Row, frozen=True, kw_only=True):
    window_profile: str
    treatment_after_onset_days: int
    link_before_onset_hours: int
    open_infection_days: int
    prophylaxis_dose_cover_hours: int
    same_episode_days: int = 14
    treatment_min_grade: int
    verified: bool
    source: str


class WindowRow(Row, frozen=True, kw_only=True):
    profile: str
    window: Literal["early", "late", "very-late"]
    from_day: int
    to_day: int | None
    verified: bool
    source: str


class TermGradeRow(Row, frozen=True, kw_only=True):
    ctcae_term: str
    min_grade: int
    max_grade: int
    verified: bool
    source: str


class RouteRow(Row, frozen=True, kw_only=True):
    route: Literal["intravenous", "oral"]
    system: str
    code: str
    grade: int
    verified: bool
    source: str


class SupportRow(Row, frozen=True, kw_only=True):
    support: Literal["vasopressor", "mechanical-ventilation"]
    drug_roles: tuple[str, ...] = ()
    oxygen_devices: tuple[str, ...] = ()
    grade: int
    verified: bool
    source: str


class InfectionGradingTable(Table, frozen=True, kw_only=True):
    settings: InfectionSettings
    windows: tuple[WindowRow, ...]
    terms: tuple[TermGradeRow, ...]
    routes: tuple[RouteRow, ...]
    organ_support: tuple[SupportRow, ...]

    def __post_init__(self) -> None:
        for profile in {w.profile for w in self.windows}:
            rows = sorted((w for w in self.windows if w.profile == profile), key=lambda w: w.from_day)
            ends = [r.to_day for r in rows]
            if rows[0].from_day != 0 or ends[-1] is not None or None in ends[:-1] or \
                    any(a.to_day is not None and a.to_day + 1 != b.from_day for a, b in itertools.pairwise(rows)):
                raise ValueError(f"windows of profile {profile} must run contiguously from day 0 to open end")
        if self.settings.window_profile not in {w.profile for w in self.windows}:
            raise ValueError(f"settings.window_profile {self.settings.window_profile} has no windows")
        terms = [t.ctcae_term for t in self.terms]
        if len(set(terms)) != len(terms):
            raise ValueError("terms: duplicate ctcae_term")
        if any(not 1 <= t.min_grade <= t.max_grade <= 5 for t in self.terms):
            raise ValueError("terms: grades must satisfy 1 <= min_grade <= max_grade <= 5")


Link = Literal["reasonReference", "intent", "timing"]


@dataclass(frozen=True, slots=True)
class _Treatment:
    drug: DrugAdmin
    link: Link  # how it was tied to the infection
    grade: int | None  # from the route; None when the route does not decide it


class InfectionGrader:
    """Suggests a CTCAE v5.0 grade for each infection of a course and records its IAGO context."""

    def __init__(self, table: InfectionGradingTable, drugs: DrugTable, infections: InfectionTable,
                 window_profile: str | None = None) -> None:
        self.t = table
        self.s = self.t.settings
        self.profile = window_profile or self.s.window_profile
        self.windows = [w for w in self.t.windows if w.profile == self.profile]
        if not self.windows:
            raise ConfigError(f"infection-grading.yaml: no windows for profile {self.profile}")
        self.terms = {t.ctcae_term: t for t in self.t.terms}
        unknown = {r.ctcae_term for r in infections.rows} - set(self.terms)
        if unknown:
            raise ConfigError(f"infections.yaml: CTCAE terms {sorted(unknown)} have no row in "
                              "infection-grading.yaml")
        self.drug_rows = {d.agent: d for d in drugs.rows if d.role == "anti-infective"}
        self.routes = {r.code: r for r in self.t.routes}
        self.top_route = max(r.grade for r in self.t.routes)
        self.table_id = f"{self.t.table} v{self.t.version}"

    def grade(self, course: Course) -> Findings:
        facts = [(day, f) for day, f in course.conditions if f.table == "infections" and day >= 0]
        events = tuple(self._event(course, day, f) for day, f in self._episodes(facts))
        # Each infection's assessment travels on its Event (one Observation per event, written with it).
        return Findings(assessments=(), events=events)

    def _episodes(self, facts: list[tuple[int, ConditionFact]]) -> list[tuple[int, ConditionFact]]:
        """A positive culture or PCR (an Observation) is an infection of its own only when no infection
        Condition of the same kind was diagnosed within `same_episode_days` of it, and only its first
        result counts (grading.md 11.19: same organism and site within 14 days = one episode)."""
        window = self.s.same_episode_days
        kept: list[tuple[int, ConditionFact]] = [(d, f) for d, f in facts if not f.ref.startswith("Observation/")]
        for day, f in facts:
            if not f.ref.startswith("Observation/"):
                continue
            same = [d for d, g in kept if (g.key == f.key or (g.attr("pathogen_type") == f.attr("pathogen_type")
                                                               and g.attr("site") == f.attr("site")))
                    and abs(d - day) <= window]
            if not same:
                kept.append((day, f))
        return sorted(kept, key=lambda df: df[1].onset.at)

    # ---- one infection --------------------------------------------------------------------------

    def _event(self, course: Course, day: int, f: ConditionFact) -> Event:
        window = self.window(day)
        horizon = self._horizon(course)
        treated = self._treatments(course, f)
        treated_refs = {t.drug.ref for t in treated}
        proph = [d for d in self._anti_infectives(course) if d.ref not in treated_refs
                 and self._prophylactic(d) and self._covers(d, f.onset.at, horizon)]
        a = self._assess(course, day, f, window, treated, proph, horizon)
        classes = dict.fromkeys(self.drug_rows[d.agent].drug_class or "" for d in proph)
        details: tuple[tuple[str, object], ...] = (
            ("window", window), ("type", f.attr("pathogen_type", "other")), ("prophylaxis", bool(proph)),
            ("site", f.attr("site")), ("prophylaxis_agents", ", ".join(_agents(proph))),
            ("prophylaxis_classes", ", ".join(c for c in classes if c)), ("window_profile", self.profile),
            ("ctcae_term", f.attr("ctcae_term")))
        ncit = f.attr("ncit")
        # A Condition records the infection itself; a positive result gets a Condition of our own.
        condition_ref = None if f.ref.startswith("Observation/") else f.ref
        return Event(Toxicity.INFECTION, f.ref, a.state, a.value, f.onset.at, day,
                     f.abatement.at if f.abatement else None,
                     course.day_of(f.abatement) if f.abatement else None, a, condition_ref,
                     (NCIT, ncit, f.attr("ctcae_term")) if ncit else None, details, (f.ref,))

    def window(self, day: int) -> str:
        """6.1: the window of an onset day in the selected profile."""
        for w in self.windows:
            if w.from_day <= day and (w.to_day is None or day <= w.to_day):
                return w.window
        raise ValueError(f"no infection window for day {day}")  # profiles are checked to cover day >= 0

    def _assess(self, course: Course, day: int, f: ConditionFact, window: str, treated: list[_Treatment],
                proph: list[DrugAdmin], horizon: datetime | None) -> Assessment:
        term = self.terms[f.attr("ctcae_term")]
        w = next(x for x in self.windows if x.window == window)
        span = f"days {w.from_day}-{w.to_day}" if w.to_day is not None else f"day {w.from_day} on"
        reasons = [f"{f.display} on day {day}: {window} window ({span}, profile {self.profile})"]
        flags = ["attribution-unconfirmed"]
        # (input reference, grade it suggests): anti-infective treatments by route, then organ support.
        drivers = [(t.drug.ref, t.grade or self.s.treatment_min_grade) for t in treated]
        open_route = [t for t in treated if t.grade is None]
        if treated:
            known = [t.grade for t in treated if t.grade is not None]
            g = max(known, default=self.s.treatment_min_grade)
            route = ("intravenous" if g >= self.top_route else "oral") if known else "route not recorded"
            agents = ", ".join(dict.fromkeys(t.drug.agent for t in treated))
            reasons.append(f"anti-infective treatment ({agents}), {route} (grade {g})")
            if any(t.link == "timing" for t in treated):
                flags.append("treatment-linked-by-timing")
        support = self._organ_support(course, f, horizon)
        if support:
            drivers += [(ref, row.grade) for row, ref in support]
            open_route = []  # organ support decides above any route
            reasons.append("organ support during the infection: " + ", ".join(dict.fromkeys(
                row.support for row, _ in support)) + f" (grade {max(row.grade for row, _ in support)})")
            flags.append("organ-support-attribution")  # 11.12: CRS may explain it
        raw = max((g for _, g in drivers), default=None)
        state, value, missing = self._bounded(term, raw, open_route, reasons, flags)
        state = self._death(course, f, term, state, value, reasons, flags, missing)
        if proph:
            reasons.append("prophylaxis running at onset: " + ", ".join(_agents(proph)))
        evidence = [f.ref] + [ref for ref, g in drivers if g == raw]
        supporting = [ref for ref, _ in drivers if ref not in evidence] + [d.ref for d in proph]
        return Assessment(Toxicity.INFECTION, ASSESSMENT_CODE, state, value, f.onset.at,
                          f.abatement.at if f.abatement else None, None, (), tuple(dict.fromkeys(evidence)),
                          tuple(dict.fromkeys(supporting)), tuple(missing), tuple(reasons),
                          tuple(dict.fromkeys(flags)), self.table_id)

    def _bounded(self, term: TermGradeRow, raw: int | None, open_route: list[_Treatment], reasons: list[str],
                 flags: list[str]) -> tuple[State, int | None, list[str]]:
        """6.2: the suggested grade within the grades the CTCAE term has; the term's lowest grade is proven
        by the diagnosis itself. A treatment with no known route leaves the grade open up to IV's grade."""
        name, lo, hi = term.ctcae_term, term.min_grade, term.max_grade
        if raw is None:
            if lo == hi:
                reasons.append(f"CTCAE {name} has grade {lo} only")
                return State.GRADED, lo, []
            if lo >= 2:
                reasons.append(f"CTCAE {name} starts at grade {lo}: the diagnosis proves at least {lo}")
                return State.AT_LEAST, lo, [MISSING_TREATMENT]
            return State.NOT_ASSESSABLE, None, [MISSING_TREATMENT]
        value = min(max(raw, lo), hi)
        if raw < lo:
            reasons.append(f"CTCAE {name} starts at grade {lo}")
        elif raw > hi:
            reasons.append(f"CTCAE {name} has no grade above {hi} (suggestion {raw} capped)")
            flags.append("ctcae-term-capped")
        if open_route and value < min(self.top_route, hi):
            flags.append("route-unknown")
            return State.AT_LEAST, value, [f"route (oral or intravenous) of {t.drug.ref}" for t in open_route]
        return State.GRADED, value, []

    @staticmethod
    def _death(course: Course, f: ConditionFact, term: TermGradeRow, state: State, value: int | None,
               reasons: list[str], flags: list[str], missing: list[str]) -> State:
        """Decision 2: a death while the infection runs is never grade 5 by itself; it keeps the grade open
        (at least the suggested grade) when the term has a grade 5."""
        died = course.patient.deceased
        if died is None or died.at < f.onset.at or (f.abatement is not None and died.at > f.abatement.at):
            return state
        flags.append("death-during-infection")
        reasons.append(f"patient died on day {course.day_of(died)} with the infection active: grade 5 needs "
                       "a clinician-entered cause of death")
        if term.max_grade == 5 and value is not None:
            missing.append(MISSING_DEATH_CAUSE)
            return State.AT_LEAST
        return state

    # ---- drugs and organ support ------------------------------------------------------------------

    def _anti_infectives(self, course: Course) -> list[DrugAdmin]:
        return sorted((d for d in course.drugs if d.agent in self.drug_rows), key=lambda d: d.start.at)

    def _prophylactic(self, d: DrugAdmin) -> bool:
        """Stated prophylaxis, or a typically prophylactic agent with no stated intent (6.2 pitfall)."""
        typical = self.drug_rows[d.agent].typical_use
        return d.intent == "prophylaxis" or (d.intent == "unknown" and typical == "prophylaxis")

    def _treatments(self, course: Course, f: ConditionFact) -> list[_Treatment]:
        """6.2 pitfall / 11.19: linked by reasonReference (any time); else, unless prophylactic or linked to
        another Condition, a stated treatment started while the infection runs, or an unstated one started
        from the lead time before onset to `treatment_after_onset_days` after it."""
        lead = timedelta(hours=self.s.link_before_onset_hours)
        first = f.onset.at - lead
        timing_end = course.window(course.day_of(f.onset) + self.s.treatment_after_onset_days)[1]
        other_conditions = set(course.patient.condition_codes) - {f.ref}
        out: list[_Treatment] = []
        for d in self._anti_infectives(course):
            link: Link
            if f.ref in d.reasons and d.intent != "prophylaxis":
                link = "reasonReference"
            elif set(d.reasons) & other_conditions or self._prophylactic(d):
                continue  # treats another diagnosis, or prevents (never read as treatment)
            elif d.intent == "treatment" and first <= d.start.at <= self._end(f):
                link = "intent"
            elif first <= d.start.at < timing_end:
                link = "timing"
            else:
                continue
            row = self.routes.get(d.route or "")
            out.append(_Treatment(d, link, row.grade if row else None))
        return out

    def _organ_support(self, course: Course, f: ConditionFact,
                       horizon: datetime | None) -> list[tuple[SupportRow, str]]:
        start = f.onset.at - timedelta(hours=self.s.link_before_onset_hours)
        end = self._end(f)
        out: list[tuple[SupportRow, str]] = []
        for row in self.t.organ_support:
            for d in course.drugs:
                if d.role in row.drug_roles and self._interval_overlaps(d, start, end, horizon):
                    out.append((row, d.ref))
            out += [(row, r.ref) for _, r in course.of("oxygen-device")
                    if _device_in(r, row.oxygen_devices, start, end)]
        return out

    def _end(self, f: ConditionFact) -> datetime:
        """The end of the infection: its abatement, else onset + open_infection_days (11.19 convention)."""
        return f.abatement.at if f.abatement else f.onset.at + timedelta(days=self.s.open_infection_days)

    @staticmethod
    def _stop(d: DrugAdmin, horizon: datetime | None,
              instant_cover: timedelta = timedelta(0)) -> datetime | None:
        """When a drug stops running: its end; an instant dose covers `instant_cover`; open -> horizon."""
        if d.instant:
            return d.start.at + instant_cover
        if d.end is not None:
            return d.end.at
        return horizon  # still running: to the data's end (None: no end known)

    def _interval_overlaps(self, d: DrugAdmin, start: datetime, end: datetime,
                           horizon: datetime | None) -> bool:
        stop = self._stop(d, horizon)
        return d.start.at <= end and (stop is None or stop >= start)

    def _covers(self, d: DrugAdmin, at: datetime, horizon: datetime | None) -> bool:
        """6.1 prophylaxis at onset: the drug's interval includes the onset (open ones run to the horizon)."""
        stop = self._stop(d, horizon, timedelta(hours=self.s.prophylaxis_dose_cover_hours))
        return d.start.at <= at and (stop is None or at <= stop)

    @staticmethod
    def _horizon(course: Course) -> datetime | None:
        """The data's end: the patient's horizon, stretched to the course's infection onsets and abatements
        (the ingest horizon counts readings and drugs only)."""
        times = [f.onset.at for _, f in course.conditions]
        times += [f.abatement.at for _, f in course.conditions if f.abatement is not None]
        if course.patient.horizon is not None:
            times.append(course.patient.horizon)
        return max(times, default=None)


def _agents(drugs: list[DrugAdmin]) -> list[str]:
    return list(dict.fromkeys(d.agent for d in drugs))


def _device_in(r: Reading, devices: tuple[str, ...], start: datetime, end: datetime) -> bool:
    return r.concept == "oxygen-device" and str(r.value) in devices and start <= r.when.at <= end
