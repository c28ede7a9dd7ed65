"""ICAHT ANC series: daily lowest values (H1), interpolation (H6), follow-up end and cumulative day counts."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby, pairwise
from typing import cast

import msgspec

from ...model import Moment, Quantity, Reading, value_above
from ...timeline import Course
from .table import IcahtWindow

# Last day of follow-up, its time (None: open), and why it ends ("death", "next infusion", "").
FollowUpEnd = tuple[int, datetime | None, str]
ANC = "ANC (LOINC 751-8)"
BELOW, ABOVE = True, False  # a day's ANC at or below / above a threshold (None: undecided)


def at_most(r: Reading, threshold: float) -> bool | None:
    """Is the ANC <= threshold? None when a bound straddles it."""
    q = r.value
    if not isinstance(q, Quantity):
        return None
    # Unit conversion leaves float noise (1.1 x10*3/uL -> 1100.0000000000002): compare at 1e-6 precision.
    above = value_above(round(q.value, 6), q.comparator, threshold)  # no Quantity built per call
    return None if above is None else not above


class DayAnc(msgspec.Struct, frozen=True, gc=False):
    """One day's ANC: the lowest of the day (H1), or interpolated (no readings).

    A frozen msgspec Struct, not a frozen dataclass: one is built per day of follow-up (~110 per course), and a
    Struct builds ~10x faster with the same attribute API, as model.Reading. gc=False: it holds readings,
    numbers and its own cache of booleans, never itself."""

    value: float
    readings: tuple[Reading, ...] = ()
    # The lowest reading at 1e-6 precision when none is a bound (the usual day), else None: at_most() is then
    # one comparison, as a reading <= threshold exists exactly when the lowest is <= threshold.
    plain: float | None = None
    # at_most() by threshold, for the days with a bound: the day counts, the notes and the late window ask
    # each day the same few thresholds again and again (measured: ~90,000 calls for 200 patients).
    _seen: dict[float, bool | None] = msgspec.field(default_factory=dict)

    def at_most(self, threshold: float) -> bool | None:
        """Is the day's ANC <= threshold: True when a reading shows it, None when none does but a bound
        straddles it, else False."""
        if self.plain is not None:
            return not self.plain > threshold  # as at_most(r, threshold) for each reading
        if not self.readings:  # interpolated: one comparison, cheaper than the cache
            return self.value <= threshold
        seen = self._seen
        if threshold in seen:
            return seen[threshold]
        out: bool | None = False
        for r in self.readings:
            one = at_most(r, threshold)
            if one:
                out = True
                break
            if one is None:
                out = None
        seen[threshold] = out
        return out


@dataclass(frozen=True, slots=True)
class ThresholdCount:
    """Cumulative days at or below one threshold in the early window, reading open days both ways."""

    low: int
    high: int
    open_days: tuple[int, ...]  # days without a decisive ANC that change nothing only if both readings agree
    assumed: tuple[int, ...]  # days without an ANC taken as recovered (4.5)


def cumulative(below: list[bool], last: int, stable: int) -> int:
    """Decision 11: days <= `last` at or below the threshold, plus non-stable recoveries between them."""
    n, i, seen = 0, 0, False
    for low, run in groupby(below):  # runs of equal days (C speed; was one Python step per day)
        j = i + len(list(run))
        if low:
            n, seen = n + max(0, min(j, last + 1) - i), True
        elif seen and j < len(below) and j - i < stable:  # non-stable recovery: counts
            n += max(0, min(j, last + 1) - i)
        i = j
    return n


def days_text(days: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out: list[str] = []
    for d in sorted(days):
        if out and out[-1].split("-")[-1] == str(d - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{d}"
        else:
            out.append(str(d))
    return ", ".join(out)


def censor(course: Course) -> FollowUpEnd:
    """End of follow-up for this course: death or the next infusion (4.2, 4.5), with its day."""
    ends: list[tuple[int, datetime, str]] = []
    dead = course.patient.deceased
    if dead is not None and course.day_of(dead) >= 0:
        day = course.day_of(dead)
        ends.append((day, course.window(day)[1] if dead.date_only else dead.at, "death"))
    if course.until is not None:
        ends.append((course.day_of(Moment(course.until)), course.until, "next infusion"))
    return min(ends, key=lambda e: e[1]) if ends else (10**6, None, "")


def daily_lowest(course: Course, end_day: int, gap: int) -> dict[int, DayAnc]:
    """H1: the lowest ANC of each day, from the days before day 0 (anchors only) to the end."""
    first = -(gap + 1)
    by_day: dict[int, list[Reading]] = {}
    for pairs in (course.pre_of("anc"), course.of("anc")):
        for day, r in pairs:
            if first <= day <= end_day and isinstance(r.value, Quantity):
                found = by_day.get(day)
                if found is None:
                    by_day[day] = [r]
                else:
                    found.append(r)
    return {d: _day_anc(rs) for d, rs in sorted(by_day.items())}


def _day_anc(readings: list[Reading]) -> DayAnc:
    qs = [cast(Quantity, r.value) for r in readings]  # Quantity values only (daily_lowest)
    # `plain` rounded as at_most() rounds each reading (unit conversion leaves float noise).
    if len(qs) == 1:  # the usual day: one ANC
        q = qs[0]
        return DayAnc(q.value, tuple(readings), round(q.value, 6) if q.comparator is None else None)
    plain = min(round(q.value, 6) for q in qs) if all(q.comparator is None for q in qs) else None
    return DayAnc(min(q.value for q in qs), tuple(readings), plain)


def interpolated(measured: dict[int, DayAnc], gap: int, step: int) -> dict[int, DayAnc]:
    """H6: linear interpolation over up to `gap` days without an ANC, rounded to `step`/uL as Liang does."""
    days = dict(measured)
    known = sorted(measured)
    for a, b in pairwise(known):
        if 1 < b - a <= gap + 1:
            va, vb = measured[a].value, measured[b].value
            for d in range(a + 1, b):
                days[d] = DayAnc(math.floor((va + (vb - va) * (d - a) / (b - a)) / step + 0.5) * step)
    return days


def early_count(days: dict[int, DayAnc], threshold: int, w: IcahtWindow, stable: int) -> ThresholdCount:
    """Decision 11 cumulative days at or below `threshold` in days 0-30; open days read both ways."""
    span = range(w.first_day, max(w.last_day + stable - 1, max(days, default=0)) + 1)
    get = days.get
    cells = [x.at_most(threshold) if (x := get(d)) is not None else None for d in span]
    # The days without an ANC, as indexes of span: usually none (interpolation fills the gaps).
    absent = [d - span.start for d in sorted(set(span).difference(days))]
    assumed: list[int] = []
    k = 0
    while k < len(absent):  # each run of days without an ANC, [i, j), in order
        i = j = absent[k]
        while k < len(absent) and absent[k] == j:
            j, k = j + 1, k + 1
        # 4.5: no ANC after a stable recovery, ending above (or with the data): recovered.
        if i >= stable and all(c is ABOVE for c in cells[i - stable:i]) \
                and (j == len(cells) or cells[j] is ABOVE):
            cells[i:j] = [ABOVE] * (j - i)
            assumed += [span[m] for m in range(i, j) if span[m] <= w.last_day]
    last = w.last_day - w.first_day
    return ThresholdCount(cumulative([c is BELOW for c in cells], last, stable),
                  cumulative([c is not ABOVE for c in cells], last, stable),
                  tuple(span[k] for k, c in enumerate(cells[:last + 1]) if c is None),  # days <= last_day
                  tuple(assumed))
