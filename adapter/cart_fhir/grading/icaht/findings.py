"""The Observation and AdverseEvent of an ICAHT window (grading.md 4.4, 4.5, decision 10): the reasons and
flags every window carries, its effective period cut at death or the next infusion, and its event."""

from __future__ import annotations

from ...model import DrugAdmin, Reading
from ...timeline import Course
from ..result import Assessment, Component, Event, State, Toxicity
from .series import ANC, BELOW, DayAnc, FollowUpEnd, at_most
from .table import IcahtWindow, Lookups


def context(lk: Lookups, course: Course, w: IcahtWindow,
            end: FollowUpEnd) -> tuple[list[str], list[str], list[DrugAdmin]]:
    """Reasons and flags every assessment of the window carries; G-CSF given in it (4.4)."""
    reasons: list[str] = []
    flags: list[str] = []
    if w.first_day <= end[0] <= w.last_day:
        reasons.append(f"window ends on day {end[0]} ({end[2]})")
        flags.append("deceased-in-window" if end[2] == "death" else "next-infusion-in-window")
    gcsf = [d for d in course.drugs if d.role == "g-csf" and course.day_of(d.start) <= w.last_day
            and course.day_of(d.end or d.start) >= w.first_day]
    if gcsf:
        reasons.append(f"G-CSF given ({', '.join(dict.fromkeys(d.agent for d in gcsf))}): reported, "
                       "does not change the grade")
        flags.append("g-csf-given")
    if lk.unverified(w.window):
        flags.append("unverified-criteria")
    return reasons, flags, gcsf


def assessment(lk: Lookups, course: Course, w: IcahtWindow, end: FollowUpEnd, state: State,
               grade: int | None, reasons: list[str], flags: list[str], gcsf: list[DrugAdmin],
               missing: tuple[str, ...] = (), comps: list[Component] | None = None,
               evidence: list[Reading] | None = None) -> Assessment:
    """The window's Observation: effective period = the window, cut at death or the next infusion."""
    start, stop = course.window(w.first_day)[0], course.window(w.last_day)[1]
    if end[1] is not None and end[1] < stop:
        stop = max(end[1], start)
    if not evidence and state == State.NOT_ASSESSABLE:
        reasons.insert(0, f"no {ANC} in the window")
    tox = Toxicity.ICAHT_EARLY if w.window == "early" else Toxicity.ICAHT_LATE
    return Assessment(tox, w.code, state, grade, start, stop, None, tuple(comps or ()),
                      tuple(dict.fromkeys(r.ref for r in evidence or ())), tuple(d.ref for d in gcsf),
                      missing if state != State.GRADED else (), tuple(reasons),
                      tuple(dict.fromkeys(flags)), lk.table_id)


def event(course: Course, key: str, a: Assessment, first: DayAnc, onset_day: int, threshold: int,
          recovery: int | None) -> Event:
    """One AdverseEvent per window with grade >= 1: onset = first qualifying ANC, abatement = recovery."""
    times = [r.when.at for r in first.readings if at_most(r, threshold) is BELOW]
    onset = min(times) if times else course.window(onset_day)[0]
    return Event(a.toxicity, key, a.state, a.value, onset, onset_day,
                 course.window(recovery)[0] if recovery is not None else None, recovery, a,
                 details=(("window", key),), evidence=a.evidence)
