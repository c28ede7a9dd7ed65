"""Clinician attribution on input (grading.md decision 9, 0.3, 11.11): what a grade does with a finding a
clinician attributed (model.ClinicianAttribution, read from a clinician's Condition.evidence.detail).

Combining rules:
- `other-cause`: the finding is left out of the grade of every toxicity the registry marks `attribution`
  (CRS, ICANS, IEC-HS, ICAHT, infections), unless the attributing Condition is itself an event of that
  toxicity (an infection Condition whose evidence is a positive culture does not take the culture away from
  the infection grade). The grade names the finding, the clinician's Condition and its diagnosis in its reasons
  and lists the Condition in its evidence.
- `car-t-related`: a grade whose evidence holds such a finding loses the `attribution-unconfirmed` flag and
  names the clinician's Condition in its reasons and evidence.
- Only a clinician sets either (decision 9); the engine never infers them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ..model import ClinicianAttribution, ConditionFact, Moment, Reading
from ..timeline import Course
from .result import Assessment, DayGrade, Event, Findings

UNCONFIRMED = "attribution-unconfirmed"
OTHER_CAUSE_FLAG = "finding-attributed-elsewhere"


@dataclass(frozen=True, slots=True)
class Dropped:
    """A finding left out of a grade because a clinician attributed it to another cause."""

    day: int
    attribution: ClinicianAttribution

    @property
    def reason(self) -> str:
        a = self.attribution
        return (f"{a.finding} left out: a clinician attributes it to {a.display} ({a.by}) "
                "(grading.md decision 9, clinician attribution)")


F = TypeVar("F", Reading, ConditionFact)  # a finding a clinician may attribute elsewhere


def view(course: Course, own_tables: Sequence[str]) -> tuple[Course, list[Dropped]]:
    """The course without the findings a clinician attributed to another cause (for one toxicity), and what
    was left out. The course itself is returned when nothing is attributed elsewhere."""
    attributions = course.patient.attributions
    if not attributions:
        return course, []

    def other(ref: str) -> ClinicianAttribution | None:
        a = attributions.get(ref)
        if a is None or a.status != "other-cause" or (a.table is not None and a.table in own_tables):
            return None
        return a

    dropped: list[Dropped] = []

    def kept(pairs: Sequence[tuple[int, F]]) -> list[tuple[int, F]]:
        out = []
        for day, finding in pairs:
            a = other(finding.ref)
            if a is None:
                out.append((day, finding))
            else:
                dropped.append(Dropped(day, a))
        return out

    readings, conditions = kept(course.readings), kept(course.conditions)
    if not dropped:
        return course, []
    narrowed = Course(course.patient, course.infusion, course.number, course.until, readings, course.drugs,
                      conditions, course.pre_readings, course.pre_drugs)
    return narrowed, list({(d.day, d.attribution.finding): d for d in dropped}.values())


T = TypeVar("T", DayGrade, Assessment)


def _annotate(item: T, day: int | None, dropped: Sequence[Dropped], course: Course) -> T:
    """Reasons and evidence for dropped findings of the item's day (None: any day); the car-t-related
    confirmation of its evidence."""
    reasons = list(item.reasons)
    evidence = list(item.evidence)
    flags = list(item.flags)
    for d in dropped:
        if day is None or d.day == day:
            reasons.append(d.reason)
            evidence.append(d.attribution.by)
            flags.append(OTHER_CAUSE_FLAG)
    confirmed = [a for ref in item.evidence if (a := course.patient.attributions.get(ref)) is not None
                 and a.status == "car-t-related"]
    if confirmed:
        flags = [f for f in flags if f != UNCONFIRMED]
        for a in confirmed:
            reasons.append(f"{a.finding} confirmed CAR-T related by a clinician: {a.display} ({a.by})")
            evidence.append(a.by)
    if reasons == list(item.reasons) and flags == list(item.flags):
        return item
    return replace(item, reasons=tuple(reasons), evidence=tuple(dict.fromkeys(evidence)),
                   flags=tuple(dict.fromkeys(flags)))


def annotate(output: Any, dropped: Sequence[Dropped], course: Course) -> Any:
    """A grader's output with the attribution reasons: daily grades per day; findings per assessment (a
    dropped finding is named on the assessments of its toxicity whose period holds its day)."""
    if not course.patient.attributions:
        return output
    if isinstance(output, list):
        return [_annotate(d, d.day, dropped, course) if isinstance(d, DayGrade) else d for d in output]
    if isinstance(output, Findings):
        new: dict[int, Assessment] = {}

        def fix(a: Assessment) -> Assessment:
            if id(a) not in new:
                start = course.day_of(Moment(a.start))
                end = course.day_of(Moment(a.end)) if a.end is not None else None
                near = [d for d in dropped if d.day >= start and (end is None or d.day <= end)]
                new[id(a)] = _annotate(a, None, near, course)
            return new[id(a)]

        events: list[Event] = []
        for ev in output.events:
            if ev.assessment is not None:
                ev = replace(ev, assessment=fix(ev.assessment))
            events.append(ev)
        return Findings(tuple(fix(a) for a in output.assessments), tuple(events))
    return output
