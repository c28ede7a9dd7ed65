"""ASTCT 2019 ICANS grade per day (Lee et al., Biol Blood Marrow Transplant 2019;25:625-638: ICE score
table, adult ICANS grading table and the pediatric CAPD-based table).

Combining rules (thresholds are data in mappings/astct-icans-2019.yaml):
- N1: the grade is the most severe of the five domains (ICE or CAPD, consciousness, seizure, motor,
  raised ICP / cerebral edema).
- N2: ICE 0 in an awake patient is grade 3; unable to perform the ICE (or CAPD) because unarousable is 4.
- Decision 6: CAPD below 12 years on the assessment day, ICE from 12; whichever instrument was given is
  used. A day with findings but no ICE/CAPD proves only a minimum ("at least N"), unless it is 4.
- Decision 7: deep focal motor weakness counts (grade 4) only with another ICANS finding within 72 h;
  otherwise it is not ICANS (it is a non-ICANS neurotoxicity event) and is flagged.
- Decision 1: values count only on their own day; nothing is carried across days.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from ..model import Quantity, Reading
from ..tables import Band, IcansTable
from ..timeline import Course
from .result import Component, DayGrade, State, Toxicity

ICE_ITEMS = ("ice-orientation", "ice-naming", "ice-commands", "ice-writing", "ice-attention")
ICANS_CONCEPTS = frozenset({"ice-score", "capd-score", "consciousness", "seizure", "motor", "cerebral-edema",
                            "cannot-perform-ice", *ICE_ITEMS})
CODED = {"consciousness": "consciousness-level", "seizure": "seizure-type", "motor": "motor-finding",
         "cerebral-edema": "cerebral-edema-finding"}


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
        self.context = timedelta(hours=table.settings.motor_context_hours)

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

    def grade(self, course: Course) -> list[DayGrade]:
        readings = [(day, r) for day, r in course.readings if r.concept in ICANS_CONCEPTS and day >= 0]
        readings += [(day, s) for day, s in self._item_sums(course, readings)]
        # Times of abnormal non-motor ICANS findings: the context that lets motor weakness count (decision 7).
        context = [r.when.at for _, r in readings
                   if r.concept != "motor" and (self.reading_grade(r) or 0) >= 1]
        by_day: dict[int, list[Reading]] = defaultdict(list)
        excluded: dict[int, list[Reading]] = defaultdict(list)
        for day, r in readings:
            if r.concept == "motor" and (self.reading_grade(r) or 0) >= 1 and \
                    not any(abs(t - r.when.at) <= self.context for t in context):
                excluded[day].append(r)
                continue
            by_day[day].append(r)
        return [self._grade_day(course, day, by_day[day], excluded.get(day, [])) for day in sorted(by_day)]

    @staticmethod
    def _item_sums(course: Course, readings: list[tuple[int, Reading]]) -> list[tuple[int, Reading]]:
        """ICE items recorded without a total are summed when all five are present (input-contract.md)."""
        totals_at = {r.when.at for _, r in readings if r.concept == "ice-score"}
        groups: dict[datetime, dict[str, Reading]] = defaultdict(dict)
        for _, r in readings:
            if r.concept in ICE_ITEMS:
                groups[r.when.at][r.concept] = r
        out = []
        for at, items in groups.items():
            if at in totals_at or len(items) < len(ICE_ITEMS):
                continue
            total = sum(_score(items[k]) for k in ICE_ITEMS)
            first = items[ICE_ITEMS[0]]
            out.append((course.day_of(first.when), Reading("ice-score", first.when, total, first.ref, first.group)))
        return out

    def _grade_day(self, course: Course, day: int, readings: list[Reading], excluded: list[Reading]) -> DayGrade:
        comps: list[Component] = []
        evidence: list[str] = []
        reasons: list[str] = []
        flags = ["attribution-unconfirmed"]
        if excluded:
            flags.append("motor-weakness-outside-icans")
            reasons.append("deep focal motor weakness without another ICANS finding within "
                           f"{self.t.settings.motor_context_hours} h: not ICANS (decision 7)")
        graded = [(r, g) for r in readings if (g := self.reading_grade(r)) is not None]
        top = max((g for _, g in graded), default=0)
        onset = min((r.when.at for r, g in graded if g >= 1), default=None)
        # The worst reading of each domain is the component and the evidence.
        for concept in ("ice-score", "capd-score", "cannot-perform-ice", "consciousness", "seizure", "motor",
                        "cerebral-edema"):
            rs = [(r, g) for r, g in graded if r.concept == concept]
            if not rs:
                continue
            if concept in ("ice-score", "capd-score"):
                key = (lambda rg: (rg[1], -_score(rg[0]))) if concept == "ice-score" else \
                      (lambda rg: (rg[1], _score(rg[0])))
                worst, g = max(rs, key=key)
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
        instrument = any(r.concept in ("ice-score", "capd-score", "cannot-perform-ice") for r, _ in graded)
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
