"""Registry follow-up CSV (issue 16): one row per CAR-T infusion and follow-up period (day 100, 6 months,
1 year, then yearly) with the IAGO long-term effects of that period. Columns: mappings/registry-columns.yaml
`follow_up` (named after a registry form question only where its text was read; none was, so all are
`verified: false`).

A separate file (`cart-fhir grade --registry-follow-up-csv FILE`), so the per-infusion registry CSV keeps its
rows and columns for existing users. Never a blank cell, never a silent 0 (grading.md decision 2).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from .grading.result import Event, Toxicity
from .pipeline import CourseResult, PatientResult
from .registry import NO, NOT_APPLICABLE, UNKNOWN, YES, csv_columns_text
from .tables import Tables
from .timeline import Course

NOT_RECORDED = "not recorded"  # no Condition of that kind in the data: absence is not proven
HYPOGAMMA, APLASIA = Toxicity("hypogammaglobulinemia"), Toxicity("b-cell-aplasia")
MALIGNANCY, CYTOPENIA = Toxicity("second-malignancy"), Toxicity("prolonged-cytopenia")
CYTOPENIA_CONCEPTS = ("anc", "platelets", "hemoglobin")
REPLACEMENT = "immune-globulin"  # drugs.yaml agent (hypogammaglobulinemia.yaml replacement_agents)


@dataclass(frozen=True, slots=True)
class Period:
    """Days [first, last] after the infusion: day-100 = 0-100, month-6 = 101-182, year-1 = 183-365, year-N =
    365(N-1)+1 .. 365N."""

    name: str
    first: int
    last: int


def periods(until_day: int) -> Iterator[Period]:
    """The follow-up periods up to the one holding `until_day` (at least the day-100 period)."""
    yield Period("day-100", 0, 100)
    fixed = (Period("month-6", 101, 182), Period("year-1", 183, 365))
    for p in fixed:
        if until_day < p.first:
            return
        yield p
    year = 2
    while until_day >= 365 * (year - 1) + 1:
        yield Period(f"year-{year}", 365 * (year - 1) + 1, 365 * year)
        year += 1


def columns(tables: Tables) -> list[str]:
    return [r.column for r in tables.registry_columns.follow_up]


def follow_up_rows(pr: PatientResult, tables: Tables) -> list[dict[str, str]]:
    names = columns(tables)
    out = []
    for cr in pr.courses:
        for p in periods(_last_day(cr.course)):
            row = {"patient_id": pr.patient.id, "infusion_number": str(cr.course.number),
                   "f4006_q6_infusion_date": cr.course.infusion.day0.isoformat(), "period": p.name,
                   "period_first_day": str(p.first), "period_last_day": str(p.last),
                   "period_end_date": cr.course.date_of(p.last).isoformat()}
            row.update(_effects(cr, p))
            out.append({c: row[c] for c in names})  # KeyError: a YAML column this module does not fill
    return out


def csv_text(rows: Iterable[Mapping[str, str]], tables: Tables, header: bool = True) -> str:
    return csv_columns_text(rows, columns(tables), header)


def _last_day(course: Course) -> int:
    days = [d for d, _ in course.readings] + [d for d, _ in course.conditions]
    days += [course.day_of(d.start) for d in course.drugs]
    return max(days, default=0)


def _overlaps(ev: Event, p: Period) -> bool:
    return ev.onset_day <= p.last and (ev.resolved_day is None or ev.resolved_day > p.first)


def _measured(course: Course, concepts: tuple[str, ...], p: Period) -> bool:
    return any(p.first <= d <= p.last for d, _ in course.of_any(concepts))


def _effects(cr: CourseResult, p: Period) -> dict[str, str]:
    course = cr.course
    events = {tox: [e for e in cr.events if e.toxicity == tox] for tox in (HYPOGAMMA, APLASIA, MALIGNANCY,
                                                                           CYTOPENIA)}
    low_igg = [e for e in events[HYPOGAMMA] if _overlaps(e, p)]
    igg = [r.value.value for d, r in course.of("igg") if p.first <= d <= p.last and hasattr(r.value, "value")]
    aplasia = [e for e in events[APLASIA] if _overlaps(e, p)]
    cancers = [e for e in events[MALIGNANCY] if p.first <= e.onset_day <= p.last]
    cytopenia = [e for e in events[CYTOPENIA] if _overlaps(e, p)]
    grades = [e.max_grade for e in cytopenia if e.max_grade is not None]
    infections = [e for e in cr.events if e.toxicity == Toxicity.INFECTION and p.first <= e.onset_day <= p.last]
    if p.last <= 100:
        cyto, cyto_grade = NOT_APPLICABLE, NOT_APPLICABLE  # prolonged cytopenia is defined after day 100
    elif cytopenia:
        cyto, cyto_grade = YES, str(max(grades)) if grades else UNKNOWN
    elif _measured(course, CYTOPENIA_CONCEPTS, p):
        cyto, cyto_grade = NO, "0"
    else:
        cyto, cyto_grade = UNKNOWN, UNKNOWN
    return {
        "hypogammaglobulinemia": YES if low_igg else (NO if igg else UNKNOWN),
        "igg_nadir_mg_dl": f"{min(igg):g}" if igg else UNKNOWN,
        "ig_replacement": YES if any(d.agent == REPLACEMENT and p.first <= course.day_of(d.start) <= p.last
                                     for d in course.drugs) else NO,
        "b_cell_aplasia": YES if aplasia else (NO if _measured(course, ("cd19-b-cells",), p) else UNKNOWN),
        "second_malignancy": YES if cancers else NOT_RECORDED,
        "second_malignancy_lineage": ";".join(sorted({str(e.detail("lineage")) for e in cancers})) or NOT_APPLICABLE,
        "prolonged_cytopenia": cyto,
        "prolonged_cytopenia_max_grade": cyto_grade,
        "infections": str(len(infections)),
    }
