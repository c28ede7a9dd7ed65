"""The timeline model: one CourseView per patient and infusion, built from grading results (pure, no I/O).

Read through the engine's stable results only (pipeline.PatientResult -> CourseResult; grading/result.py
types; timeline.Course for the input facts). Nothing here changes a grade: it only arranges them by day.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..grading.result import Assessment, Event, State, Toxicity
from ..pipeline import CourseResult, PatientResult, RunResult
from ..reviews import Review, computed_text, episode_key, event_key, unmatched
from ..tables import Tables
from ..timeline import Course
from .cells import Cell, Detail, InputValue, assessment_cell, day_cell, event_cell, readings_by_ref
from .evidence import EvidenceLane, Marker, evidence_lanes, treatment_markers
from .labels import CONCEPT_LABELS, DISPLAY_UNITS, LANE_LABELS, LANES, fmt_number

# A suspect-attribution callable (Engine.attributor.suspects): (course, toxicity, onset_day, onset, evidence)
Attribute = Callable[[Course, Toxicity, int, datetime, Sequence[str]], Sequence[Any]]
PRE_DAYS = 7  # the axis starts at day -7 unless lymphodepletion started earlier (issue 17)


@dataclass(slots=True)
class Lane:
    toxicity: str
    label: str
    cells: list[Cell] = field(default_factory=list)
    onsets: list[int] = field(default_factory=list)
    resolutions: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ScoreCard:
    """CAR-HEMATOTOX: each item's value and points, the score and the risk, or what is missing."""

    state: str
    score: int | None
    risk: str
    items: tuple[tuple[str, str], ...]
    missing: tuple[str, ...]
    reasons: tuple[str, ...]
    criteria: str


@dataclass(frozen=True, slots=True)
class EventRow:
    toxicity: str
    grade: str
    onset_day: int
    resolution: str
    details: tuple[tuple[str, str], ...]
    attribution: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """A result of ours a clinician reviewed (reviews.py): their word, and cart-fhir's computation beside it."""

    toxicity: str
    onset_day: int | None
    verdict: str  # confirmed / refuted / edited
    shown: str  # "grade 3 (edited by a clinician; cart-fhir computes grade 2)"
    ref: str  # "Condition/123"


@dataclass(slots=True)
class CourseView:
    patient_id: str
    number: int
    infusion_ref: str
    product: str
    day0: str  # ISO date of day 0
    utc_offset: str
    first_day: int
    last_day: int
    lanes: list[Lane]
    evidence: list[EvidenceLane]
    markers: list[Marker]
    hematotox: ScoreCard | None
    events: list[EventRow]
    versions: tuple[tuple[str, str], ...]
    max_grades: dict[str, str]  # toxicity -> "2", ">=3", "n/a", "-" for the cohort index
    off_axis: list[Cell] = field(default_factory=list)  # assessments whose window starts after the data
    reviews: list[ReviewRow] = field(default_factory=list)  # a clinician's reviews of our results (issue 14)

    @property
    def anchor(self) -> str:
        return f"p-{_slug(self.patient_id)}-{self.number}"

    @property
    def days(self) -> range:
        return range(self.first_day, self.last_day + 1)


@dataclass(slots=True)
class PatientView:
    patient_id: str
    courses: list[CourseView]

    @property
    def anchor(self) -> str:
        return f"p-{_slug(self.patient_id)}"


def build_patients(result: RunResult, *, versions: Mapping[str, int | str] | None = None,
                   units: Mapping[str, str] | None = None, attribute: Attribute | None = None,
                   patients: Iterable[str] | None = None) -> list[PatientView]:
    """Every graded patient (or those named), each infusion course a CourseView."""
    wanted = None if patients is None else {p.removeprefix("Patient/") for p in patients}
    out = []
    for pr in result.patients:
        if wanted is not None and pr.patient.id not in wanted:
            continue
        out.append(build_patient(pr, versions=versions, units=units, attribute=attribute, reviews=result.reviews,
                                 tables=result.tables))
    return out


def build_patient(pr: PatientResult, *, versions: Mapping[str, int | str] | None = None,
                  units: Mapping[str, str] | None = None, attribute: Attribute | None = None,
                  reviews: Mapping[str, Review] | None = None, tables: Tables | None = None) -> PatientView:
    vers = tuple(sorted((k, str(v)) for k, v in (versions or {}).items()))
    view = PatientView(pr.patient.id, [_course(pr.patient.id, cr, vers, {**DISPLAY_UNITS, **(units or {})},
                                               attribute) for cr in pr.courses])
    if reviews and tables is not None:
        _add_reviews(pr, view, reviews, tables)
    return view


