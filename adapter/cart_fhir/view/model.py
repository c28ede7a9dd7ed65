"""The timeline model: one CourseView per patient and infusion, built from grading results (pure, no I/O).

Read through the engine's stable results only (pipeline.PatientResult -> CourseResult; grading/result.py
types; timeline.Course for the input facts). Nothing here changes a grade: it only arranges them by day.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..grading.result import Assessment, DayGrade, Event, State, Toxicity
from ..model import DrugAdmin, Quantity, Reading
from ..pipeline import CourseResult, PatientResult, RunResult
from ..timeline import Course
from .evidence import EvidenceLane, evidence_lanes, fraction_of_day, treatment_markers, Marker
from .labels import CONCEPT_LABELS, DISPLAY_UNITS, LANE_LABELS, LANES, component_text, fmt_number

# A suspect-attribution callable (Engine.attributor.suspects): (course, toxicity, onset_day, onset, evidence)
Attribute = Callable[[Course, Toxicity, int, datetime, Sequence[str]], Sequence[Any]]
PRE_DAYS = 7  # the axis starts at day -7 unless lymphodepletion started earlier (issue 17)


@dataclass(frozen=True, slots=True)
class InputValue:
    """One input value behind a grade: what, value and unit, when (day and local time), source reference."""

    name: str
    value: str
    unit: str
    when: str
    ref: str


@dataclass(frozen=True, slots=True)
class Detail:
    """What the details panel of a cell shows."""

    title: str
    decided_by: tuple[str, ...]  # the criterion rows / reasons that set the grade
    criteria: str  # criteria table id and version
    components: tuple[tuple[str, str], ...]  # domain -> value (and the grade it alone gives)
    inputs: tuple[InputValue, ...]
    missing: tuple[str, ...]  # for not assessable: exactly which inputs were missing
    flags: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()  # event details, attribution


@dataclass(frozen=True, slots=True)
class Cell:
    """A grade cell. Daily cells (CRS, ICANS) cover one day; event cells span onset to resolution."""

    toxicity: str  # summary-row name (Toxicity.value)
    day: int
    day_end: int  # last day drawn (inclusive); == day for a daily cell
    state: str  # graded | at-least | not-assessable
    grade: int | None  # the grade; for at-least the proven minimum
    daily: bool
    detail: Detail

    @property
    def text(self) -> str:
        if self.state == State.NOT_ASSESSABLE.value or self.grade is None:
            return "?"
        return f"\u2265{self.grade}" if self.state == State.AT_LEAST.value else str(self.grade)

    @property
    def label(self) -> str:
        """The text alternative: what a screen reader says for the cell."""
        what = LANE_LABELS[self.toxicity]
        when = f"day {self.day}" if self.day_end == self.day else f"days {self.day} to {self.day_end}"
        if self.state == State.NOT_ASSESSABLE.value or self.grade is None:
            grade = "not assessable"
        elif self.state == State.AT_LEAST.value:
            grade = f"at least grade {self.grade}"
        else:
            grade = f"grade {self.grade}"
        return f"{what}, {when}: {grade}"


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
        out.append(build_patient(pr, versions=versions, units=units, attribute=attribute))
    return out


def build_patient(pr: PatientResult, *, versions: Mapping[str, int | str] | None = None,
                  units: Mapping[str, str] | None = None, attribute: Attribute | None = None) -> PatientView:
    vers = tuple(sorted((k, str(v)) for k, v in (versions or {}).items()))
    return PatientView(pr.patient.id, [_course(pr.patient.id, cr, vers, {**DISPLAY_UNITS, **(units or {})},
                                               attribute) for cr in pr.courses])


# ---- one course -------------------------------------------------------------------------------------

def _course(pid: str, cr: CourseResult, versions: tuple[tuple[str, str], ...], units: Mapping[str, str],
            attribute: Attribute | None) -> CourseView:
    course = cr.course
    refs = _readings_by_ref(course)
    drugs = {d.ref: d for d in [*course.drugs, *course.pre_drugs]}
    lanes = {tox: Lane(tox.value, LANE_LABELS[tox.value]) for tox in LANES}
    for tox, days in cr.days.items():
        if tox in lanes:
            lanes[tox].cells.extend(_day_cell(course, dg, refs, drugs, units) for dg in days)
    for tox, eps in cr.episodes.items():
        if tox in lanes:
            lanes[tox].onsets.extend(ep.onset_day for ep in eps)
            lanes[tox].resolutions.extend(ep.resolved_day for ep in eps if ep.resolved_day is not None)
    events: list[EventRow] = []
    for ev in cr.events:
        lane = lanes.get(ev.toxicity)
        if lane is None:
            continue
        attribution = _attribution(course, ev, attribute)
        lane.cells.append(_event_cell(course, ev, refs, drugs, units, attribution))
        lane.onsets.append(ev.onset_day)
        if ev.resolved_day is not None:
            lane.resolutions.append(ev.resolved_day)
        events.append(_event_row(ev, attribution))
    for a in cr.assessments:
        lane = lanes.get(a.toxicity)
        if lane is not None:
            lane.cells.append(_assessment_cell(course, a, refs, drugs, units))
    first, last = _axis(cr)
    off_axis: list[Cell] = []
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


def _readings_by_ref(course: Course) -> dict[str, list[tuple[int, Reading]]]:
    out: dict[str, list[tuple[int, Reading]]] = {}
    for pair in [*course.pre_readings, *course.readings]:
        out.setdefault(pair[1].ref, []).append(pair)
    return out


def _when(course: Course, day: int, at: datetime, date_only: bool = False) -> str:
    if date_only:
        return f"day {day} ({at.date().isoformat()})"
    local = at.astimezone(course.tz)
    return f"day {day} {local:%H:%M} ({local.isoformat(timespec='minutes')})"


def _inputs(course: Course, refs: Sequence[str], by_ref: Mapping[str, list[tuple[int, Reading]]],
            drugs: Mapping[str, DrugAdmin], units: Mapping[str, str]) -> tuple[InputValue, ...]:
    out: list[InputValue] = []
    for ref in dict.fromkeys(refs):
        for day, r in by_ref.get(ref, ()):
            out.append(InputValue(CONCEPT_LABELS.get(r.concept, r.concept), _value(r.value), _unit(r, units),
                                  _when(course, day, r.when.at, r.when.date_only), ref))
        d = drugs.get(ref)
        if d is not None:
            dose = f"{fmt_number(d.dose)} {d.dose_unit or ''}".strip() if d.dose is not None else "given"
            span = _when(course, course.day_of(d.start), d.start.at, d.start.date_only)
            if d.end is not None and not d.instant:
                span += f" until {_when(course, course.day_of(d.end), d.end.at, d.end.date_only)}"
            out.append(InputValue(d.agent, dose, "", span, ref))
        if ref not in by_ref and d is None:
            out.append(InputValue("resource", "", "", "", ref))
    return tuple(out)


def _value(v: object) -> str:
    if isinstance(v, Quantity):
        return f"{v.comparator or ''}{fmt_number(v.value)}"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def _unit(r: Reading, units: Mapping[str, str]) -> str:
    return units.get(r.concept, "") if isinstance(r.value, Quantity) else ""


def _day_cell(course: Course, dg: DayGrade, by_ref: Mapping[str, list[tuple[int, Reading]]],
              drugs: Mapping[str, DrugAdmin], units: Mapping[str, str]) -> Cell:
    detail = Detail(
        title=f"{LANE_LABELS[dg.toxicity.value]} day {dg.day} ({course.date_of(dg.day).isoformat()})",
        decided_by=dg.reasons, criteria=_criteria_of(dg.toxicity),
        components=tuple((c.code, component_text(c)) for c in dg.components),
        inputs=_inputs(course, [*dg.evidence, *dg.supporting], by_ref, drugs, units),
        missing=dg.missing, flags=dg.flags)
    return Cell(dg.toxicity.value, dg.day, dg.day, dg.state.value, dg.grade, True, detail)


def _criteria_of(tox: Toxicity) -> str:
    return {Toxicity.CRS: "astct-crs-2019", Toxicity.ICANS: "astct-icans-2019"}.get(tox, "")


def _assessment_detail(course: Course, a: Assessment, title: str, by_ref: Mapping[str, list[tuple[int, Reading]]],
                       drugs: Mapping[str, DrugAdmin], units: Mapping[str, str],
                       extra: tuple[tuple[str, str], ...] = ()) -> Detail:
    return Detail(title=title, decided_by=a.reasons, criteria=a.table,
                  components=tuple((c.code, component_text(c)) for c in a.components),
                  inputs=_inputs(course, [*a.evidence, *a.supporting], by_ref, drugs, units),
                  missing=a.missing, flags=a.flags, extra=extra)


def _event_cell(course: Course, ev: Event, by_ref: Mapping[str, list[tuple[int, Reading]]],
                drugs: Mapping[str, DrugAdmin], units: Mapping[str, str], attribution: tuple[str, ...]) -> Cell:
    end = ev.resolved_day - 1 if ev.resolved_day is not None and ev.resolved_day > ev.onset_day else ev.onset_day
    title = f"{LANE_LABELS[ev.toxicity.value]}: onset day {ev.onset_day}"
    if ev.term is not None:
        title += f", {ev.term[2]}"
    extra = tuple((k, str(v)) for k, v in ev.details) + tuple(("attribution", a) for a in attribution)
    if ev.assessment is not None:
        detail = _assessment_detail(course, ev.assessment, title, by_ref, drugs, units, extra)
        if ev.evidence:
            detail = Detail(detail.title, detail.decided_by, detail.criteria, detail.components,
                            detail.inputs + _inputs(course, ev.evidence, by_ref, drugs, units), detail.missing,
                            detail.flags, detail.extra)
    else:
        detail = Detail(title, (), "", (), _inputs(course, ev.evidence, by_ref, drugs, units), (), (), extra)
    return Cell(ev.toxicity.value, ev.onset_day, end, ev.state.value, ev.max_grade, False, detail)


def _assessment_cell(course: Course, a: Assessment, by_ref: Mapping[str, list[tuple[int, Reading]]],
                     drugs: Mapping[str, DrugAdmin], units: Mapping[str, str]) -> Cell:
    start = _day(course, a.start)
    end = _day(course, a.end) - 1 if a.end is not None else start
    title = f"{LANE_LABELS[a.toxicity.value]}: days {start} to {max(start, end)}"
    detail = _assessment_detail(course, a, title, by_ref, drugs, units)
    return Cell(a.toxicity.value, start, max(start, end), a.state.value, a.value, False, detail)


def _day(course: Course, at: datetime) -> int:
    return (at.astimezone(course.tz).date() - course.infusion.day0).days


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


__all__ = ["Cell", "CourseView", "Detail", "EventRow", "InputValue", "Lane", "PatientView", "ScoreCard",
           "build_patient", "build_patients", "fraction_of_day", "EvidenceLane"]
