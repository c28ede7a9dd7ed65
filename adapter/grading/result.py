"""Result types shared by the graders: a day's grade with its state, drivers and evidence; an episode."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum


class Toxicity(str, Enum):
    CRS = "crs"
    ICANS = "icans"


class State(str, Enum):
    """grading.md decision 2 / section 0.2: a grade, a proven minimum, or not assessable (never a silent 0)."""

    GRADED = "graded"
    AT_LEAST = "at-least"
    NOT_ASSESSABLE = "not-assessable"


@dataclass(frozen=True, slots=True)
class Component:
    """One domain driver of a day's grade. `kind` tells the writer how to render `value`.

    kind: "celsius" (float), "boolean", "integer", or an answer-list name ("hypotension-tier",
    "oxygen-tier", "consciousness-level", "seizure-type", "motor-finding", "cerebral-edema-finding").
    """

    code: str
    kind: str
    value: float | int | bool | str
    grade: int | None = None  # the grade this domain alone gives


@dataclass(frozen=True, slots=True)
class DayGrade:
    toxicity: Toxicity
    day: int
    state: State
    grade: int | None  # GRADED: the grade; AT_LEAST: the proven minimum; NOT_ASSESSABLE: None
    onset: datetime | None  # earliest finding with grade >= 1 that day
    window: tuple[datetime, datetime]
    components: tuple[Component, ...] = ()
    evidence: tuple[str, ...] = ()  # input Observations / Conditions that set the grade
    supporting: tuple[str, ...] = ()  # MedicationAdministrations used (vasopressors, fever-masking drugs)
    missing: tuple[str, ...] = ()  # inputs whose absence keeps the grade open
    reasons: tuple[str, ...] = ()  # why, in words a clinician reads
    flags: tuple[str, ...] = ()  # review hints: attribution-unconfirmed, vasopressin-only, ...

    @property
    def positive(self) -> bool:
        return self.grade is not None and self.grade >= 1


@dataclass(frozen=True, slots=True)
class Episode:
    """A contiguous toxicity episode (output-contract.md section 2): first day >= 1 to the next grade-0 day."""

    toxicity: Toxicity
    number: int
    days: tuple[DayGrade, ...]  # every graded day of the episode, not-assessable days included
    onset: datetime
    onset_day: int
    max_grade: int
    max_day: DayGrade
    max_is_lower_bound: bool  # the maximum is only proven as a minimum (missing data could raise it)
    resolved_day: int | None
    abatement: datetime | None
