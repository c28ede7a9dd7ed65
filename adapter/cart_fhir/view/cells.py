"""Grade cells and their details: what the panel of a cell shows (criterion, domains, inputs, missing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..grading.result import Assessment, DayGrade, Event, State, Toxicity
from ..model import DrugAdmin, Quantity, Reading
from ..timeline import Course
from .labels import CONCEPT_LABELS, component_text, fmt_number, lane_label


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
        what = lane_label(self.toxicity)
        when = f"day {self.day}" if self.day_end == self.day else f"days {self.day} to {self.day_end}"
        if self.state == State.NOT_ASSESSABLE.value or self.grade is None:
            grade = "not assessable"
        elif self.state == State.AT_LEAST.value:
            grade = f"at least grade {self.grade}"
        else:
            grade = f"grade {self.grade}"
        return f"{what}, {when}: {grade}"


def readings_by_ref(course: Course) -> dict[str, list[tuple[int, Reading]]]:
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


def day_cell(course: Course, dg: DayGrade, by_ref: Mapping[str, list[tuple[int, Reading]]],
              drugs: Mapping[str, DrugAdmin], units: Mapping[str, str], versions: Mapping[str, str]) -> Cell:
    detail = Detail(
        title=f"{lane_label(dg.toxicity.value)} day {dg.day} ({course.date_of(dg.day).isoformat()})",
        decided_by=dg.reasons, criteria=_criteria_of(dg.toxicity, versions),
        components=tuple((c.code, component_text(c)) for c in dg.components),
        inputs=_inputs(course, [*dg.evidence, *dg.supporting], by_ref, drugs, units),
        missing=dg.missing, flags=dg.flags)
    return Cell(dg.toxicity.value, dg.day, dg.day, dg.state.value, dg.grade, True, detail)


def _criteria_of(tox: Toxicity, versions: Mapping[str, str]) -> str:
    """The daily grades' criteria table and its version (the same the output Observation.method names)."""
    table = {Toxicity.CRS: "astct-crs-2019", Toxicity.ICANS: "astct-icans-2019"}.get(tox, "")
    return f"{table} v{versions[table]}" if table in versions else table


def _assessment_detail(course: Course, a: Assessment, title: str, by_ref: Mapping[str, list[tuple[int, Reading]]],
                       drugs: Mapping[str, DrugAdmin], units: Mapping[str, str],
                       extra: tuple[tuple[str, str], ...] = ()) -> Detail:
    return Detail(title=title, decided_by=a.reasons, criteria=a.table,
                  components=tuple((c.code, component_text(c)) for c in a.components),
                  inputs=_inputs(course, [*a.evidence, *a.supporting], by_ref, drugs, units),
                  missing=a.missing, flags=a.flags, extra=extra)


def event_cell(course: Course, ev: Event, by_ref: Mapping[str, list[tuple[int, Reading]]],
                drugs: Mapping[str, DrugAdmin], units: Mapping[str, str], attribution: tuple[str, ...]) -> Cell:
    end = ev.resolved_day - 1 if ev.resolved_day is not None and ev.resolved_day > ev.onset_day else ev.onset_day
    title = f"{lane_label(ev.toxicity.value)}: onset day {ev.onset_day}"
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


def assessment_cell(course: Course, a: Assessment, by_ref: Mapping[str, list[tuple[int, Reading]]],
                     drugs: Mapping[str, DrugAdmin], units: Mapping[str, str]) -> Cell:
    start = _day(course, a.start)
    end = _day(course, a.end) - 1 if a.end is not None else start
    title = f"{lane_label(a.toxicity.value)}: days {start} to {max(start, end)}"
    detail = _assessment_detail(course, a, title, by_ref, drugs, units)
    return Cell(a.toxicity.value, start, max(start, end), a.state.value, a.value, False, detail)


def _day(course: Course, at: datetime) -> int:
    return (at.astimezone(course.tz).date() - course.infusion.day0).days
