"""Per-patient summary of a run: the stderr table and the --summary-json rows (one per episode)."""

from __future__ import annotations

from typing import Any

from .grading.result import State
from .grading.treatments import TreatmentResponse
from .output.resources import iso
from .pipeline import RunResult


def episode_rows(result: RunResult) -> list[dict[str, Any]]:
    """One row per episode or event (and one CAR-HEMATOTOX row per infusion), as issue 3 specifies:
    `patient`, `toxicity`, `max_grade`, `onset_day`, `onset`, `resolved`, plus the fields of each type."""
    rows: list[dict[str, Any]] = []
    facts = result.tables.output.toxicities
    for pr in result.patients:
        for cr in pr.courses:
            base = {"infusion": cr.course.infusion.ref, "infusion_number": cr.course.number}
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


def table_rows(result: RunResult) -> list[tuple[str, ...]]:
    """Per patient, infusion and toxicity: max grade, onset day, resolution day, days assessed."""
    out: list[tuple[str, ...]] = []
    facts = result.tables.output.toxicities
    for pr in result.patients:
        for cr in pr.courses:
            for tox in cr.days:
                days = cr.days[tox]
                assessed = sum(1 for d in days if d.state != State.NOT_ASSESSABLE)
                eps = cr.episodes[tox]
                if not eps:
                    graded = [d.grade for d in days if d.grade is not None]
                    shown = "0" if graded else ("n/a" if days else "no data")
                    out.append((pr.patient.id, str(cr.course.number), tox.value, shown, "-", "-", str(assessed), "-"))
                responses = cr.treatments.get(tox)
                for i, ep in enumerate(eps):
                    grade = f">={ep.max_grade}" if ep.max_is_lower_bound else str(ep.max_grade)
                    treated = _treated(responses[i]) if responses is not None else "-"
                    out.append((pr.patient.id, str(cr.course.number), tox.value, grade, str(ep.onset_day),
                                str(ep.resolved_day) if ep.resolved_day is not None else "ongoing", str(assessed),
                                treated))
            for ev in cr.events:
                label = ev.toxicity.value
                detail = facts[ev.toxicity].label_detail
                extra = ev.detail(detail) if detail else None
                if extra:
                    label += f" ({extra})"
                grade = "n/a" if ev.max_grade is None else (f">={ev.max_grade}" if ev.state == State.AT_LEAST
                                                            else str(ev.max_grade))
                out.append((pr.patient.id, str(cr.course.number), label, grade, str(ev.onset_day),
                            str(ev.resolved_day) if ev.resolved_day is not None else "ongoing", "-", "-"))
            for tox, score in cr.scores.items():
                shown = (f"score {score.value} ({score.interpretation})" if score.state != State.NOT_ASSESSABLE
                         and score.value is not None else "n/a")
                out.append((pr.patient.id, str(cr.course.number), tox.value, shown, "-", "-", "-", "-"))
    return out


def _treated(tr: TreatmentResponse) -> str:
    treated = ", ".join(tr.treatments) or "-"
    if tr.first_treatment_day is not None:
        treated += f" (day {tr.first_treatment_day})"
    if tr.steroid_refractory:
        treated += ", steroid-refractory"
    if tr.remission_day is not None:
        treated += f", IDM remission day {tr.remission_day}"
    return treated


def render_table(rows: list[tuple[str, ...]]) -> str:
    head = ("patient", "infusion", "toxicity", "max grade", "onset day", "resolution day", "days assessed",
            "treatments")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    return "\n".join(lines)
