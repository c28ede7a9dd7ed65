"""Infections and cytopenias of one synthetic patient, drawn from mappings/synth-cohort.yaml, with their
ground-truth grades computed from the scenario by the spec's rules (never by calling the grader).

ICAHT: shared/spec/grading.md 4.1 (early: days with ANC <= 500/uL and <= 100/uL in days 0-30) and 4.2 (late:
the ANC level after day +30, met on >= 2 measurements). Infections: grading.md 6.2, the "automatable part":
oral treatment -> 2, IV -> 3, vasopressors during the infection -> 4, within the grades the CTCAE v5 term has.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .table import GradeMix, SynthInfectionRow, SynthTable

# CTCAE v5 grades each infection's term has (grading.md 6.2; mappings/infection-grading.yaml terms).
TERM_GRADES = {"bacteremia": (2, 2), "cmv-infection": (1, 5), "pneumonia": (2, 5)}
ROUTE_GRADE = {"oral": 2, "intravenous": 3}
SUPPORT_GRADE = 4


@dataclass(frozen=True, slots=True)
class Cytopenia:
    """The ANC course: days from day 0 with ANC <= 500/uL (d500; 31 = never above 500 in days 0-30), of which
    the first d100 are <= 100/uL; and the late level's grade (ANC twice weekly from day 31 to day 104)."""

    d500: int
    d100: int
    late_grade: int

    @property
    def early_grade(self) -> int:
        """grading.md 4.1: the highest row met by either column."""
        by500 = 0 if self.d500 == 0 else 1 if self.d500 <= 6 else 2 if self.d500 <= 13 else \
            3 if self.d500 <= 30 else 4
        by100 = 4 if self.d100 >= 14 else 3 if self.d100 >= 7 else 0
        return max(by500, by100)


QUICK_RECOVERY = Cytopenia(10, 0, 0)  # ANC <= 500 for 10 days, never <= 100, no late cytopenia


@dataclass(frozen=True, slots=True)
class Infection:
    kind: str
    key: str
    window: str
    onset_day: int
    duration: int
    route: str  # "oral" or "intravenous"

    @property
    def last_day(self) -> int:
        return self.onset_day + self.duration - 1

    def grade(self, pressor_days: frozenset[int]) -> int:
        """6.2: route grade, or 4 with a vasopressor from the day before onset to the last day (the grader
        links organ support from 24 h before onset), capped to the term's grades."""
        lo, hi = TERM_GRADES[self.key]
        g = ROUTE_GRADE[self.route]
        if any(self.onset_day - 1 <= d <= self.last_day for d in pressor_days):
            g = SUPPORT_GRADE
        return min(max(g, lo), hi)


def _grade(rng: random.Random, mix: GradeMix) -> int:
    x, acc = rng.uniform(0, 100), 0.0
    for g, pct in enumerate(mix.grade_pct, start=1):
        acc += pct
        if x < acc:
            return g
    return 0


def _early_days(rng: random.Random, grade: int) -> tuple[int, int]:
    """(d500, d100) realising an early grade; recovery by day 27 leaves 3 days to prove it stable (H3)."""
    if grade == 0:
        return 0, 0
    if grade == 1:
        d500 = rng.randint(1, 6)
        return d500, rng.randint(0, d500)
    if grade == 2:
        return rng.randint(7, 13), rng.randint(0, 6)
    if grade == 3:
        if rng.random() < 0.5:
            return rng.randint(14, 27), rng.randint(0, 6)
        d100 = rng.randint(7, 13)
        return rng.randint(d100, 27), d100
    if rng.random() < 0.5:
        return 31, rng.randint(0, 13)  # never recovers in days 0-30
    d100 = rng.randint(14, 27)
    return rng.randint(d100, 27), d100


def draw_cytopenia(rng: random.Random, table: SynthTable) -> Cytopenia:
    early = _grade(rng, table.icaht.early)
    d500, d100 = _early_days(rng, early)
    return Cytopenia(d500, d100, _grade(rng, table.icaht.late))


def _spread(rng: random.Random, lo: int, median: int, hi: int) -> int:
    return lo if lo == hi else max(lo, min(hi, round(rng.triangular(lo, hi, median))))


def _infection(rng: random.Random, row: SynthInfectionRow) -> Infection | None:
    if rng.uniform(0, 100) >= row.pct:
        return None
    onset = _spread(rng, row.onset_day.range[0], row.onset_day.median, row.onset_day.range[1])
    duration = _spread(rng, row.duration_days.range[0], row.duration_days.median, row.duration_days.range[1])
    route = "intravenous" if rng.uniform(0, 100) < row.iv_pct else "oral"
    return Infection(row.kind, row.key, row.window, onset, duration, route)


def draw_infections(rng: random.Random, table: SynthTable) -> tuple[Infection, ...]:
    """At most one infection per table row; rows draw in table order (fixed randomness order)."""
    drawn = [_infection(rng, row) for row in table.infections]
    return tuple(sorted((i for i in drawn if i is not None), key=lambda i: (i.onset_day, i.key)))
