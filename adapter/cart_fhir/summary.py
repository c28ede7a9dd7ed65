"""Per-patient summary of a run: the stderr table and the --summary-json rows (one per episode)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .grading.result import State
from .grading.treatments import TreatmentResponse
from .model import Moment
from .output.resources import iso
from .pipeline import PatientResult, RunResult
from .reviews import Review, episode_key, event_key, unmatched
from .summary_table import cohort_totals, render_table, table_rows
from .timeline import Course

__all__ = ["cohort_totals", "episode_rows", "missing_inputs", "render_table", "table_rows"]


def episode_rows(result: RunResult) -> list[dict[str, Any]]:
    """One row per episode or event (and one CAR-HEMATOTOX row per infusion), as issue 3 specifies:
    `patient`, `toxicity`, `max_grade`, `onset_day`, `onset`, `resolved`, plus the fields of each type.
    A result a clinician reviewed (reviews.py) shows their grade, with `review`, `reviewed_result` and
    `computed_max_grade` (cart-fhir's) beside it; a reviewed result no longer computed still has its row."""
    rows: list[dict[str, Any]] = []
    facts = result.tables.output.toxicities
    for pr in result.patients:
        matched: set[str] = set()
        for n, cr in enumerate(pr.courses):
            base = {"infusion": cr.course.infusion.ref, "infusion_number": cr.course.number,
                    "missing_inputs": missing_inputs(pr, n)}
            for tox in cr.days:  # the daily-graded toxicities, in registry order
                responses = cr.treatments.get(tox)
                for i, ep in enumerate(cr.episodes[tox]):
                    episode: dict[str, Any] = {
                        "patient": pr.patient.id,
                        "toxicity": tox.value,
                        "max_grade": ep.max_grade,
                        "max_grade_is_lower_bound": ep.max_is_lower_bound,
                        "onset_day": ep.onset_day,
                        "onset": iso(ep.onset),
                        "resolved": iso(ep.abatement) if ep.abatement else None,
                        "resolution_day": ep.resolved_day,
                        "days_assessed": sum(1 for d in ep.days if d.state != State.NOT_ASSESSABLE),
                    }
                    if responses is not None:
                        episode.update(_treatment_fields(responses[i]))
                    # Episode labels the grader put on its days as components (ICANS phenotype, ...).
                    labels = {c.code: c.value for c in ep.max_day.components}
                    episode.update((name.replace("-", "_"), labels.get(name)) for name in facts[tox].summary_details)
                    if result.reviews:
                        _reviewed(episode, result.reviews.get(episode_key(cr.course, ep, result.tables)), matched)
                    rows.append({**episode, **base})
            for ev in cr.events:
                row: dict[str, Any] = {
                    "patient": pr.patient.id,
                    "toxicity": ev.toxicity.value,
                    "max_grade": ev.max_grade,
                    "max_grade_is_lower_bound": ev.state == State.AT_LEAST,
                    "onset_day": ev.onset_day,
                    "onset": iso(ev.onset),
                    "resolved": iso(ev.abatement) if ev.abatement else None,
                    "resolution_day": ev.resolved_day,
                }
                if ev.max_grade is None and ev.assessment is not None and ev.assessment.missing:
                    row["missing"] = list(ev.assessment.missing)
                row.update((name, ev.detail(name)) for name in facts[ev.toxicity].summary_details)
                if result.reviews and ev.condition_ref is None:  # only our own event Conditions are reviewable
                    _reviewed(row, result.reviews.get(event_key(cr.course, ev)), matched)
                rows.append({**row, **base})
            for tox, score in cr.scores.items():
                row = {"patient": pr.patient.id, "toxicity": tox.value, "score": score.value,
                       "risk": score.interpretation if score.state != State.NOT_ASSESSABLE and score.interpretation
                       else "not-assessable"}
                if row["risk"] == "not-assessable":
                    row["missing"] = list(score.missing)
                rows.append({**row, **base})
        if result.reviews:
            rows.extend(_no_longer_computed(pr, unmatched(result.reviews, matched, pr.patient.key)))
    return rows


NO_LONGER = "cart-fhir no longer computes it from the current data"


def _reviewed(row: dict[str, Any], review: Review | None, matched: set[str]) -> None:
    """The clinician's grade in `max_grade` (none when refuted), cart-fhir's beside it."""
    if review is None:
        return
    matched.add(review.key)
    row["computed_max_grade"] = row["max_grade"]
    row["computed_max_grade_is_lower_bound"] = row["max_grade_is_lower_bound"]
    row["max_grade"] = review.shown_grade
    row["max_grade_is_lower_bound"] = False  # the clinician's grade is a grade, not a proven minimum
    row["review"] = review.verdict.value
    row["reviewed_result"] = review.ref


def _no_longer_computed(pr: PatientResult, reviews: list[Review]) -> list[dict[str, Any]]:
    """A reviewed result of ours that the current data no longer produce: the clinician's word stands, shown
    on the course its onset falls in."""
    out = []
    for review in reviews:
        course = _course_at(pr, review.onset)
        row: dict[str, Any] = {"patient": pr.patient.id, "toxicity": review.toxicity, "max_grade": review.shown_grade,
                               "max_grade_is_lower_bound": False, "onset_day": None, "onset": review.onset,
                               "resolved": None, "resolution_day": None, "computed_max_grade": None,
                               "computed_max_grade_is_lower_bound": False,
                               "computed": NO_LONGER, "review": review.verdict.value,
                               "reviewed_result": review.ref}
        if course is not None:
            row.update(infusion=course.infusion.ref, infusion_number=course.number)
            if review.onset is not None:
                try:
                    row["onset_day"] = course.day_of(Moment(datetime.fromisoformat(review.onset)))
                except (TypeError, ValueError):
                    pass  # an onset the clinician left unreadable: no day
        out.append(row)
    return out


def _course_at(pr: PatientResult, onset: str | None) -> Course | None:
    """The course whose infusion came last before `onset` (the first course when it cannot be placed)."""
    courses = [cr.course for cr in pr.courses]
    if not courses:
        return None
    try:
        at = datetime.fromisoformat(onset) if onset else None
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        return courses[0]
    before = [c for c in courses if c.owns(Moment(at))]
    return before[-1] if before else courses[0]


def missing_inputs(pr: PatientResult, course: int) -> list[str]:
    """The inputs the graders read that course `course` had no usable reading of in days 0-14
    (mappings/coverage.yaml groups; every one when the course has no reading in the window at all)."""
    if course >= len(pr.missing):
        return []
    gaps = pr.missing[course]
    return ["no reading in the window"] if gaps is None else list(gaps)


def _treatment_fields(tr: TreatmentResponse) -> dict[str, Any]:
    """What a daily-graded episode's row says of its treatment and response (grading.md section 8)."""
    return {
        "treatments": list(tr.treatments),
        "first_treatment_day": tr.first_treatment_day,
        "hours_to_first_treatment": _round(tr.hours_onset_to_first_treatment),
        "dexamethasone_equivalent_mg": _round(tr.dexamethasone_equivalent_mg),
        "steroid_refractory": tr.steroid_refractory,
        "remission_day": tr.remission_day,
        "hours_to_remission": _round(tr.hours_to_remission),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
