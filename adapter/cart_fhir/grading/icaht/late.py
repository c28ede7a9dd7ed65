"""Late ICAHT, after day 30 (Rejeski et al., Blood 2023;142(10):865-877, late ICAHT grading table;
grading.md 4.2 and decision 11): a threshold met on >= 2 days of day 31 to day 100, cut at death and at
the next infusion."""

from __future__ import annotations

from ...timeline import Course
from ..result import Assessment, Component, Event, State
from .findings import assessment, context, event
from .series import ABOVE, ANC, BELOW, DayAnc, FollowUpEnd, at_most
from .table import Lookups


def late(lk: Lookups, course: Course, measured: dict[int, DayAnc],
         end: FollowUpEnd) -> tuple[Assessment, Event | None]:
    w = lk.windows["late"]
    reasons, flags, gcsf = context(lk, course, w, end)
    window = {d: x for d, x in measured.items() if w.first_day <= d <= min(w.last_day, end[0])}
    if not window:
        if end[0] < w.first_day:
            reasons.append(f"follow-up ended on day {end[0]} ({end[2]}) before day {w.first_day}")
        return assessment(lk, course, w, end, State.NOT_ASSESSABLE, None, reasons, flags, gcsf,
                                missing=(f"{ANC} on days {w.first_day}-{w.last_day}",)), None
    # The window is closed when follow-up ends inside it or an ANC after it exists.
    closed = end[0] <= w.last_day or max(measured) > w.last_day
    state, grade, missing = _late_state(lk, window, closed, reasons, flags)
    need = lk.settings["late-min-measurements"]
    row = next((r for r in lk.late_rows if r.grade == grade), None)
    evidence = [r for x in window.values() for r in x.readings
                if row is None or at_most(r, row.anc_at_most)]
    ordered = sorted(x.value for x in window.values())
    comps = [Component("anc-nadir", "integer", round(ordered[0]))]
    if len(ordered) >= need:
        comps.append(Component("anc-second-lowest", "integer", round(ordered[need - 1]), grade))
    if grade:
        flags.append("attribution-unconfirmed")  # 4.2: relapse and later therapy are not excluded here
    a = assessment(lk, course, w, end, state, grade, reasons, flags, gcsf, missing, comps, evidence)
    if not grade:
        return a, None
    t1 = lk.late_rows[0].anc_at_most
    lows = [d for d, x in window.items() if x.at_most(t1) is BELOW]
    later = [d for d in measured if d > lows[-1]]
    recovery = next((later[i] for i in range(len(later) - lk.stable + 1)
                     if all(measured[d].at_most(t1) is ABOVE for d in later[i:i + lk.stable])), None)
    return a, event(course, "late", a, window[lows[0]], lows[0], t1, recovery)


def _late_state(lk: Lookups, window: dict[int, DayAnc], closed: bool, reasons: list[str],
                flags: list[str]) -> tuple[State, int | None, tuple[str, ...]]:
    """Decision 11: the threshold met on >= 2 days; bounds and an unconfirmed last value keep it open."""
    w, need, rows, last = lk.windows["late"], lk.settings["late-min-measurements"], lk.late_rows, max(window)
    status = {r.id: [x.at_most(r.anc_at_most) for x in window.values()] for r in rows}  # asked once a day
    known = {r.id: sum(s is BELOW for s in status[r.id]) for r in rows}
    maybe = {r.id: sum(s is None for s in status[r.id]) for r in rows}
    unconfirmed = {r.id for r in rows if not closed and known[r.id] < need
                   and window[last].at_most(r.anc_at_most) is not ABOVE}
    low = max((r.grade for r in rows if known[r.id] >= need), default=0)
    high = max((r.grade for r in rows if known[r.id] + maybe[r.id] + (r.id in unconfirmed) >= need),
               default=0)
    for r in rows:
        if known[r.id]:
            reasons.append(f"ANC <= {r.anc_at_most}/uL on {known[r.id]} day(s) of days "
                           f"{w.first_day}-{last}")
    if low:
        t = next(r.anc_at_most for r in rows if r.grade == low)
        reasons.append(f"grade {low}: ANC <= {t}/uL on at least {need} days (non-transient)")
    elif not any(known.values()):
        reasons.append(f"ANC above {rows[0].anc_at_most}/uL on every measured day of days "
                       f"{w.first_day}-{last}")
    transient = [r for r in rows if r.grade > low and known[r.id] == 1 and r.id not in unconfirmed]
    if transient:
        top = max(transient, key=lambda x: x.grade)
        day = min(d for d, x in window.items() if x.at_most(top.anc_at_most) is BELOW)
        reasons.append(f"a single ANC <= {top.anc_at_most}/uL (day {day}) is transient: not counted")
        flags.append("transient-low-value")
    if high == low:
        return State.GRADED, low, ()
    missing = []
    if any(maybe[r.id] for r in rows if r.grade > low):
        missing.append(f"exact {ANC} on days reported as a bound")
    top_open = max((r for r in rows if r.id in unconfirmed and r.grade > low), key=lambda r: r.grade,
                   default=None)
    if top_open is not None:
        missing.append(f"a second {ANC} after day {last} to confirm ANC <= {top_open.anc_at_most}/uL")
        flags.append("unconfirmed-last-value")
    return (State.AT_LEAST, low, tuple(missing)) if low else (State.NOT_ASSESSABLE, None, tuple(missing))
