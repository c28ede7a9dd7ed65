"""Per-patient summary of a run: the stderr table and the --summary-json rows (one per episode)."""

from __future__ import annotations

from typing import Any

from .grading.result import State, Toxicity
from .output.resources import iso
from .pipeline import RunResult


def episode_rows(result: RunResult) -> list[dict[str, Any]]:
    """One row per episode: patient, toxicity, max grade, onset day and time, resolution time."""
    rows: list[dict[str, Any]] = []
    for pr in result.patients:
        for cr in pr.courses:
            for tox in (Toxicity.CRS, Toxicity.ICANS):
                for ep in cr.episodes[tox]:
                    rows.append({
                        "patient": pr.patient.id,
                        "toxicity": tox.value,
                        "max_grade": ep.max_grade,
                        "max_grade_is_lower_bound": ep.max_is_lower_bound,
                        "onset_day": ep.onset_day,
                        "onset": iso(ep.onset),
                        "resolved": iso(ep.abatement) if ep.abatement else None,
                        "resolution_day": ep.resolved_day,
                        "infusion": cr.course.infusion.ref,
                        "infusion_number": cr.course.number,
                        "days_assessed": sum(1 for d in ep.days if d.state != State.NOT_ASSESSABLE),
                    })
    return rows


def table_rows(result: RunResult) -> list[tuple[str, ...]]:
    """Per patient, infusion and toxicity: max grade, onset day, resolution day, days assessed."""
    out: list[tuple[str, ...]] = []
    for pr in result.patients:
        for cr in pr.courses:
            for tox in (Toxicity.CRS, Toxicity.ICANS):
                days = cr.days[tox]
                assessed = sum(1 for d in days if d.state != State.NOT_ASSESSABLE)
                eps = cr.episodes[tox]
                if not eps:
                    graded = [d.grade for d in days if d.grade is not None]
                    shown = "0" if graded else ("n/a" if days else "no data")
                    out.append((pr.patient.id, str(cr.course.number), tox.value, shown, "-", "-", str(assessed)))
                for ep in eps:
                    grade = f">={ep.max_grade}" if ep.max_is_lower_bound else str(ep.max_grade)
                    out.append((pr.patient.id, str(cr.course.number), tox.value, grade, str(ep.onset_day),
                                str(ep.resolved_day) if ep.resolved_day is not None else "ongoing", str(assessed)))
    return out


def render_table(rows: list[tuple[str, ...]]) -> str:
    head = ("patient", "infusion", "toxicity", "max grade", "onset day", "resolution day", "days assessed")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    return "\n".join(lines)