def _add_reviews(pr: PatientResult, view: PatientView, reviews: Mapping[str, Review], tables: Tables) -> None:
    """Each course lists the reviewed results of its episodes and events; its max grade per toxicity (the
    cohort index) is the clinician's, marked, with ours beside it. A reviewed result the current data no
    longer produce is listed on the last course."""
    matched: set[str] = set()
    for cr, cv in zip(pr.courses, view.courses, strict=True):
        # per toxicity: the grade each episode or event shows (the clinician's where reviewed, else ours)
        shown: dict[str, list[int | None]] = {}
        reviewed: set[str] = set()
        items: list[tuple[str, int, int | None, bool, Review | None]] = [
            (ep.toxicity.value, ep.onset_day, ep.max_grade, ep.max_is_lower_bound,
             reviews.get(episode_key(cr.course, ep, tables))) for eps in cr.episodes.values() for ep in eps]
        items += [(ev.toxicity.value, ev.onset_day, ev.max_grade, ev.state == State.AT_LEAST,
                   reviews.get(event_key(cr.course, ev)) if ev.condition_ref is None else None) for ev in cr.events]
        for tox, day, grade, lower, review in items:
            if review is None:
                shown.setdefault(tox, []).append(grade)
                continue
            matched.add(review.key)
            reviewed.add(tox)
            shown.setdefault(tox, []).append(review.shown_grade)
            cv.reviews.append(ReviewRow(tox, day, review.verdict.value, review.phrase(computed_text(grade, lower)),
                                        review.ref))
        for tox in reviewed:
            grades = [g for g in shown[tox] if g is not None]
            head = str(max(grades)) if grades else "refuted"
            cv.max_grades[tox] = f"{head} (clinician review; computed {cv.max_grades.get(tox, '-')})"
    if view.courses:
        for review in unmatched(reviews, matched, pr.patient.key):
            view.courses[-1].reviews.append(ReviewRow(
                review.toxicity or "?", None, review.verdict.value,
                review.phrase("cart-fhir no longer computes it from the current data"), review.ref))


# ---- one course -------------------------------------------------------------------------------------

def _course(pid: str, cr: CourseResult, versions: tuple[tuple[str, str], ...], units: Mapping[str, str],
            attribute: Attribute | None) -> CourseView:
    course = cr.course
    refs = readings_by_ref(course)
    drugs = {d.ref: d for d in [*course.drugs, *course.pre_drugs]}
    lanes = {tox: Lane(tox.value, LANE_LABELS[tox.value]) for tox in LANES}
    for tox, days in cr.days.items():
        if tox in lanes:
            lanes[tox].cells.extend(day_cell(course, dg, refs, drugs, units, dict(versions)) for dg in days)
    for tox, eps in cr.episodes.items():
        if tox in lanes:
            lanes[tox].onsets.extend(ep.onset_day for ep in eps)
            lanes[tox].resolutions.extend(ep.resolved_day for ep in eps if ep.resolved_day is not None)
    events: list[EventRow] = []
    unlaned: list[Cell] = []  # long-term effects not assessable: no lane, listed with what they miss
    for ev in cr.events:
        lane = lanes.get(ev.toxicity)
        attribution = _attribution(course, ev, attribute)
        if lane is not None:
            lane.cells.append(event_cell(course, ev, refs, drugs, units, attribution))
            lane.onsets.append(ev.onset_day)
            if ev.resolved_day is not None:
                lane.resolutions.append(ev.resolved_day)
        events.append(_event_row(ev, attribution))
    for a in cr.assessments:
        lane = lanes.get(a.toxicity)
        if lane is not None:
            lane.cells.append(assessment_cell(course, a, refs, drugs, units))
        elif a.state == State.NOT_ASSESSABLE:
            unlaned.append(assessment_cell(course, a, refs, drugs, units))
    first, last = _axis(cr)
    off_axis: list[Cell] = list(unlaned)
    for lane in lanes.values():
        # An assessment window that starts after the last day with data (ICAHT late, days 31-100, when the
        # data end sooner) is listed under the events instead of stretching the axis.
        off_axis.extend(c for c in lane.cells if c.day > last)
        lane.cells = sorted((_clip(c, first, last) for c in lane.cells if c.day <= last), key=lambda c: c.day)
    off = course.tz.utcoffset(None)
    minutes = int(off.total_seconds() // 60) if off is not None else 0
    sign = "+" if minutes >= 0 else "-"
    return CourseView(
        patient_id=pid, number=course.number, infusion_ref=course.infusion.ref, product=course.infusion.product,
        day0=course.infusion.day0.isoformat(), utc_offset=f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}",
        first_day=first, last_day=last, lanes=list(lanes.values()),
        evidence=evidence_lanes(course, first, last, units), markers=treatment_markers(course, first, last),
        hematotox=_score_card(cr.hematotox), events=events, versions=versions, max_grades=_max_grades(cr),
        off_axis=off_axis)


