"""One synthetic patient's course drawn from the trial distributions: product, age, CRS and ICANS episodes.

Pure: a `random.Random` in, a frozen Scenario out. The scenario is the ground truth that expected.json
records; the FHIR builder only realises it (adapter/cart_fhir/synth/builder.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

from .late import QUICK_RECOVERY, Cytopenia, Infection, draw_cytopenia, draw_infections
from .table import Spread, SynthProductRow, SynthTable, ToxicityRow

if TYPE_CHECKING:
    from .longterm import LateEffects

OFFSETS = ("+00:00", "+01:00", "+02:00", "-05:00", "-08:00")  # non-UTC offsets catch day-boundary bugs
FIRST_DAY0 = date(2023, 1, 2)


@dataclass(frozen=True, slots=True)
class Episode:
    """A toxicity episode: worst grade, first day with grade >= 1, number of days with grade >= 1, and the
    day of the worst grade."""

    grade: int
    onset_day: int
    duration: int
    peak_day: int

    @property
    def last_day(self) -> int:
        return self.onset_day + self.duration - 1


@dataclass(frozen=True, slots=True)
class Scenario:
    pid: str
    product: SynthProductRow
    age: int
    day0: date
    tz: str
    crs: Episode | None
    icans: Episode | None
    crs_route: str  # how grade >= 2 CRS shows: "hypotension" or "hypoxia"
    cytopenia: Cytopenia = QUICK_RECOVERY
    infections: tuple[Infection, ...] = ()
    late: LateEffects | None = None  # IAGO long-term effects (synth/longterm.py), drawn from their own stream

    @property
    def pressor_days(self) -> frozenset[int]:
        """Days with a vasopressor running (CRS grade >= 3 by hypotension, on the peak day)."""
        crs = self.crs
        if crs is None or crs.grade < 3 or self.crs_route != "hypotension":
            return frozenset()
        return frozenset({crs.peak_day})


def _spread(rng: random.Random, s: Spread, lo: int, hi: int) -> int:
    a, b = s.range
    if a == b:
        v = float(a)
    else:
        v = rng.triangular(a, b, s.median)
    return max(lo, min(hi, round(v)))


def _episode(rng: random.Random, row: ToxicityRow, days: int) -> Episode | None:
    x = rng.uniform(0, 100)
    grade = 0
    acc = 0.0
    for g, pct in enumerate(row.grade_pct, start=1):
        acc += pct
        if x < acc:
            grade = g
            break
    if grade == 0:
        return None
    # Onset on day 1 or later: day 0 holds the infusion and the hours before it are not graded.
    onset = _spread(rng, row.onset_day, 1, max(1, days - 3))
    duration = _spread(rng, row.duration_days, 1, max(1, days - 1 - onset))
    peak = onset + rng.randrange(duration) if duration > 1 else onset
    return Episode(grade, onset, duration, peak)


def draw(rng: random.Random, table: SynthTable, number: int, days: int) -> Scenario:
    """Patient `number` of the cohort; all randomness comes from `rng`, in a fixed order."""
    product = rng.choices(table.products, weights=[p.weight for p in table.products])[0]
    age = rng.randint(*product.age)
    day0 = FIRST_DAY0 + timedelta(days=rng.randrange(365))
    tz = rng.choice(OFFSETS)
    trial = table.trials[product.trial]
    crs = _episode(rng, trial.crs, days)
    icans = _episode(rng, trial.icans, days)
    route = rng.choice(("hypotension", "hypoxia"))
    # Drawn after the CRS/ICANS draws so those stay what earlier versions drew for the same seed.
    cytopenia = draw_cytopenia(rng, table)
    infections = draw_infections(rng, table)
    return Scenario(f"synth-{number:05d}", product, age, day0, tz, crs, icans, route, cytopenia, infections)
