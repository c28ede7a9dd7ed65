"""Registry summary export: one CSV row per CAR-T infusion, columns named after CIBMTR form 4006/4100 questions."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .grading.result import Assessment, Event, State, Toxicity
from .pipeline import CourseResult, PatientResult, RunResult
from .report import RunReport
from .reviews import Review, computed_text, describe
from .summary import episode_rows
from .tables import Tables
from .timeline import Course

# Never a blank cell, never a silent 0 (grading.md decision 2): what is missing says why.
NOT_ASSESSABLE = "not assessable"  # data present, but not enough to decide
UNKNOWN = "unknown"  # no data at all
NOT_APPLICABLE = "not applicable"  # e.g. a CRS date when there was no CRS
NOT_RESOLVED = "not resolved"  # still open at the end of the data
YES, NO = "yes", "no"
NOT_REVIEWED, REFUTED = "not reviewed", "refuted"  # a clinician's review of our results (reviews.py)


def columns(tables: Tables) -> list[str]:
    """Column names, in order (mappings/registry-columns.yaml, parsed and checked with every table)."""
    return [r.column for r in tables.registry_columns.rows]


def registry_rows(pr: PatientResult, tables: Tables,
                  reviews: Mapping[str, Review] | None = None) -> list[dict[str, str]]:
    """One row per infusion course of the patient: every column of the table, every cell a non-empty string.
    `reviews` (RunResult.reviews): a clinician's grade is reported, cart-fhir's computation beside it."""
    by_course: dict[int, list[dict[str, Any]]] = {}
    rxnorm = {p.product: ";".join(p.rxnorm) for p in tables.products.rows}
    names = columns(tables)
    # The per-episode summary already renders episodes, events and the score: the registry row aggregates it.
    for row in episode_rows(RunResult([pr], RunReport(), tables, reviews=dict(reviews or {}))):
        if row.get("infusion_number") is not None:
            by_course.setdefault(row["infusion_number"], []).append(row)
    out = []
    for cr in pr.courses:
        rows = by_course.get(cr.course.number, [])
        row = {"patient_id": pr.patient.id, "infusion_number": str(cr.course.number),
               "f4006_q1_product_name": cr.course.infusion.product or UNKNOWN,
               "product_rxnorm": rxnorm.get(cr.course.infusion.product or "") or UNKNOWN,
               "f4006_q6_infusion_date": cr.course.infusion.day0.isoformat()}
        current = [r for r in rows if "computed" not in r]  # a reviewed result no longer computed: reviews only
        row.update(_crs(cr, current))
        row.update(_icans(cr, current))
        row.update(_computed(cr, current))
        row.update(_iechs(cr, row["f4100_q80_crs"]))
        row.update(_icaht(cr))
        row.update(_hematotox(rows))
        row.update(_events(rows, Toxicity.INFECTION, ("infections", "infection_worst_grade", "infection_kinds"),
                           "type"))
        row.update(_events(rows, Toxicity.NEURO_OTHER, ("neurotoxicity_other", "neurotoxicity_other_worst_grade",
                                                        "neurotoxicity_other_kinds"), "category"))
        row["clinician_reviews"] = _reviews(rows)
        out.append({c: row[c] for c in names})  # KeyError here: a YAML column this module does not fill
    return out


def write_csv(path_or_fh: str | Path | IO[str], rows: Iterable[Mapping[str, str]], tables: Tables) -> None:
    """CSV with a header (always, even with no rows), column order, csv-module quoting, UTF-8, \\r\\n lines."""
    if isinstance(path_or_fh, (str, Path)):
        text = csv_text(rows, tables)  # whole text first: a failing row must not leave half a file behind
        Path(path_or_fh).write_text(text, encoding="utf-8", newline="")
    else:
        path_or_fh.write(csv_text(rows, tables))


def csv_text(rows: Iterable[Mapping[str, str]], tables: Tables, header: bool = True) -> str:
    """The CSV text of these rows; without the header for parts that a streamed run concatenates."""
    return csv_columns_text(rows, columns(tables), header)


def csv_columns_text(rows: Iterable[Mapping[str, str]], names: list[str], header: bool = True) -> str:
    """CSV text with these columns (also the follow-up CSV's, follow_up.py)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="raise")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# ---- CRS and ICANS: episodes and the treatments linked to them ----------------------------------------------


def _crs(cr: CourseResult, rows: list[dict[str, Any]]) -> dict[str, str]:
    eps = [r for r in rows if r["toxicity"] == Toxicity.CRS.value and r.get("review") != REFUTED]
    present = _present(cr, Toxicity.CRS, eps)
    responses = cr.treatments.get(Toxicity.CRS, [])
    agents = {d.ref: d.agent for d in cr.course.drugs}
    toci = sum(1 for tr in responses for ref in tr.treatment_refs if agents.get(ref) == "tocilizumab")
    return {
        "f4100_q80_crs": present,
        "f4100_q82_crs_diagnosis_date": _first_onset(cr.course, eps, present),
        "crs_max_grade": _max_grade(eps, present),
        "crs_resolution_date": _resolution(cr.course, eps, present),
        "crs_last_grade1_date": _last_positive(cr, Toxicity.CRS, present),
        "f4100_q83_crs_therapy_tocilizumab": _yes_no(toci > 0) if present == YES else _absent(present),
        "crs_tocilizumab_doses": str(toci) if present == YES else _absent(present),
        "f4100_q83_crs_therapy_corticosteroids": (_yes_no(any(tr.steroid_days for tr in responses))
                                                  if present == YES else _absent(present)),
    }


def _icans(cr: CourseResult, rows: list[dict[str, Any]]) -> dict[str, str]:
    eps = [r for r in rows if r["toxicity"] == Toxicity.ICANS.value and r.get("review") != REFUTED]
    present = _present(cr, Toxicity.ICANS, eps)
    responses = cr.treatments.get(Toxicity.ICANS, [])
    return {
        "icans": present,
        "icans_diagnosis_date": _first_onset(cr.course, eps, present),
        "icans_max_grade": _max_grade(eps, present),
        "icans_resolution_date": _resolution(cr.course, eps, present),
        "icans_last_grade1_date": _last_positive(cr, Toxicity.ICANS, present),
        "icans_therapy_corticosteroids": (_yes_no(any(tr.steroid_days for tr in responses))
                                          if present == YES else _absent(present)),
    }


def _computed(cr: CourseResult, rows: list[dict[str, Any]]) -> dict[str, str]:
    """CRS and ICANS as cart-fhir computes them, and whether a clinician reviewed their episodes."""
    out = {}
    for tox in (Toxicity.CRS, Toxicity.ICANS):
        mine = [r for r in rows if r["toxicity"] == tox.value]
        computed = [{**r, "max_grade": r["computed_max_grade"],
                     "max_grade_is_lower_bound": r["computed_max_grade_is_lower_bound"]} if "review" in r else r
                    for r in mine]
        out[f"{tox.value}_max_grade_computed"] = _max_grade(computed, _present(cr, tox, computed))
        out[f"{tox.value}_review"] = ";".join(sorted({r["review"] for r in mine if "review" in r})) or NOT_REVIEWED
    return out


def _reviews(rows: list[dict[str, Any]]) -> str:
    """Every reviewed result of the course, the clinician's word first and cart-fhir's beside it."""
    out = []
    for r in rows:
        if "review" not in r:
            continue
        where = f"{r['toxicity']} day {r['onset_day']}" if r.get("onset_day") is not None else str(r["toxicity"])
        ours = r.get("computed") or computed_text(r["computed_max_grade"], r["computed_max_grade_is_lower_bound"])
        out.append(f"{where}: {describe(r['review'], r['max_grade'], ours)}")
    return "; ".join(out) or "none"


def _present(cr: CourseResult, tox: Toxicity, eps: list[dict[str, Any]]) -> str:
    """yes with an episode; no when some day was graded and none reached grade 1; else why we cannot say."""
    if eps:
        return YES
    days = cr.days.get(tox, [])
    if any(d.grade is not None for d in days):
        return NO
    return NOT_ASSESSABLE if days else UNKNOWN


def _first_onset(course: Course, eps: list[dict[str, Any]], present: str) -> str:
    if present != YES:
        return _absent(present)
    return course.date_of(min(r["onset_day"] for r in eps)).isoformat()


def _max_grade(eps: list[dict[str, Any]], present: str) -> str:
    if present != YES:
        return "0" if present == NO else present
    top = max(r["max_grade"] for r in eps)
    # a minimum only when every episode reaching the top grade is itself only proven as a minimum
    lower = all(r["max_grade_is_lower_bound"] for r in eps if r["max_grade"] == top)
    return f">={top}" if lower else str(top)


def _resolution(course: Course, eps: list[dict[str, Any]], present: str) -> str:
    if present != YES:
        return _absent(present)
    last = max(eps, key=lambda r: r["onset_day"])
    day = last["resolution_day"]
    return course.date_of(day).isoformat() if day is not None else NOT_RESOLVED


def _last_positive(cr: CourseResult, tox: Toxicity, present: str) -> str:
    if present != YES:
        return _absent(present)
    days = [d.day for d in cr.days.get(tox, []) if d.positive]
    return cr.course.date_of(max(days)).isoformat()


def _absent(present: str) -> str:
    """A field about an episode that did not happen is not applicable; one we cannot know says why."""
    return NOT_APPLICABLE if present == NO else present


# ---- events beyond CRS/ICANS -----------------------------------------------------------------------------


def _iechs(cr: CourseResult, crs: str) -> dict[str, str]:
    events = [e for e in cr.events if e.toxicity == Toxicity.IEC_HS]
    undecided = [a for a in cr.assessments if a.toxicity == Toxicity.IEC_HS]
    if events:
        first = min(events, key=lambda e: e.onset_day)
        return {"iec_hs": YES, "iec_hs_max_grade": _worst(events),
                "iec_hs_onset_date": cr.course.date_of(first.onset_day).isoformat()}
    # No event and no open assessment: the screen was negative, or not expected without CRS (grading.md 3.3)
    # - unless we could not tell whether there was CRS.
    present = NOT_ASSESSABLE if undecided else (NO if crs in (YES, NO) else crs)
    return {"iec_hs": present, "iec_hs_max_grade": "0" if present == NO else present,
            "iec_hs_onset_date": _absent(present)}


def _icaht(cr: CourseResult) -> dict[str, str]:
    out = {}
    for tox, column in ((Toxicity.ICAHT_EARLY, "icaht_early_grade"), (Toxicity.ICAHT_LATE, "icaht_late_grade")):
        events = [e for e in cr.events if e.toxicity == tox]
        graded: Sequence[Event | Assessment] = events or [a for a in cr.assessments if a.toxicity == tox]
        out[column] = _worst(graded) if graded else UNKNOWN
    return out


def _hematotox(rows: list[dict[str, Any]]) -> dict[str, str]:
    hx = next((r for r in rows if r["toxicity"] == Toxicity.CAR_HEMATOTOX.value), None)
    if hx is None:
        return {"car_hematotox_score": UNKNOWN, "car_hematotox_risk": UNKNOWN}
    if hx["risk"] == "not-assessable" or hx["score"] is None:
        return {"car_hematotox_score": NOT_ASSESSABLE, "car_hematotox_risk": NOT_ASSESSABLE}
    return {"car_hematotox_score": str(hx["score"]), "car_hematotox_risk": str(hx["risk"])}


def _events(rows: list[dict[str, Any]], tox: Toxicity, columns: tuple[str, str, str], kind: str) -> dict[str, str]:
    """Count, worst grade and kinds of the course's infections or other neurological events."""
    mine = [r for r in rows if r["toxicity"] == tox.value]
    count, worst, kinds = columns
    if not mine:
        return {count: "0", worst: NOT_APPLICABLE, kinds: NOT_APPLICABLE}
    graded = [r for r in mine if r["max_grade"] is not None]
    if graded:
        top = max(r["max_grade"] for r in graded)
        lower = all(r["max_grade_is_lower_bound"] for r in graded if r["max_grade"] == top)
        # an event whose grade could not be decided might be worse: say the grade is only a minimum
        shown = f">={top}" if lower or len(graded) < len(mine) else str(top)
    else:
        shown = NOT_ASSESSABLE
    found = sorted({str(r.get(kind)) for r in mine if r.get(kind)})
    return {count: str(len(mine)), worst: shown, kinds: ";".join(found) or UNKNOWN}


def _worst(items: Sequence[Event | Assessment]) -> str:
    """Highest grade of events or assessments; >=n when only a minimum is proven; not assessable when none is."""
    grades = [(_grade(i), i.state) for i in items]
    known = [(g, s) for g, s in grades if g is not None]
    if not known:
        return NOT_ASSESSABLE
    top = max(g for g, _ in known)
    lower = len(known) < len(grades) or all(s == State.AT_LEAST for g, s in known if g == top)
    return f">={top}" if lower else str(top)


def _grade(item: Event | Assessment) -> int | None:
    return item.max_grade if isinstance(item, Event) else item.value


def _yes_no(flag: bool) -> str:
    return YES if flag else NO
