"""Result types shared by the graders: a day's grade with its state, drivers and evidence; an episode."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import ClassVar

import msgspec


class Toxicity(str):
    """A toxicity's name: its summary-row `toxicity` and its key in mappings/output-codes.yaml `toxicities`.

    An open set, not an Enum: a grader added to the registry (grading/registry.py) names its own toxicity
    without editing this module. The constants below are the toxicities the shipped graders produce; the
    CodeSystem cart-toxicity carries `icaht` for both ICAHT rows (output-codes.yaml `code`).
    """

    __slots__ = ()

    CRS: ClassVar[Toxicity]
    ICANS: ClassVar[Toxicity]
    IEC_HS: ClassVar[Toxicity]
    ICAHT_EARLY: ClassVar[Toxicity]
    ICAHT_LATE: ClassVar[Toxicity]
    INFECTION: ClassVar[Toxicity]
    NEURO_OTHER: ClassVar[Toxicity]
    CAR_HEMATOTOX: ClassVar[Toxicity]  # a pre-infusion risk score, not a toxicity; reported per infusion

    @property
    def value(self) -> str:
        """The plain string (the name an Enum member would carry as its value)."""
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Toxicity({str.__repr__(self)})"


Toxicity.CRS = Toxicity("crs")
Toxicity.ICANS = Toxicity("icans")
Toxicity.IEC_HS = Toxicity("iec-hs")
Toxicity.ICAHT_EARLY = Toxicity("icaht-early")
Toxicity.ICAHT_LATE = Toxicity("icaht-late")
Toxicity.INFECTION = Toxicity("infection")
Toxicity.NEURO_OTHER = Toxicity("neurotoxicity-other")
Toxicity.CAR_HEMATOTOX = Toxicity("car-hematotox")


class State(str, Enum):
    """grading.md decision 2 / section 0.2: a grade, a proven minimum, or not assessable (never a silent 0)."""

    GRADED = "graded"
    AT_LEAST = "at-least"
    NOT_ASSESSABLE = "not-assessable"


class Component(msgspec.Struct, frozen=True, gc=False):
    """One domain driver of a day's grade. `kind` tells the writer how to render `value`.

    kind: "celsius" (float), "boolean", "integer", or an answer-list name ("hypotension-tier",
    "oxygen-tier", "consciousness-level", "seizure-type", "motor-finding", "cerebral-edema-finding").

    A frozen msgspec Struct, not a frozen dataclass: about five are built per graded day (CRS four, ICANS
    one or more), and a Struct builds ~8x faster with the same attribute API, equality, hash and repr, as
    model.Reading. gc=False: it holds strings and numbers only.
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


@dataclass(frozen=True, slots=True)
class Assessment:
    """A graded or scored assessment that is not a daily grade: an ICAHT grade over a window, the
    CAR-HEMATOTOX score, an infection's or neurological event's CTCAE grade, the IEC-HS grade.
    Written as one Observation (code = `code` in cart-toxicity)."""

    toxicity: Toxicity
    code: str  # cart-toxicity assessment code: icaht-grade-early, car-hematotox-score, iec-hs-grade, ...
    state: State
    value: int | None  # grade or score; None when not assessable
    start: datetime  # effectiveDateTime, or effectivePeriod.start when `end` is given
    end: datetime | None = None
    interpretation: str | None = None  # e.g. CAR-HEMATOTOX "low" / "high"
    components: tuple[Component, ...] = ()
    evidence: tuple[str, ...] = ()
    supporting: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    table: str = ""  # criteria table id and version, e.g. "eha-ebmt-icaht-2023 v1"


@dataclass(frozen=True, slots=True)
class Event:
    """An adverse event beyond CRS/ICANS (IEC-HS, ICAHT, an infection, a non-ICANS neurological event).

    Written as an AdverseEvent, with a Condition of our own unless `condition_ref` names the input
    Condition that already records it (infections and neurological events are diagnosed upstream).
    """

    toxicity: Toxicity
    key: str  # unique within the course and toxicity (e.g. the input Condition key, "early", "late")
    state: State
    max_grade: int | None  # None: the grade cannot be decided from the data (named in assessment.missing)
    onset: datetime
    onset_day: int
    abatement: datetime | None = None
    resolved_day: int | None = None
    assessment: Assessment | None = None  # the Observation carrying the grade
    condition_ref: str | None = None  # the input Condition that records the event, if any
    term: tuple[str, str, str] | None = None  # (system, code, display): NCIt / CTCAE term of the event
    details: tuple[tuple[str, object], ...] = ()  # summary extras: window, type, prophylaxis, category, ...
    evidence: tuple[str, ...] = ()  # input resources that show the event
    serious: bool | None = None  # AdverseEvent.seriousness when no grade decides it (a new malignancy)

    def detail(self, name: str, default: object = None) -> object:
        return dict(self.details).get(name, default)


@dataclass(frozen=True, slots=True)
class Findings:
    """What a grader beyond CRS/ICANS returns for one course: assessments (each one Observation; also the
    not-assessable ones, with the missing input named) and events (each one AdverseEvent)."""

    assessments: tuple[Assessment, ...] = ()
    events: tuple[Event, ...] = ()


def not_measured(at: datetime, toxicity: Toxicity, code: str, table: str, missing: str) -> Assessment:
    """The not-assessable result of a grader whose input was never measured in its window (decision 2: never a
    silent grade 0 or "none"); dated `at` (the infusion), naming the missing input."""
    return Assessment(toxicity, code, State.NOT_ASSESSABLE, None, at, missing=(missing,),
                      reasons=(f"not assessable: no {missing} in the record",), table=table)
