"""Daily grades to episodes: shared by every toxicity (output-contract.md section 2, grading.md 1.5 / 11.7)."""

from __future__ import annotations

from collections.abc import Sequence

from .result import DayGrade, Episode, State, Toxicity


def episodes(toxicity: Toxicity, days: Sequence[DayGrade]) -> list[Episode]:
    """An episode runs from the first day with grade >= 1 to the first later day graded 0.

    A not-assessable day, or a day with no data, does not end it; the abatement is the start of the
    grade-0 day (output-contract.md section 2, clinicalStatus). A later grade >= 1 opens a new episode.
    """
    out: list[Episode] = []
    current: list[DayGrade] = []

    def close(resolved: DayGrade | None) -> None:
        positives = [d for d in current if d.positive]
        top = max(d.grade for d in positives if d.grade is not None)
        first_max = next(d for d in positives if d.grade == top)
        lower = all(d.state == State.AT_LEAST for d in positives if d.grade == top)
        first = current[0]
        out.append(Episode(
            toxicity=toxicity, number=len(out) + 1, days=tuple(current),
            onset=first.onset or first.window[0], onset_day=first.day,
            max_grade=top, max_day=first_max, max_is_lower_bound=lower,
            resolved_day=resolved.day if resolved else None,
            abatement=resolved.window[0] if resolved else None))

    for d in sorted(days, key=lambda d: d.day):
        if not current:
            if d.positive:
                current = [d]
            continue
        if d.state == State.GRADED and d.grade == 0:
            close(d)
            current = []
        else:
            current.append(d)
    if current:
        close(None)
    return out
