"""Prolonged cytopenia beyond day 100, an IAGO long-term effect (Rejeski, Hill, Dahiya, Jain, Nat Med 2025;
grading.md 6.4): ANC, platelets and haemoglobin below the CTCAE v5.0 grade 3 thresholds after the late ICAHT
window (EHA/EBMT 2023 late ICAHT ends at day 100), with the lineages, the worst grade and the duration.

Combining rules (thresholds are rows of mappings/prolonged-cytopenia.yaml):
- A value below a row's threshold on a day after `after_day` is cytopenia of that lineage at the row's grade;
  the worst row met sets the grade (CTCAE: the grade is the worst lineage's).
- The effect opens on the first such day and resolves on the first later day with a measured value of every
  lineage that was low and none below its grade-3 threshold; a later low value opens a new effect.
- A bound that straddles a threshold decides nothing for that row (grading.md 0.4).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

from ..model import Quantity, Reading
from ..tables import Row, Table
from ..timeline import Course
from .result import Assessment, Component, Event, Findings, State, Toxicity, not_measured

PROLONGED_CYTOPENIA = Toxicity("prolonged-cytopenia")
CODE = "prolonged-cytopenia-ctcae"
Lineage = Literal["neutrophils", "platelets", "hemoglobin"]
LINEAGES: tuple[Lineage, ...] = ("neutrophils", "platelets", "hemoglobin")


class WindowSettings(Row, frozen=True, kw_only=True):
    after_day: int
    verified: bool
    source: str


class CytopeniaRow(Row, frozen=True, kw_only=True):
    lineage: Lineage
    concept: str
    below: float
    grade: int
    verified: bool
    source: str


class CytopeniaTable(Table, frozen=True, kw_only=True):
    settings: WindowSettings
    rows: tuple[CytopeniaRow, ...]

    def __post_init__(self) -> None:
        for lineage in LINEAGES:
            if not any(r.lineage == lineage and r.grade == 3 for r in self.rows):
                raise ValueError(f"no grade-3 row for {lineage}")


class LateCytopeniaGrader:
    def __init__(self, table: CytopeniaTable) -> None:
        self.t = table
        self.label = f"{table.table} v{table.version}"
        self.concepts = tuple(dict.fromkeys(r.concept for r in table.rows))

    def _hits(self, r: Reading) -> list[CytopeniaRow]:
        if not isinstance(r.value, Quantity):
            return []
        return [row for row in self.t.rows if row.concept == r.concept and r.value.below(row.below) is True]

    def _normal(self, r: Reading) -> bool:
        """At or above the lineage's grade-3 threshold (False when a bound straddles it)."""
        if not isinstance(r.value, Quantity):
            return False
        g3 = next(row for row in self.t.rows if row.concept == r.concept and row.grade == 3)
        return r.value.at_least(g3.below) is True

    def grade(self, course: Course) -> Findings:
        by_day: dict[int, list[Reading]] = defaultdict(list)
        for day, r in course.of_any(self.concepts):
            if day > self.t.settings.after_day:
                by_day[day].append(r)
        events: list[Event] = []
        current: list[tuple[int, Reading, CytopeniaRow]] = []
        lineages: set[str] = set()
        for day in sorted(by_day):
            hits = [(day, r, row) for r in by_day[day] for row in self._hits(r)]
            if hits:
                current.extend(hits)
                lineages |= {row.lineage for _, _, row in hits}
                continue
            if current:
                seen = {row.lineage for r in by_day[day] for row in self.t.rows if row.concept == r.concept}
                if lineages <= seen and all(self._normal(r) for r in by_day[day]
                                            if any(row.concept == r.concept for row in self.t.rows)):
                    events.append(self._event(course, len(events) + 1, current, (day, by_day[day])))
                    current, lineages = [], set()
        if current:
            events.append(self._event(course, len(events) + 1, current, None))
        if not by_day:
            after = self.t.settings.after_day
            return Findings((not_measured(course.infusion.when.at, PROLONGED_CYTOPENIA, CODE, self.label,
                                          f"ANC, platelets or hemoglobin after day {after}"),))
        return Findings(tuple(e.assessment for e in events if e.assessment is not None), tuple(events))

    def _event(self, course: Course, n: int, hits: list[tuple[int, Reading, CytopeniaRow]],
               end: tuple[int, list[Reading]] | None) -> Event:
        first_day, first, _ = hits[0]
        last_day = hits[-1][0]
        top = max(row.grade for _, _, row in hits)
        lineages = [x for x in LINEAGES if any(row.lineage == x for _, _, row in hits)]
        end_day = end[0] if end else None
        end_at = min(r.when.at for r in end[1]) if end else None
        duration = (end_day if end_day is not None else last_day) - first_day
        reasons = []
        comps = []
        for lineage in lineages:
            mine = [(d, r, row) for d, r, row in hits if row.lineage == lineage]
            worst = max(mine, key=lambda h: (h[2].grade, -h[1].value.value if isinstance(h[1].value, Quantity)
                                             else 0))
            d, r, row = worst
            v = r.value.value if isinstance(r.value, Quantity) else 0.0
            reasons.append(f"{lineage} {v:g} on day {d} after day {self.t.settings.after_day}: CTCAE grade "
                           f"{row.grade} (row {row.id}: {row.source})")
            comps.append(Component(f"{lineage}-nadir", "decimal", round(v, 1), row.grade))
        reasons.append(f"resolved on day {end_day}: every low lineage back at or above its grade-3 threshold"
                       if end else f"not resolved by the last count (day {last_day})")
        comps.append(Component("duration-days", "integer", duration))
        refs = tuple(dict.fromkeys(r.ref for _, r, _ in hits))
        a = Assessment(PROLONGED_CYTOPENIA, CODE, State.GRADED, top, first.when.at, end_at, components=tuple(comps),
                       evidence=refs, reasons=tuple(reasons), flags=("attribution-unconfirmed",), table=self.label)
        return Event(PROLONGED_CYTOPENIA, f"after-day-{self.t.settings.after_day}-{n}", State.GRADED, top,
                     first.when.at, first_day, abatement=end_at, resolved_day=end_day, assessment=a,
                     details=(("lineages", lineages), ("duration_days", duration)), evidence=refs)
