"""Periods of a lab value past a threshold, for the IAGO long-term effects (grading.md 6.4): the one scan
hypogammaglobulinemia (IgG) and B-cell aplasia (CD19+ count) share, each with its own threshold rule."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..model import Quantity, Reading

Pair = tuple[int, Reading]


def low_periods(readings: Sequence[Pair], from_day: int, low: Callable[[Quantity], bool | None],
                ends: Callable[[Reading], bool] = lambda r: True) -> list[tuple[list[Pair], Pair | None]]:
    """(low readings, the reading that ended the period or None) of each period, in time order.

    A period opens on the first reading from `from_day` that `low` calls low (True) and ends on the first later
    one it calls not low (False) that `ends` accepts (a value raised by treatment may not count as recovery);
    a later low reading opens a new period. A value `low` cannot decide (None: a bound that straddles the
    threshold) decides nothing; readings without a Quantity are skipped."""
    periods: list[tuple[list[Pair], Pair | None]] = []
    current: list[Pair] = []
    for day, r in readings:
        if day < from_day or not isinstance(r.value, Quantity):
            continue
        is_low = low(r.value)
        if is_low:
            current.append((day, r))
        elif is_low is False and current and ends(r):
            periods.append((current, (day, r)))
            current = []
    if current:
        periods.append((current, None))
    return periods
