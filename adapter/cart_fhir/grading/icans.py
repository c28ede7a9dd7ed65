"""ASTCT 2019 ICANS grade per day (Lee et al., Biol Blood Marrow Transplant 2019;25:625-638: ICE score
table, adult ICANS grading table and the pediatric CAPD-based table).

Combining rules (thresholds are data in mappings/astct-icans-2019.yaml):
- N1: the grade is the most severe of the five domains (ICE or CAPD, consciousness, seizure, motor,
  raised ICP / cerebral edema).
- N2: ICE 0 in an awake patient is grade 3; unable to perform the ICE (or CAPD) because unarousable is 4.
- Decision 6: CAPD below 12 years on the assessment day, ICE from 12; whichever instrument was given is
  used. A day with findings but no ICE/CAPD proves only a minimum ("at least N"), unless it is 4.
- Decision 7 (revised): new deep focal motor weakness is grade 4 with or without encephalopathy, unless a
  clinician attributes it to another cause: a clinician-diagnosed myelitis, GBS or cord compression near it
  (that Condition is the non-ICANS event) or a clinician attribution on the finding (grading/clinician.py).
- Decision 7 (revised), Diorio et al. Blood 2024;144:1387: every episode carries its phenotype
  (encephalopathic / isolated-motor / mixed) and its inflammatory context at onset (inflammatory /
  non-inflammatory / unknown); an isolated-motor, non-inflammatory episode is flagged for neurological review.
- Decision 1: values count only on their own day; nothing is carried across days.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from operator import attrgetter

from ..model import ConditionFact, Quantity, Reading
from ..tables import Band, IcansTable
from ..timeline import Course
from .episodes import episodes
from .result import Component, DayGrade, Episode, State, Toxicity

MOTOR_OUTSIDE_FLAG = "motor-weakness-outside-icans"  # a motor finding of that day was attributed elsewhere
REVIEW_FLAG = "neurological-review"  # isolated-motor, non-inflammatory episode (decision 7, revised)
NEURO_TABLE = "neurotoxicity-other"
ENCEPHALOPATHIC_DOMAINS = frozenset({"ice-score", "capd-score", "consciousness", "seizure", "cerebral-edema"})

ICE_ITEMS = ("ice-orientation", "ice-naming", "ice-commands", "ice-writing", "ice-attention")
ICANS_CONCEPTS = frozenset({"ice-score", "capd-score", "consciousness", "seizure", "motor", "cerebral-edema",
                            "cannot-perform-ice", *ICE_ITEMS})
CODED = {"consciousness": "consciousness-level", "seizure": "seizure-type", "motor": "motor-finding",
         "cerebral-edema": "cerebral-edema-finding"}
INSTRUMENTS = ("ice-score", "capd-score", "cannot-perform-ice")  # a day with one of these is graded, not "at least"
_WHEN_AT = attrgetter("when.at")
# The order a day's components and evidence follow, one per domain.
DOMAIN_ORDER = ("ice-score", "capd-score", "cannot-perform-ice", "consciousness", "seizure", "motor", "cerebral-edema")


def _score(r: Reading) -> int:
    """An ICE or CAPD score or ICE item: kind integer in mappings/concepts.yaml, so ingest stores an int."""
    if isinstance(r.value, Quantity):
        raise TypeError(f"{r.concept} ({r.ref}) is a quantity, not an integer score")
    return int(r.value)


def _band(bands: tuple[Band, ...], value: int) -> int:
    for b in bands:
        if b.min <= value <= b.max:
            return b.grade
    raise ValueError(f"no band for {value}")  # tables are checked to cover every value at start-up


class IcansGrader:
    def __init__(self, table: IcansTable) -> None:
        self.t = table
        self.domain_grade = {domain: {r.code: r.grade for r in rows} for domain, rows in table.domains.items()}
        self.alternative = timedelta(days=table.settings.motor_alternative_days)

    def reading_grade(self, r: Reading) -> int | None:
        """The grade one reading gives on its own (None for ICE items, which count only as a sum)."""
        if r.concept == "ice-score":
            return _band(self.t.ice_bands, _score(r))
        if r.concept == "capd-score":
            return _band(self.t.capd_bands, _score(r))
        if r.concept == "cannot-perform-ice":
            return self.t.cannot_perform.grade if r.value is True else None
        if r.concept in self.domain_grade:
            return self.domain_grade[r.concept][str(r.value)]
        return None

    def grade(self, course: Course, crs_episodes: Sequence[Episode] = ()) -> list[DayGrade]:
        # From the course's concept index (was: a scan of every reading of the course). Concept by concept,
        # each in time order: a day's grade reads each concept's readings apart, so the order between
        # concepts does not matter.
        readings = [pair for concept, pairs in course.by_concept().items() if concept in ICANS_CONCEPTS
                    for pair in pairs if pair[0] >= 0]
        readings += [(day, s) for day, s in self._item_sums(course, readings)]
        by_day: dict[int, list[Reading]] = defaultdict(list)
        excluded: dict[int, list[tuple[Reading, ConditionFact]]] = defaultdict(list)
        for day, r in readings:
            cause = self._motor_cause(course, r) if r.concept == "motor" else None
            if cause is not None:
                excluded[day].append((r, cause))
                continue
            by_day[day].append(r)
        days = [self._grade_day(course, day, by_day[day], excluded.get(day, [])) for day in sorted(by_day)]
        return self._label_episodes(course, days, crs_episodes)

    def _motor_cause(self, course: Course, r: Reading) -> ConditionFact | None:
        """A clinician-diagnosed myelitis, GBS or cord compression near a deep focal motor finding (decision 7,
        revised): the finding is attributed to it and is not ICANS."""
        if (self.reading_grade(r) or 0) < 1:
            return None
        s = self.t.settings
        for _, f in course.conditions:
            if f.table != NEURO_TABLE or f.attr("category") not in s.motor_alternative_categories:
                continue
            if abs(f.onset.at - r.when.at) <= self.alternative and \
                    (f.abatement is None or f.abatement.at >= r.when.at):
                return f
        return None

    # ---- episode labels: phenotype and inflammatory context (decision 7, revised) --------------

    def _label_episodes(self, course: Course, days: list[DayGrade], crs: Sequence[Episode]) -> list[DayGrade]:
        labelled: dict[int, DayGrade] = {}
        for ep in episodes(Toxicity.ICANS, days):
            phenotype = self._phenotype(ep)
            context, why, refs = self._context(course, ep.onset, crs)
            flags: tuple[str, ...] = ()
            reasons = [(f"episode phenotype {phenotype}; inflammatory context at onset {context} ({why}) "
                       "(grading.md decision 7)")]
            if phenotype == "isolated-motor" and context == "non-inflammatory":
                flags = (REVIEW_FLAG,)
                reasons.append("isolated deep focal motor weakness without inflammation at onset: neurological "
                               "review advised (imaging of the spine, CSF) to exclude another cause "
                               "(grading.md decision 7; Diorio et al., Blood 2024;144:1387)")
            comps = (Component("phenotype", "icans-phenotype", phenotype),
                     Component("inflammatory-context", "inflammatory-context", context))
            for d in ep.days:
                labelled[d.day] = replace(d, components=d.components + comps,
                                          evidence=d.evidence + tuple(x for x in refs if x not in d.evidence),
                                          reasons=d.reasons + tuple(reasons),
                                          flags=tuple(dict.fromkeys(d.flags + flags)))
        return [labelled.get(d.day, d) for d in days]

    @staticmethod
    def _phenotype(ep: Episode) -> str:
        domains = {c.code for d in ep.days for c in d.components if (c.grade or 0) >= 1}
        motor, other = "motor" in domains, bool(domains & ENCEPHALOPATHIC_DOMAINS)
        if motor and other:
            return "mixed"
        return "isolated-motor" if motor else "encephalopathic"

    def _context(self, course: Course, onset: datetime, crs: Sequence[Episode]) -> tuple[str, str, tuple[str, ...]]:
        """(label, why, evidence) of the inflammatory context from `before_hours` before to `after_hours` after
        the episode onset (grading.md decision 7, revised; rows in astct-icans-2019.yaml)."""
        rule = self.t.inflammatory_context
        start, end = onset - timedelta(hours=rule.before_hours), onset + timedelta(hours=rule.after_hours)

        def window(concept: str) -> list[Reading]:
            pairs = [*course.pre_of(concept), *course.of(concept)]
            return [r for _, r in pairs if start <= r.when.at <= end]

        signs: list[str] = []
        refs: list[str] = []
        measured: set[str] = set()
        for row in rule.rows:
            if row.kind == "open-crs":
                open_eps = [ep for ep in crs if ep.onset <= end and (ep.abatement is None or ep.abatement > start)]
                if open_eps:
                    signs.append(f"CRS episode {open_eps[0].number} open (row {row.id})")
                continue
            assert row.concept is not None
            for r in window(row.concept):
                q = r.value
                if not isinstance(q, Quantity):
                    continue
                if row.kind == "fever":
                    measured.add(row.concept)
                    hit = q.at_least(row.threshold or 0.0)
                else:
                    if r.high is None:
                        continue  # no reference range: cannot show "above its range"
                    measured.add(row.concept)
                    hit = q.above(r.high)
                if hit:
                    signs.append(f"{row.concept} {q.value:g} {r.ref} (row {row.id})")
                    refs.append(r.ref)
                    break
        if signs:
            return "inflammatory", "; ".join(signs), tuple(refs)
        lacking = [c for c in rule.required if c not in measured]
        if lacking:
            return "unknown", "not measured with a reference range in the window: " + ", ".join(lacking), ()
        return "non-inflammatory", "no fever, no open CRS, CRP and ferritin within range", ()

    @staticmethod
    def _item_sums(course: Course, readings: list[tuple[int, Reading]]) -> list[tuple[int, Reading]]:
        """ICE items recorded without a total are summed when all five are present (input-contract.md)."""
        totals_at = {r.when.at for _, r in readings if r.concept == "ice-score"}
        groups: dict[datetime, dict[str, Reading]] = defaultdict(dict)
        # In time order (readings come concept by concept), so that the sums come in the order of their time.
        for r in sorted((r for _, r in readings if r.concept in ICE_ITEMS), key=_WHEN_AT):
            groups[r.when.at][r.concept] = r
        out = []
        for at, items in groups.items():
            if at in totals_at or len(items) < len(ICE_ITEMS):
                continue
            total = sum(_score(items[k]) for k in ICE_ITEMS)
            first = items[ICE_ITEMS[0]]
            out.append((course.day_of(first.when), Reading("ice-score", first.when, total, first.ref, first.group)))
        return out

    def _grade_day(self, course: Course, day: int, readings: list[Reading],
                   excluded: list[tuple[Reading, ConditionFact]]) -> DayGrade:
        comps: list[Component] = []
        evidence: list[str] = []
        reasons: list[str] = []
        flags = ["attribution-unconfirmed"]
        for r, cause in excluded:
            flags.append(MOTOR_OUTSIDE_FLAG)
            evidence.append(cause.ref)
            reasons.append(f"deep focal motor weakness {r.ref} left out: attributed to the clinician's diagnosis "
                           f"{cause.display} ({cause.ref}), a non-ICANS event (grading.md decision 7)")
        top, onset = 0, None
        by_concept: dict[str, list[tuple[Reading, int]]] = {}
        for r in readings:  # one pass: the top grade, its onset and the graded readings by concept
            g = self.reading_grade(r)
            if g is None:
                continue
            if g > top:
                top = g
            if g >= 1 and (onset is None or r.when.at < onset):
                onset = r.when.at
            found = by_concept.get(r.concept)
            if found is None:
                by_concept[r.concept] = [(r, g)]
            else:
                found.append((r, g))
        # The worst reading of each domain is the component and the evidence.
        for concept in DOMAIN_ORDER:
            rs = by_concept.get(concept)
            if not rs:
                continue
            if concept in ("ice-score", "capd-score"):
                key = (lambda rg: (rg[1], -_score(rg[0]))) if concept == "ice-score" else \
                      (lambda rg: (rg[1], _score(rg[0])))
                worst, g = max(rs, key=key) if len(rs) > 1 else rs[0]  # one score a day, usually
                comps.append(Component(concept, "integer", _score(worst), g))
            elif concept == "cannot-perform-ice":
                worst, g = rs[0]
                comps.append(Component("consciousness", "consciousness-level", "unarousable", g))
            else:
                worst, g = max(rs, key=lambda rg: rg[1])
                comps.append(Component(concept, CODED[concept], str(worst.value), g))
            evidence.append(worst.ref)
            if g >= 1:
                reasons.append(f"{concept.replace('-', ' ')} {worst.value} (grade {g})")
        instrument = not by_concept.keys().isdisjoint(INSTRUMENTS)
        age = course.age_on(day)
        expected = "ice-score"
        if age is not None and age <= self.t.settings.capd_max_age_years:
            expected = "capd-score"
        if age is None:
            flags.append("age-unknown")
        missing: tuple[str, ...] = ()
        if instrument or top == 4:
            state, grade = State.GRADED, top
        elif top >= 1:
            state, grade = State.AT_LEAST, top
            missing = (f"{expected} (no {'CAPD' if expected == 'capd-score' else 'ICE'} that day)",)
        else:
            state, grade = State.NOT_ASSESSABLE, None
            missing = (f"{expected} (no {'CAPD' if expected == 'capd-score' else 'ICE'} that day)",)
        if state == State.GRADED and grade == 0:
            reasons.append("ICE 10 / CAPD 0 and no other ICANS finding" if instrument else "no ICANS finding")
        return DayGrade(Toxicity.ICANS, day, state, grade, onset if grade else None, course.window(day),
                        tuple(comps), tuple(dict.fromkeys(evidence)), (), missing, tuple(reasons),
                        tuple(dict.fromkeys(flags)))