def _axis(cr: CourseResult) -> tuple[int, int]:
    """From lymphodepletion (or day -7) to the last day with data."""
    course = cr.course
    ld = [course.day_of(d.start) for d in course.pre_drugs if d.role == "lymphodepletion"]
    first = min([-PRE_DAYS, *ld])
    days = [0]
    days.extend(day for day, _ in course.readings)
    days.extend(dg.day for dgs in cr.days.values() for dg in dgs)
    days.extend(course.day_of(d.start) for d in course.drugs)
    for ev in cr.events:
        days.append(ev.onset_day)
        if ev.resolved_day is not None:
            days.append(ev.resolved_day)
    return first, max(days)


def _clip(c: Cell, first: int, last: int) -> Cell:
    if c.day >= first and c.day_end <= last:
        return c
    return Cell(c.toxicity, max(c.day, first), min(c.day_end, last), c.state, c.grade, c.daily, c.detail)

def _attribution(course: Course, ev: Event, attribute: Attribute | None) -> tuple[str, ...]:
    if attribute is None:
        return ()
    try:
        suspects = attribute(course, ev.toxicity, ev.onset_day, ev.onset, ev.evidence)
    except (KeyError, ValueError):  # a toxicity the attribution table has no row for: nothing to show
        return ()
    return tuple(f"{getattr(s, 'ref', '')} ({getattr(s, 'role', 'suspect')}): {getattr(s, 'assessment', '')}"
                 f" \u2014 {getattr(s, 'rule', '')}" for s in suspects)


def _event_row(ev: Event, attribution: tuple[str, ...]) -> EventRow:
    grade = "n/a" if ev.max_grade is None else (f"\u2265{ev.max_grade}" if ev.state == State.AT_LEAST
                                                 else str(ev.max_grade))
    resolution = f"day {ev.resolved_day}" if ev.resolved_day is not None else "ongoing"
    details = tuple((k, str(v)) for k, v in ev.details)
    if ev.term is not None:
        details = (("term", ev.term[2]), *details)
    return EventRow(ev.toxicity.value, grade, ev.onset_day, resolution, details, attribution)


def _score_card(hx: Assessment | None) -> ScoreCard | None:
    if hx is None:
        return None
    risk = hx.interpretation if hx.state != State.NOT_ASSESSABLE and hx.interpretation else "not assessable"
    items = tuple((CONCEPT_LABELS.get(c.code, c.code), f"{fmt_number(c.value)} point(s)" if isinstance(
        c.value, int | float) and not isinstance(c.value, bool) else str(c.value)) for c in hx.components)
    return ScoreCard(hx.state.value, hx.value, risk, items, hx.missing, hx.reasons, hx.table)


def _max_grades(cr: CourseResult) -> dict[str, str]:
    out: dict[str, str] = {}
    for tox in LANES:
        grades: list[tuple[int, bool]] = []  # (grade, lower bound)
        unknown = False
        for eps in [cr.episodes.get(tox, [])]:
            grades.extend((ep.max_grade, ep.max_is_lower_bound) for ep in eps)
        if tox in cr.days and not cr.episodes.get(tox):
            days = cr.days[tox]
            if any(d.grade == 0 for d in days):
                grades.append((0, False))
            elif days:
                unknown = True
        for ev in cr.events:
            if ev.toxicity == tox:
                if ev.max_grade is None:
                    unknown = True
                else:
                    grades.append((ev.max_grade, ev.state == State.AT_LEAST))
        for a in cr.assessments:
            if a.toxicity == tox and a.state == State.NOT_ASSESSABLE:
                unknown = True
        if grades:
            g, lower = max(grades)
            out[tox.value] = f"\u2265{g}" if lower else str(g)
        else:
            out[tox.value] = "n/a" if unknown else "-"
    return out


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


__all__ = ["Cell", "CourseView", "Detail", "EventRow", "EvidenceLane", "InputValue", "Lane", "PatientView",
           "ReviewRow", "ScoreCard", "build_patient", "build_patients"]
