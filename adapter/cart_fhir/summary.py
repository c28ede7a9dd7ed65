"""Per-patient summary of a run: the stderr table and the --summary-json rows (one per episode)."""

from __future__ import annotations

from typing import Any

from .grading.result import State
from .grading.treatments import TreatmentResponse
from .output.resources import iso
from .pipeline import PatientResult, RunResult
from .summary_table import cohort_totals, render_table, table_rows

__all__ = ["cohort_totals", "episode_rows", "missing_inputs", "render_table", "table_rows"]


def episode_rows(result: RunResult) -> list[dict[str, Any]]:
    """One row per episode or event (and one CAR-HEMATOTOX row per infusion), as issue 3 specifies:
    `patient`, `toxicity`, `max_grade`, `onset_day`, `onset`, `resolved`, plus the fields of each type."""
    rows: list[dict[str, Any]] = []
    facts = result.tables.output.toxicities
    for pr in result.patients:
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
                rows.append({**row, **base})
            for tox, score in cr.scores.items():
                row = {"patient": pr.patient.id, "toxicity": tox.value, "score": score.value,
                       "risk": score.interpretation if score.state != State.NOT_ASSESSABLE and score.interpretation
                       else "not-assessable"}
                if row["risk"] == "not-assessable":
                    row["missing"] = list(score.missing)
                rows.append({**row, **base})
    return rows


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
