"""Early ICAHT, days 0-30 (Rejeski et al., Blood 2023;142(10):865-877, early ICAHT grading table; grading.md
4.1, 4.5 and decision 11): cumulative days at or below each ANC threshold, open days read both ways, H7."""

from __future__ import annotations

from ...model import Quantity
from ...timeline import Course
from ..result import Assessment, Component, Event, State
from .findings import assessment, context, event
from .series import ABOVE, ANC, BELOW, DayAnc, FollowUpEnd, ThresholdCount, at_most, days_text, early_count
from .table import Lookups


def _early_grade(lk: Lookups, counts: dict[int, int]) -> int:
    return max((r.grade for r in lk.t.early
                if r.min_days <= counts.get(r.anc_at_most, 0) <= (r.max_days or 10**6)), default=0)


def _never_recovered(lk: Lookups, days: dict[int, DayAnc]) -> int | None:
    """H7: start of an ANC <= 500 run from day 0-3 still unrecovered at the last ANC before day 30."""
    w = lk.windows["early"]
    last = max(days, default=-1)
    if not w.first_day <= last < w.last_day or days[last].at_most(lk.onset) is not BELOW:
        return None
    start, above, d = last, 0, last
    while d - 1 >= w.first_day and d - 1 in days and above < lk.stable:
        d -= 1
        status = days[d].at_most(lk.onset)
        if status is None:
            break
        start, above = (d, 0) if status is BELOW else (start, above + 1)
    return start if start <= w.first_day + lk.settings["never-recovered-start-last-day"] else None


def early(lk: Lookups, course: Course, days: dict[int, DayAnc],
          end: FollowUpEnd) -> tuple[Assessment, Event | None]:
    w = lk.windows["early"]
    window = {d: x for d, x in days.items() if w.first_day <= d <= w.last_day}
    reasons, flags, gcsf = context(lk, course, w, end)
    if not window:
        return assessment(lk, course, w, end, State.NOT_ASSESSABLE, None, reasons, flags, gcsf,
                                missing=(f"{ANC} on days {w.first_day}-{w.last_day}",)), None
    counts = {t: early_count(days, t, w, lk.stable) for t in lk.thresholds}
    state, grade, missing = _early_state(lk, days, counts, end, reasons, flags)
    _early_notes(lk, window, counts, reasons, flags)
    recovery = _recovery(lk, days)
    if recovery is not None and grade:
        reasons.append(f"stable recovery (ANC > {lk.onset}/uL on {lk.stable} consecutive days) "
                       f"from day {recovery}")
    nadir_day, nadir = min(((d, r) for d, x in window.items() for r in x.readings), default=(0, None),
                           key=lambda dr: dr[1].value.value if isinstance(dr[1].value, Quantity) else 0)
    comps = []
    if nadir is not None and isinstance(nadir.value, Quantity):
        q = nadir.value
        reasons.append(f"lowest ANC {q.comparator or ''}{q.value:.0f}/uL on day {nadir_day}")
        comps.append(Component("anc-nadir", "integer", round(q.value)))
    comps += [Component(f"days-anc-le-{t}", "integer", c.low, _early_grade(lk, {t: c.low}))
              for t, c in counts.items()]
    low_readings = [r for x in window.values() for r in x.readings if at_most(r, lk.onset) is BELOW]
    evidence = low_readings or [r for x in window.values() for r in x.readings]
    a = assessment(lk, course, w, end, state, grade, reasons, flags, gcsf, missing, comps, evidence)
    if not grade:
        return a, None
    onset_day = min(d for d, x in window.items() if x.at_most(lk.onset) is BELOW)
    return a, event(course, "early", a, window[onset_day], onset_day, lk.onset, recovery)


def _early_state(lk: Lookups, days: dict[int, DayAnc], counts: dict[int, ThresholdCount], end: FollowUpEnd,
                 reasons: list[str], flags: list[str]) -> tuple[State, int | None, tuple[str, ...]]:
    """The counts read both ways (4.5), then H7."""
    w = lk.windows["early"]
    for t, c in counts.items():
        if c.high:
            upto = "" if c.high == c.low else \
                f", up to {c.high} if the days without a decisive ANC were low"
            reasons.append(f"ANC <= {t}/uL on {c.low} day(s) of days {w.first_day}-{w.last_day} "
                           f"(cumulative, non-stable recovery included{upto})")
    h7 = _never_recovered(lk, days)
    if h7 is not None:
        grade = max(r.grade for r in lk.t.early)
        why = f", {end[2]}" if w.first_day <= end[0] <= w.last_day else ""
        reasons.append(f"ANC <= {lk.onset}/uL from day {h7} and not recovered at the last ANC "
                       f"(day {max(days)}{why}): grade {grade} (H7, never recovered)")
        flags.append("never-recovered-h7")
        return State.GRADED, grade, ()
    low = _early_grade(lk, {t: c.low for t, c in counts.items()})
    high = _early_grade(lk, {t: c.high for t, c in counts.items()})
    if low == high:
        if low == 0:
            reasons.append(f"no ANC <= {lk.onset}/uL in days {w.first_day}-{w.last_day}")
        return State.GRADED, low, ()
    open_days = {d for c in counts.values() if c.low != c.high for d in c.open_days}
    missing = (f"{ANC} on days {days_text(open_days)}",)
    return (State.AT_LEAST, low, missing) if low >= 1 else (State.NOT_ASSESSABLE, None, missing)


def _early_notes(lk: Lookups, window: dict[int, DayAnc], counts: dict[int, ThresholdCount],
                 reasons: list[str], flags: list[str]) -> None:
    interpolated = [d for d, x in window.items() if not x.readings]
    if interpolated:
        reasons.append(f"no ANC on day(s) {days_text(interpolated)}: interpolated (gaps up to "
                       f"{lk.settings['interpolation-max-gap-days']} days, H6) and counted")
        flags.append("interpolated")
    for t, c in counts.items():
        if c.assumed:
            reasons.append(f"no ANC on day(s) {days_text(c.assumed)}: taken as above {t}/uL (after "
                           f"{lk.stable} days above it, 4.5)")
            flags.append("recovery-assumed")
    if any(d not in window for d in range(min(window), max(window) + 1)):
        flags.append("gap-over-7-days")
    if any(x.at_most(t) is None for x in window.values() for t in counts):
        flags.append("anc-bound-undecided")


def _recovery(lk: Lookups, days: dict[int, DayAnc]) -> int | None:
    """H3: first day of the stable recovery after the last ANC <= 500 of the early window."""
    w = lk.windows["early"]
    lows = [d for d, x in days.items()
            if w.first_day <= d <= w.last_day and x.at_most(lk.onset) is BELOW]
    return next((r for r in range(max(lows) + 1, max(days) + 1)
                 if all(d in days and days[d].at_most(lk.onset) is ABOVE
                        for d in range(r, r + lk.stable))), None) if lows else None
