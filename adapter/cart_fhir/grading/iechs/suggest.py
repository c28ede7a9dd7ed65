"""IEC-HS suggested grade (grading.md 3.2, 3.3 item 2, 8.2): grade 1 raised by new treatment or support."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ...model import DrugAdmin, Quantity, Reading
from ...timeline import Course
from .labs import Labs, baseline, quantity
from .table import GradeRule, Lookups


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """What one grade rule found: the input references, a sentence (None: not met), review flags."""

    refs: tuple[str, ...] = ()
    text: str | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Suggestion:
    grade: int
    reasons: tuple[str, ...]
    evidence: tuple[str, ...]
    supporting: tuple[str, ...]
    flags: tuple[str, ...]


def unique(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def suggest(lk: Lookups, course: Course, labs: Labs, start: datetime, end: datetime | None) -> Suggestion:
    """Grade 1, raised by the highest grade rule met in [start, end); treatment and support count when
    new (absent in the support-lookback-hours before start). Grade 5 is never suggested (decision 2)."""
    lookback = start - timedelta(hours=lk.settings["support-lookback-hours"])
    grade = lk.screen_grade
    reasons: list[str] = []
    evidence: list[str] = []
    supporting: list[str] = []
    flags: list[str] = []
    for rule in sorted(lk.t.grade_rules, key=lambda r: r.grade):
        if rule.kind == "drug":
            m = _drug_rule(course, rule, lookback, start, end)
        elif rule.kind == "oxygen":
            m = _oxygen_rule(lk, course, rule, lookback, start, end)
        elif rule.kind == "creatinine":
            m = _creatinine_rule(lk, labs, rule, lookback, start, end)
        else:
            continue
        flags.extend(m.flags)
        if m.text:
            grade = max(grade, rule.grade)
            reasons.append(f"{m.text}: suggests grade >= {rule.grade} ({rule.key})")
            (supporting if rule.kind == "drug" else evidence).extend(m.refs)
    if grade == lk.screen_grade:
        reasons.append("no IEC-HS-directed treatment or new organ support found: "
                       f"suggested grade {grade}")
    dead = course.patient.deceased
    if dead is not None and dead.at >= start:
        flags.append("death-attribution-unconfirmed")
        reasons.append(f"death recorded on day {course.day_of(dead)}: grade 5 only from a "
                       "clinician-entered cause of death (grading.md decision 2)")
    return Suggestion(grade, tuple(reasons), unique(evidence), unique(supporting), unique(flags))


def _drug_rule(course: Course, rule: GradeRule, lookback: datetime, start: datetime,
               end: datetime | None) -> RuleMatch:
    """Agents of the rule first given on or after the screen day: not as prophylaxis, not by an excluded
    route (intrathecal), and not already given in the lookback before it."""
    match = [d for d in course.drugs if (d.agent in rule.agents or d.role in rule.roles)
             and d.intent != "prophylaxis" and (d.route or "") not in rule.exclude_routes]
    started = [d for d in match if _inside(d.start.at, start, end)]
    horizon = course.patient.horizon
    before = {d.agent for d in match if d.start.at < start and _last_at(d, horizon) >= lookback}
    new = [d for d in started if d.agent not in before]
    flags = ["treatment-or-support-before-screen"] if len(new) < len(started) else []
    if not new:
        return RuleMatch(flags=tuple(flags))
    if rule.flag:
        flags.append(rule.flag)
    agents = ", ".join(unique([d.agent for d in new]))
    return RuleMatch((*(d.ref for d in new),), f"{agents} started from day {course.day_of(new[0].start)}",
                     tuple(flags))


def _oxygen_rule(lk: Lookups, course: Course, rule: GradeRule, lookback: datetime, start: datetime,
                 end: datetime | None) -> RuleMatch:
    """New oxygen support by one of the rule's devices (a flow with no device is a nasal cannula); it is
    not new when the same or a higher tier was in use in the lookback before the screen day."""
    same_or_higher = {d for r in lk.t.grade_rules if r.kind == "oxygen" and r.grade >= rule.grade
                      for d in r.devices}
    support = _oxygen_support(course)
    now = [(at, dev, r) for at, dev, r in support if dev in rule.devices and _inside(at, start, end)]
    if not now:
        return RuleMatch()
    if any(dev in same_or_higher and lookback <= at < start for at, dev, _ in support):
        return RuleMatch(flags=("treatment-or-support-before-screen",))
    _, device, first = now[0]
    return RuleMatch((*(r.ref for _, _, r in now),), f"new {device} on day {course.day_of(first.when)}")


def _creatinine_rule(lk: Lookups, labs: Labs, rule: GradeRule, lookback: datetime, start: datetime,
                     end: datetime | None) -> RuleMatch:
    """A new creatinine rise above factor x the pre-infusion baseline (not already above it before)."""
    series = labs.post("creatinine")
    base = baseline(lk, labs, "creatinine")
    if base is None:
        return RuleMatch(flags=("creatinine-baseline-missing",) if series else ())
    b = quantity(base[1]).value
    high = [(d, r) for d, r in series if quantity(r).above((rule.factor or 0) * b) is True]
    now = [(d, r) for d, r in high if _inside(r.when.at, start, end)]
    if not now:
        return RuleMatch()
    if any(lookback <= r.when.at < start for _, r in high):
        return RuleMatch(flags=("treatment-or-support-before-screen",))
    d, r = now[0]
    text = f"creatinine {quantity(r).value:g} mg/dL on day {d} > {rule.factor:g} x baseline ({b:g})"
    return RuleMatch((*(x.ref for _, x in now),), text)


def _inside(at: datetime, start: datetime, end: datetime | None) -> bool:
    return start <= at and (end is None or at < end)


def _last_at(d: DrugAdmin, horizon: datetime | None) -> datetime:
    """When an administration stops running (an effectiveDateTime runs at that moment only)."""
    if d.instant:
        return d.start.at
    if d.end is not None:
        return d.end.at
    return horizon if horizon is not None and horizon > d.start.at else d.start.at


def _oxygen_support(course: Course) -> list[tuple[datetime, str, Reading]]:
    """(time, device, reading) of every oxygen record; a flow without a device at that time is a cannula."""
    devices = [(r.when.at, str(r.value), r) for _, r in course.of("oxygen-device")]
    times = {at for at, _, _ in devices}
    flows = [(r.when.at, "nasal-cannula", r) for _, r in course.of("oxygen-flow")
             if isinstance(r.value, Quantity) and r.value.value > 0 and r.when.at not in times]
    return sorted(devices + flows, key=lambda x: x[0])
