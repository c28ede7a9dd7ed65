"""Treatments and response of CRS/ICANS episodes (grading.md section 8, preface decision 12).

Sources: NCCN Management of Immunotherapy-Related Toxicities v2.2026 CART-6/CART-9 and ASCO 2021 (agents
and doses, grading.md 8.1); Jain, Smith, Shah, Blood 2023;141(20):2430 (no consensus on refractory disease:
the local definition of grading.md 8.3, labelled "local-definition-v1" per 11.14); Meng et al., Front
Immunol 2025, doi:10.3389/fimmu.2025.1716317 (IDM remission table, grading.md 8.5). Thresholds, codes and
windows are rows of mappings/treatment-response.yaml; this module holds the combining rules:

- T1 linking: a reasonReference to a CRS/ICANS Condition decides the episode whatever the timing; without
  one, a dose given from the episode onset until its resolution belongs to it when the agent treats that
  toxicity (tocilizumab/siltuximab: CRS; intrathecal: ICANS; steroids/anakinra: whichever is open, both
  when CRS and ICANS are open, flagged). Prophylaxis, and any dose before the onset, treats no episode.
- T2 exposure: dexamethasone equivalents of systemic corticosteroids only (intrathecal excluded, 8.1).
- T3 refractory (8.3): the first table row met decides; a row the data cannot decide is named as missing.
- T4 response (8.4, 8.5): baselines are the daily grades of the first-dose day and the day before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from ..errors import ConfigError
from ..model import DrugAdmin, Moment
from ..tables import DrugTable, IcansSettings, Row, Table, load_tables, load_yaml_table
from ..timeline import Course
from .result import Assessment, Component, DayGrade, Episode, State, Toxicity

ToxName = Literal["crs", "icans"]
IDM_SOURCE = "Meng 2025 IDM remission (grading.md 8.5)"


class Sourced(Row):
    verified: bool
    source: str


class AgentRow(Sourced):
    agent: str
    treats: Literal["crs", "icans", "any"]


class IntrathecalRow(Sourced):
    route_system: str
    route_code: str
    treats: ToxName
    label: str
    idm_agents: tuple[str, ...]


class ReasonRow(Sourced):
    system: str
    code: str
    match: Literal["exact", "prefix"]
    toxicity: ToxName

    def matches(self, coding: str) -> bool:
        system, _, code = coding.partition("|")
        # ICD-10-CM codes are compared without the dot (both spellings occur in EHR extracts).
        mine, theirs = self.code.replace(".", ""), code.replace(".", "")
        hit = theirs.startswith(mine) if self.match == "prefix" else theirs == mine
        return system == self.system and hit


class ReasonWindow(Sourced):
    before_onset_hours: float
    after_resolution_hours: float


class HighDoseRow(Sourced):
    id: str
    agent: str
    min_mg_per_24h: float
    text: str
    flag: str | None = None  # review hint when this row decides (a documented default was used)


class RefractoryRow(Sourced):
    id: str
    toxicity: ToxName
    kind: Literal["persists", "second-line"]
    text: str
    min_grade: int | None = None  # persists
    hours: float | None = None  # persists
    agents: tuple[str, ...] = ()  # second-line
    after: tuple[str, ...] = ()  # second-line: only these steroids count as "steroids first"
    min_mg_per_24h: float | None = None  # second-line: only a dose reaching this 24-h total


class ImprovementRule(Sourced):
    drop: int
    baseline_days_before: int


class RemissionRow(Sourced):
    id: str
    baseline_min: int
    baseline_max: int
    target: Literal["grade-at-most", "ice-score", "capd-score"]
    value: int
    text: str


class RemissionRules(Row):
    baseline_days_before: int
    rows: tuple[RemissionRow, ...]


class DoseLimitRow(Sourced):
    id: str
    agent: str
    max_doses: int
    window_hours: float | None = None
    flag: str


class TreatmentTable(Table):
    definition_version: str
    agents: tuple[AgentRow, ...]
    intrathecal: IntrathecalRow
    dose_unit: str
    reasons: tuple[ReasonRow, ...]
    reason_window: ReasonWindow
    high_dose: tuple[HighDoseRow, ...]
    refractory: tuple[RefractoryRow, ...]
    improvement: ImprovementRule
    remission: RemissionRules
    dose_limits: tuple[DoseLimitRow, ...]


def load_treatment_table() -> TreatmentTable:
    return load_yaml_table("treatment-response.yaml", TreatmentTable)


@dataclass(frozen=True, slots=True)
class TreatmentResponse:
    """What was given for one CRS/ICANS episode and how the episode responded (grading.md 8.1-8.5)."""

    episode_number: int
    toxicity: Toxicity
    treatments: tuple[str, ...]  # agent names in order of first use; "idm" = intrathecal dex/methotrexate
    treatment_refs: tuple[str, ...]  # DrugAdmin.ref of every linked dose, in time order
    first_treatment_at: datetime | None
    first_treatment_day: int | None
    hours_onset_to_first_treatment: float | None
    dexamethasone_equivalent_mg: float | None  # systemic only; None when a dose is missing or not in mg
    steroid_days: int  # days with a systemic corticosteroid dose (8.1 duration)
    high_dose_steroid_at: datetime | None  # first dose of the first 24 h meeting a high_dose row
    steroid_refractory: bool
    refractory_rule: str  # "local-definition-v1 <row id>: ..." (11.14)
    idm: bool
    idm_doses: int
    baseline_grade: int | None  # 8.4: max grade of the first-dose day and the day before
    improvement_at: datetime | None
    improvement_day: int | None
    hours_to_improvement: float | None
    remission_at: datetime | None  # 8.5: IDM-treated ICANS only
    remission_day: int | None
    hours_to_remission: float | None
    remission_definition: str  # "" when no IDM was given
    flags: tuple[str, ...]
    assessment: Assessment
    unverified_rows: tuple[str, ...] = ()  # "treatment-response:<row>" for the run report (decision 10)


@dataclass(frozen=True, slots=True)
class _Dose:
    drug: DrugAdmin
    label: str  # agent name, or "idm"
    systemic: bool


@dataclass(frozen=True, slots=True)
class _Finding:
    """One derived outcome (refractory, improvement, remission): met, not met, or undecided (None)."""

    met: bool | None
    text: str
    at: datetime | None = None
    day: int | None = None
    evidence: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    rows: tuple[str, ...] = ()  # table rows that decided it
    definition: str = ""  # the remission definition applied


def _hours(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() / 3600


class TreatmentAnalyzer:
    """Links treatments to CRS/ICANS episodes and derives exposure, refractory status and response."""

    def __init__(self, table: TreatmentTable | None = None, drugs: DrugTable | None = None,
                 icans: IcansSettings | None = None) -> None:
        self.t = table or load_treatment_table()
        if drugs is None or icans is None:
            tables = load_tables()
            drugs, icans = drugs or tables.drugs, icans or tables.icans.settings
        self.drugs = {r.agent: r for r in drugs.rows}
        self.capd_max_age = icans.capd_max_age_years
        self.agents = {r.agent: r for r in self.t.agents}
        self._check()

    def _check(self) -> None:
        """Start-up check (habit 4): agents are drugs.yaml rows, steroids have a dexamethasone factor."""
        t, name = self.t, "treatment-response.yaml"
        named = {*self.agents, *t.intrathecal.idm_agents, *(r.agent for r in (*t.high_dose, *t.dose_limits))}
        unknown = sorted(a for a in named if a not in self.drugs)
        if unknown:
            raise ConfigError(f"{name}: agents not in drugs.yaml: {unknown}")
        labels = {*self.agents, t.intrathecal.label}
        for r in t.refractory:
            if not set(r.agents) | set(r.after) <= labels:
                raise ConfigError(f"{name}: refractory row {r.id} names an unknown agent")
            if (r.kind == "persists") != (r.min_grade is not None and r.hours is not None) or \
                    (r.kind == "second-line") != bool(r.agents):
                raise ConfigError(f"{name}: refractory row {r.id}: persists needs min_grade and hours, "
                                  "second-line needs agents")
        for a in self.agents:
            if self.drugs[a].role == "corticosteroid" and self.drugs[a].dex_equivalent is None:
                raise ConfigError(f"{name}: corticosteroid {a} has no dex_equivalent in drugs.yaml")

    def analyze(self, course: Course, toxicity: Toxicity, days: Sequence[DayGrade],
                episodes: Sequence[Episode], others: Sequence[Episode] = ()) -> list[TreatmentResponse]:
        """One TreatmentResponse per episode, in episode order. `others`: the other toxicity's episodes (ICANS
        for CRS and vice versa), used only to flag a steroid/anakinra dose given while both were open."""
        linked = self._link(course, toxicity.value, episodes, others)
        by_day = {d.day: d for d in days}
        return [self._episode(course, e, by_day, *linked[e.number]) for e in episodes]

    # ---- T1 linking -----------------------------------------------------------------------------

    def _dose(self, d: DrugAdmin) -> _Dose | None:
        """The dose as a treatment: intrathecal dexamethasone/methotrexate is IDM, never systemic (8.1)."""
        it = self.t.intrathecal
        if d.route == it.route_code:
            label = it.label if d.agent in it.idm_agents else d.agent
            return _Dose(d, label, False) if label == it.label or d.agent in self.agents else None
        return _Dose(d, d.agent, True) if d.agent in self.agents else None

    def _treats(self, dose: _Dose) -> set[str]:
        if not dose.systemic:
            return {self.t.intrathecal.treats}
        treats = self.agents[dose.drug.agent].treats
        return {"crs", "icans"} if treats == "any" else {treats}

    def _reason_toxicities(self, course: Course, d: DrugAdmin) -> tuple[set[str], bool]:
        """Toxicities named by the dose's reasonReference targets, and whether any target was found."""
        found: set[str] = set()
        known = False
        for key in d.reasons:
            codings = course.patient.condition_codes.get(key)
            if codings is not None:
                known = True
                found |= {r.toxicity for r in self.t.reasons for c in codings if r.matches(c)}
        return found, known

    @staticmethod
    def _open(e: Episode, at: datetime) -> bool:
        return e.onset <= at and (e.abatement is None or at < e.abatement)

    def _reason_episode(self, episodes: Sequence[Episode], at: datetime) -> tuple[Episode | None, str]:
        """The episode of a reason-linked dose: open at the dose, else the nearest one within the window."""
        w = self.t.reason_window
        after, before = timedelta(hours=w.after_resolution_hours), timedelta(hours=w.before_onset_hours)
        for e in episodes:
            if self._open(e, at):
                return e, ""
        for e in reversed(episodes):
            if e.abatement is not None and e.abatement <= at <= e.abatement + after:
                return e, "reason-linked-after-resolution"
        for e in episodes:
            if at < e.onset <= at + before:
                return e, "reason-linked-before-onset"
        return None, ""

    def _link(self, course: Course, tox: str, episodes: Sequence[Episode],
              others: Sequence[Episode]) -> dict[int, tuple[list[_Dose], set[str]]]:
        linked: dict[int, tuple[list[_Dose], set[str]]] = {e.number: ([], set()) for e in episodes}
        for d in sorted(course.drugs, key=lambda d: d.start.at):
            dose = self._dose(d)
            if dose is None or d.intent == "prophylaxis":
                continue  # T1: prophylaxis treats no episode
            reason_tox, known = self._reason_toxicities(course, d)
            flags: set[str] = set()
            if reason_tox:
                e, flag = self._reason_episode(episodes, d.start.at) if tox in reason_tox else (None, "")
                flags = {flag, "shared-treatment" if len(reason_tox) > 1 else ""} - {""}
            elif known:
                continue  # T1: a reason naming another condition beats timing
            else:
                e = next((e for e in episodes if self._open(e, d.start.at)), None)
                if tox not in self._treats(dose):
                    e = None
                if d.reasons:
                    flags.add("reason-unresolved")
                if len(self._treats(dose)) > 1 and any(self._open(o, d.start.at) for o in others):
                    flags.add("shared-treatment")
            if e is not None:
                linked[e.number][0].append(dose)
                linked[e.number][1].update(flags)
        return linked

    # ---- T2 exposure ----------------------------------------------------------------------------

    def _systemic_steroid(self, x: _Dose) -> bool:
        return x.systemic and self.drugs[x.drug.agent].role == "corticosteroid"

    def _dex_equivalent(self, doses: list[_Dose]) -> tuple[float | None, list[str], list[str]]:
        """Dexamethasone-equivalent mg, flags, missing inputs; a dose not known in mg is never guessed."""
        total, flags, missing = 0.0, [], []
        unit = self.t.dose_unit
        for x in filter(self._systemic_steroid, doses):
            d = x.drug
            if d.statement:
                flags.append("steroid-statement-dose-count-unknown")
                missing.append(f"administered doses of {d.ref} (MedicationStatement)")
            elif d.dose is None:
                flags.append("steroid-dose-missing")
                missing.append(f"dose in {unit} of {d.ref}")
            elif d.dose_unit != unit:
                flags.append("steroid-dose-unit-not-mg")
                missing.append(f"dose in {unit} of {d.ref} (recorded in {d.dose_unit})")
            else:
                total += d.dose * (self.drugs[d.agent].dex_equivalent or 0.0)
        return (None if missing else total), flags, missing

    def _mg_24h(self, doses: list[_Dose], first: _Dose) -> float:
        """Systemic mg of the agent of `first` given in the 24 h from it (administrations in mg only)."""
        t0, t1 = first.drug.start.at, first.drug.start.at + timedelta(hours=24)
        return sum(x.drug.dose or 0.0 for x in doses
                   if x.systemic and not x.drug.statement and x.drug.agent == first.drug.agent
                   and x.drug.dose_unit == self.t.dose_unit and t0 <= x.drug.start.at < t1)

    def _high_dose(self, doses: list[_Dose]) -> tuple[datetime | None, HighDoseRow | None]:
        for x in doses:
            for row in self.t.high_dose:
                if x.systemic and x.drug.agent == row.agent and self._mg_24h(doses, x) >= row.min_mg_per_24h:
                    return x.drug.start.at, row
        return None, None

    def _limit_flags(self, course: Course, doses: list[_Dose]) -> list[str]:
        """Review hints on tocilizumab dosing (8.1), counting every dose of the course."""
        flags = []
        for row in self.t.dose_limits:
            mine = [x.drug.start.at for x in doses if x.drug.agent == row.agent and x.systemic]
            given = [d.start.at for d in course.drugs
                     if d.agent == row.agent and d.route != self.t.intrathecal.route_code]
            if not mine:
                continue
            if row.window_hours is None:
                over = sum(1 for t in given if t <= max(mine)) > row.max_doses
            else:
                span = timedelta(hours=row.window_hours)
                over = any(sum(1 for t in given if s - span < t <= s) > row.max_doses for s in mine)
            flags += [row.flag] if over else []
        return flags

    # ---- one episode ----------------------------------------------------------------------------

    def _episode(self, course: Course, e: Episode, by_day: dict[int, DayGrade], doses: list[_Dose],
                 link_flags: set[str]) -> TreatmentResponse:
        first = doses[0].drug.start.at if doses else None
        dex, flags, missing = self._dex_equivalent(doses)
        hd_at, hd_row = self._high_dose(doses)
        flags += sorted(link_flags) + self._limit_flags(course, doses)
        flags += [hd_row.flag] if hd_row is not None and hd_row.flag else []
        refractory = self._refractory(course, e, by_day, doses, hd_at, hd_row)
        improvement = self._improvement(course, e, by_day, first)
        remission = self._remission(course, e, by_day, doses)
        flags += ["refractory-undetermined"] if refractory.met is None else []
        flags += ["remission-undetermined"] if remission.definition and remission.met is None else []
        labels = tuple(dict.fromkeys(x.label for x in doses))
        a = self._assessment(course, e, doses, dex, (refractory, improvement, remission),
                             tuple(dict.fromkeys(flags)), missing)
        idm = [x.drug.start.at for x in doses if x.label == self.t.intrathecal.label]
        steroid_days = {course.day_of(x.drug.start) for x in doses if self._systemic_steroid(x)}
        return TreatmentResponse(
            episode_number=e.number, toxicity=e.toxicity, treatments=labels, treatment_refs=a.evidence,
            first_treatment_at=first, first_treatment_day=course.day_of(Moment(first)) if first else None,
            hours_onset_to_first_treatment=_hours(e.onset, first) if first else None,
            dexamethasone_equivalent_mg=dex, steroid_days=len(steroid_days), high_dose_steroid_at=hd_at,
            steroid_refractory=bool(refractory.met), refractory_rule=refractory.text,
            idm=bool(idm), idm_doses=len(idm),
            baseline_grade=self._baseline(by_day, first, course, self.t.improvement.baseline_days_before),
            improvement_at=improvement.at, improvement_day=improvement.day,
            hours_to_improvement=_hours(first, improvement.at) if first and improvement.at else None,
            remission_at=remission.at, remission_day=remission.day,
            hours_to_remission=_hours(idm[0], remission.at) if idm and remission.at else None,
            remission_definition=remission.definition, flags=a.flags, assessment=a,
            unverified_rows=self._unverified(labels, a.flags, refractory, improvement, remission, hd_row))

    def _assessment(self, course: Course, e: Episode, doses: list[_Dose], dex: float | None,
                    found: tuple[_Finding, _Finding, _Finding], flags: tuple[str, ...],
                    missing: list[str]) -> Assessment:
        """One Observation `treatment-response`: the numbers as components, the sentences as reasons."""
        refractory, _, remission = found
        comps = []
        reasons = [f"no {e.toxicity.value.upper()} treatment linked to this episode"]
        if doses:
            first = doses[0].drug.start.at
            given = ", ".join(dict.fromkeys(x.label for x in doses))
            reasons = [f"{given} given; first on day {course.day_of(Moment(first))}, "
                       f"{_hours(e.onset, first):.1f} h after onset"]
            comps.append(Component("time-to-first-treatment", "integer", round(_hours(e.onset, first))))
        if refractory.met is not None:
            comps.append(Component("steroid-refractory", "boolean", refractory.met))
        if dex is not None:
            comps.append(Component("dexamethasone-equivalent-mg", "integer", round(dex)))
            if any(self._systemic_steroid(x) for x in doses):
                reasons.append(f"systemic corticosteroids: {dex:g} mg dexamethasone equivalent")
        if remission.definition and remission.met is not None:
            comps.append(Component("icans-remission-idm", "boolean", remission.met))
        reasons += [f.text for f in found if f.text]
        return Assessment(
            toxicity=e.toxicity, code="treatment-response", state=State.GRADED, value=None, start=e.onset,
            end=e.abatement, components=tuple(comps),
            evidence=tuple(dict.fromkeys(x.drug.ref for x in doses)),
            supporting=tuple(dict.fromkeys(r for f in found for r in f.evidence)),
            missing=tuple(dict.fromkeys([*missing, *(m for f in found for m in f.missing)])),
            reasons=tuple(reasons), flags=flags, table=f"{self.t.table} v{self.t.version}")

    def _unverified(self, labels: tuple[str, ...], flags: tuple[str, ...],
                    *found: _Finding | HighDoseRow | None) -> tuple[str, ...]:
        """Unverified table rows this result used, for the run report (decision 10)."""
        t = self.t
        verified = {r.agent: r.verified for r in t.agents}
        verified |= {r.id: r.verified for r in (*t.high_dose, *t.refractory, *t.remission.rows)}
        verified |= {"improvement": t.improvement.verified, "reason_window": t.reason_window.verified}
        ids = [x for x in labels if x in verified]
        ids += ["reason_window"] if any(f.startswith("reason-linked-") for f in flags) else []
        for f in found:
            ids += [f.id] if isinstance(f, HighDoseRow) else list(f.rows) if isinstance(f, _Finding) else []
        return tuple(f"{t.table}:{i}" for i in dict.fromkeys(ids) if not verified.get(i, True))

    # ---- T3 refractory (8.3, local-definition-v1) ---------------------------------------------------

    def _refractory(self, course: Course, e: Episode, by_day: dict[int, DayGrade], doses: list[_Dose],
                    hd_at: datetime | None, hd_row: HighDoseRow | None) -> _Finding:
        label = self.t.definition_version
        rows = [r for r in self.t.refractory if r.toxicity == e.toxicity.value]
        results = []
        for row in rows:
            f = (self._persists(course, e, by_day, doses, row, hd_at, hd_row) if row.kind == "persists"
                 else self._second_line(course, doses, row))
            if f.met:
                return _Finding(True, f"{label} {row.id}: {row.text} ({f.text})", evidence=f.evidence,
                                rows=f.rows)
            results.append(f)
        notes = "; ".join(f.text for f in results)
        ids = tuple(dict.fromkeys([*(r.id for r in rows), *(i for f in results for i in f.rows)]))
        if any(f.met is None for f in results):
            return _Finding(None, f"{label}: refractory status undetermined ({notes})",
                            missing=tuple(m for f in results for m in f.missing), rows=ids)
        return _Finding(False, f"{label}: not refractory ({notes})", rows=ids)

    def _persists(self, course: Course, e: Episode, by_day: dict[int, DayGrade], doses: list[_Dose],
                  row: RefractoryRow, hd_at: datetime | None, hd_row: HighDoseRow | None) -> _Finding:
        hours, min_grade, name = row.hours or 0.0, row.min_grade or 0, e.toxicity.value.upper()
        if hd_at is None or hd_row is None:
            unknown = [x.drug.ref for x in doses if self._systemic_steroid(x) and (
                x.drug.statement or x.drug.dose is None or x.drug.dose_unit != self.t.dose_unit)]
            if unknown:
                return _Finding(None, f"{row.id}: high-dose start unknown (a steroid dose not in mg)",
                                missing=tuple(f"dose in mg of {r}" for r in unknown))
            return _Finding(False, f"{row.id}: no high-dose steroid")
        check = course.day_of(Moment(hd_at + timedelta(hours=hours)))
        after = f"{hours:g} h after {hd_row.text} started on day {course.day_of(Moment(hd_at))}"
        if e.resolved_day is not None and e.resolved_day <= check:
            return _Finding(False, f"{row.id}: resolved on day {e.resolved_day}, by {after}",
                            rows=(hd_row.id,))
        # Decision 1: the daily grade of the day 72 h later; when that day has no grade, a later day of the
        # episode still at >= 2 proves persistence (a lower one proves nothing about the 72-h day).
        later = [by_day[d] for d in sorted(by_day) if d >= check and by_day[d].grade is not None
                 and (e.resolved_day is None or d < e.resolved_day)]
        dg = later[0] if later else None
        if dg is not None and dg.grade is not None and dg.grade >= min_grade:
            return _Finding(True, f"grade {dg.grade} on day {dg.day}, {after}", evidence=dg.evidence,
                            rows=(row.id, hd_row.id))
        if dg is not None and dg.day == check and dg.state == State.GRADED:
            return _Finding(False, f"{row.id}: grade {dg.grade} on day {check}, {after}", rows=(hd_row.id,))
        return _Finding(None, f"{row.id}: no {name} grade on day {check}",
                        missing=(f"{name} grade on day {check} ({after})",))

    def _second_line(self, course: Course, doses: list[_Dose], row: RefractoryRow) -> _Finding:
        steroids = [x for x in doses
                    if self._systemic_steroid(x) and (not row.after or x.drug.agent in row.after)]
        if not steroids:
            return _Finding(False, f"{row.id}: no {'/'.join(row.after) or 'steroid'} given")
        s0 = steroids[0].drug
        for x in doses:
            if x.label not in row.agents or x.drug.start.at <= s0.start.at:
                continue
            if row.min_mg_per_24h is None or (x.systemic and self._mg_24h(doses, x) >= row.min_mg_per_24h):
                return _Finding(True, f"{x.label} on day {course.day_of(x.drug.start)} after {s0.agent} on "
                                      f"day {course.day_of(s0.start)}", evidence=(x.drug.ref, s0.ref),
                                rows=(row.id,))
        return _Finding(False, f"{row.id}: none after {s0.agent}")

    # ---- T4 response (8.4, 8.5) ---------------------------------------------------------------------

    @staticmethod
    def _baseline(by_day: dict[int, DayGrade], at: datetime | None, course: Course,
                  days_before: int) -> int | None:
        """Maximum grade of the day of `at` and the days before: the 24 h before a first dose (8.4, 8.5)."""
        if at is None:
            return None
        d0 = course.day_of(Moment(at))
        grades = [by_day[d].grade for d in range(d0 - days_before, d0 + 1) if d in by_day]
        return max((g for g in grades if g is not None), default=None)

    @staticmethod
    def _first_day_at_most(e: Episode, by_day: dict[int, DayGrade], after_day: int,
                           grade: int) -> DayGrade | None:
        """The first day after `after_day`, up to the episode's resolution, graded (not a bound) <= grade."""
        return next((by_day[d] for d in sorted(by_day)
                     if after_day < d and (e.resolved_day is None or d <= e.resolved_day)
                     and by_day[d].state == State.GRADED and (by_day[d].grade or 0) <= grade), None)

    def _improvement(self, course: Course, e: Episode, by_day: dict[int, DayGrade],
                     first: datetime | None) -> _Finding:
        rule = self.t.improvement
        base = self._baseline(by_day, first, course, rule.baseline_days_before)
        if first is None or base is None or base < rule.drop:
            return _Finding(None, "")
        dg = self._first_day_at_most(e, by_day, course.day_of(Moment(first)), base - rule.drop)
        if dg is None:
            return _Finding(False, f"no improvement from baseline grade {base} in the data",
                            rows=("improvement",))
        return _Finding(True, f"improved from grade {base} to {dg.grade} on day {dg.day}", dg.window[0],
                        dg.day, dg.evidence, rows=("improvement",))

    def _remission(self, course: Course, e: Episode, by_day: dict[int, DayGrade],
                   doses: list[_Dose]) -> _Finding:
        idm = [x.drug for x in doses if x.label == self.t.intrathecal.label]
        if e.toxicity != Toxicity.ICANS or not idm:
            return _Finding(None, "")
        t0, d0 = idm[0].start.at, course.day_of(idm[0].start)
        base = self._baseline(by_day, t0, course, self.t.remission.baseline_days_before)
        if base is None:
            return _Finding(None, f"IDM remission: no ICANS grade on day {d0 - 1} or {d0}",
                            definition=f"{IDM_SOURCE}: baseline ICANS grade unknown",
                            missing=(f"ICANS grade on day {d0 - 1} or {d0} (before the first intrathecal "
                                     "dose)",))
        rows = [r for r in self.t.remission.rows if r.baseline_min <= base <= r.baseline_max]
        if not rows:
            return _Finding(None, f"IDM remission: no definition for baseline ICANS grade {base}",
                            definition=f"{IDM_SOURCE}: none for baseline grade {base}")
        definition = f"{IDM_SOURCE}, baseline ICANS grade {base} on days {d0 - 1}-{d0}: " + \
            " or ".join(f"{r.id} ({r.text})" for r in rows)
        hits = [h for r in rows if (h := self._remission_hit(course, e, by_day, r, t0, d0)) is not None]
        if not hits:
            return _Finding(False, "no IDM remission in the data", rows=tuple(r.id for r in rows),
                            definition=definition)
        at, day, ev, r = min(hits, key=lambda h: h[0])
        return _Finding(True, f"IDM remission on day {day} ({r.id}), {_hours(t0, at):.1f} h after the first "
                              "intrathecal dose", at, day, ev, rows=(r.id,), definition=definition)

    def _remission_hit(self, course: Course, e: Episode, by_day: dict[int, DayGrade], row: RemissionRow,
                       t0: datetime, d0: int) -> tuple[datetime, int, tuple[str, ...], RemissionRow] | None:
        """When the target of one remission row was first met after the first intrathecal dose."""
        if row.target == "grade-at-most":
            dg = self._first_day_at_most(e, by_day, d0, row.value)
            return (dg.window[0], dg.day, dg.evidence, row) if dg else None
        for day, r in course.readings:
            if r.concept != row.target or r.when.at <= t0 or type(r.value) is not int or r.value != row.value:
                continue
            age = course.age_on(day)
            if row.target == "capd-score" and (age is None or age > self.capd_max_age):
                continue  # CAPD only where the ICE is not the instrument (decision 6)
            return r.when.at, day, (r.ref,), row
        return None
