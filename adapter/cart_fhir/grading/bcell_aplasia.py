"""B-cell aplasia after CAR-T, an IAGO long-term effect (Rejeski, Hill, Dahiya, Jain, Nat Med 2025;
grading.md 6.4): CD19+ B-cell counts below the aplasia threshold, its onset and its duration, a marker of
CAR-T persistence (Wat and Barmettler, J Allergy Clin Immunol Pract 2022;10:460).

Combining rules (the threshold is a row of mappings/b-cell-aplasia.yaml, verified: false until a primary
source is read):
- Aplasia opens on the first count below the threshold after `from_day` and ends on the first later count at
  or above it (B-cell recovery); a later low count opens a new period. A bound that straddles the threshold
  decides nothing. Duration = recovery day (or the last low count) minus onset day.
- No grade applies: the Observation carries the nadir and the duration.
"""

from __future__ import annotations

from ..model import Quantity, Reading
from ..tables import Row, Table
from ..timeline import Course
from .periods import low_periods
from .result import Assessment, Component, Event, Findings, State, Toxicity, not_measured

B_CELL_APLASIA = Toxicity("b-cell-aplasia")
CODE = "b-cell-aplasia-iago"


class AplasiaThreshold(Row, frozen=True, kw_only=True):
    below_per_ul: float
    verified: bool
    source: str


class AplasiaSettings(Row, frozen=True, kw_only=True):
    from_day: int
    verified: bool
    source: str


class AplasiaTable(Table, frozen=True, kw_only=True):
    threshold: AplasiaThreshold
    settings: AplasiaSettings


class BCellAplasiaGrader:
    def __init__(self, table: AplasiaTable) -> None:
        self.t = table
        self.label = f"{table.table} v{table.version}"

    def grade(self, course: Course) -> Findings:
        limit = self.t.threshold.below_per_ul
        periods = low_periods(course.of("cd19-b-cells"), self.t.settings.from_day, lambda q: q.below(limit))
        first = self.t.settings.from_day
        if not any(day >= first for day, _ in course.of("cd19-b-cells")):
            return Findings((not_measured(course.infusion.when.at, B_CELL_APLASIA, CODE, self.label,
                                          f"CD19+ B-cell count (LOINC 8116-6) from day {first}"),))
        events = [self._event(n, lows, end) for n, (lows, end) in enumerate(periods, 1)]
        return Findings(tuple(e.assessment for e in events if e.assessment is not None), tuple(events))

    def unverified(self, found: Findings) -> list[str]:
        return [f"{self.t.table}:{self.t.threshold.id}"] if found.events and not self.t.threshold.verified else []

    def _event(self, n: int, low: list[tuple[int, Reading]], end: tuple[int, Reading] | None) -> Event:
        (day0, first), (last_day, _) = low[0], low[-1]
        values = [r.value.value for _, r in low if isinstance(r.value, Quantity)]
        nadir = min(values) if values else 0.0
        end_day = end[0] if end else None
        end_at = end[1].when.at if end else None
        duration = (end_day if end_day is not None else last_day) - day0
        th = self.t.threshold
        reasons = ((f"CD19+ B cells below {th.below_per_ul:g}/uL from day {day0} (nadir {nadir:g}/uL; row {th.id}: "
                   f"{th.source})"),
                   f"B-cell recovery on day {end_day}" if end else
                   f"aplasia persists at the last count (day {last_day}): CAR-T persistence")
        refs = tuple(dict.fromkeys([r.ref for _, r in low] + ([end[1].ref] if end else [])))
        a = Assessment(B_CELL_APLASIA, CODE, State.GRADED, None, first.when.at, end_at,
                       components=(Component("cd19-nadir", "decimal", round(nadir, 1)),
                                   Component("duration-days", "integer", duration)),
                       evidence=refs, reasons=reasons, flags=("attribution-unconfirmed",), table=self.label)
        return Event(B_CELL_APLASIA, f"period-{n}", State.GRADED, None, first.when.at, day0, abatement=end_at,
                     resolved_day=end_day, assessment=a, details=(("duration_days", duration),), evidence=refs)
