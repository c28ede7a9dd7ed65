"""Non-ICANS neurotoxicity after CAR-T, graded with CTCAE v5.0 terms (grading.md section 7; NCI CTCAE v5.0,
27 Nov 2017, Nervous system disorders; Van Oekelen et al., Nat Med 2021;27:2099; Diorio et al., Blood
2024;144:1387).

Combining rules (codes, CTCAE terms and grade rows are data in mappings/neurotoxicity-other.yaml and
mappings/neurotoxicity-grading.yaml):
- 7.2: a coded non-ICANS neurological Condition with onset on day >= 0 is one event, with its category and
  CTCAE term. It is never folded into ICANS: an ICANS episode on the same days is reported too (flagged).
- Decision 7 (revised), 11.13: deep focal motor weakness is ICANS (grading/icans.py) unless a clinician
  diagnoses another cause; a clinician-diagnosed myelitis, GBS or cord compression is a coded Condition here
  (category gbs / myelopathy-paraparesis) and stays a non-ICANS event. The earlier motor-weakness event (motor
  weakness outside an encephalopathic episode) is withdrawn with the rule it came from.
- 7.2 grading: ADL impact is not computable. Condition.severity mild / moderate / severe gives grade 1 / 2 / 3
  (approximate rows, verified: false); GBS with mechanical ventilation during the event gives 4 (CTCAE GBS
  grade 4: intubation); otherwise the grade is not assessable, with the missing input named.
- Decision 2: grade 5 is never assigned; a recorded death after onset is flagged for attribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from ..model import ConditionFact
from ..tables import Row, Table
from ..timeline import Course
from .result import Assessment, DayGrade, Episode, Event, Findings, State, Toxicity

NEURO_TABLE = "neurotoxicity-other"  # ConditionFact.table of the coded events (neurotoxicity-other.yaml)
ASSESSMENT_CODE = "neurotoxicity-grade-ctcae"  # output-contract.md, cart-toxicity assessment codes
MISSING = "functional status (ADL impact) or Condition.severity"
Category = Literal["movement-disorder", "cranial-neuropathy", "peripheral-neuropathy", "gbs",
                   "myelopathy-paraparesis", "other"]


class SeverityGradeRow(Row, frozen=True, kw_only=True):
    system: str
    code: str
    display: str
    grade: Annotated[int, msgspec.Meta(ge=1, le=3)]
    verified: bool
    source: str


class SupportGradeRow(Row, frozen=True, kw_only=True):
    id: str
    category: Category
    device: str  # an oxygen-delivery code (mappings/concepts.yaml)
    grade: Annotated[int, msgspec.Meta(ge=1, le=4)]
    verified: bool
    source: str


class NeuroGradingTable(Table, frozen=True, kw_only=True):
    ncit_system: str
    severity: tuple[SeverityGradeRow, ...]
    support: tuple[SupportGradeRow, ...]

    def __post_init__(self) -> None:
        codes = [r.code for r in self.severity]
        ids = [r.id for r in self.support]
        if len(set(codes)) != len(codes) or len(set(ids)) != len(ids):
            raise ValueError("duplicate severity code or support id")


class NeuroOtherGrader:
    """Finds the non-ICANS neurological events of one course and pre-fills their CTCAE grade."""

    def __init__(self, table: NeuroGradingTable) -> None:
        self.t = table
        self.severity = {r.code: r for r in self.t.severity}
        self.label = f"{self.t.table} v{self.t.version}"

    def grade(self, course: Course, icans_days: Sequence[DayGrade],
              icans_episodes: Sequence[Episode]) -> Findings:
        events = [self._condition_event(course, day, f, icans_episodes)
                  for day, f in course.conditions if f.table == NEURO_TABLE and day >= 0]
        events.sort(key=lambda e: (e.onset, e.key))
        return Findings(tuple(e.assessment for e in events if e.assessment is not None), tuple(events))

    # ---- coded Conditions (7.1, 7.2) -----------------------------------------------------------

    def _condition_event(self, course: Course, day: int, f: ConditionFact, icans: Sequence[Episode]) -> Event:
        category, term = f.attr("category", "other"), f.attr("ctcae_term")
        end_day = course.day_of(f.abatement) if f.abatement is not None else None
        reasons = [(f"{f.display} (Condition, onset day {day}): non-ICANS neurotoxicity, category {category}, "
                    f"CTCAE term {term} (grading.md 7.1)")]
        flags = ["attribution-unconfirmed", "category-unconfirmed"]  # 7.2: a clinician confirms the category
        overlapping = [ep for ep in icans
                       if ep.onset_day <= day and (ep.resolved_day is None or day < ep.resolved_day)]
        if overlapping:
            # Never folded into ICANS (7.2): both are reported; a clinician decides what belongs to ICANS.
            flags.append("icans-on-same-days")
            reasons.append(f"ICANS episode {overlapping[0].number} is active on day {day}: both are reported")
        assessment = self._assess(course, category, term, f.severity, day, end_day, f.onset.at,
                                  f.abatement.at if f.abatement else None, (f.ref,), reasons, flags)
        ncit = f.attr("ncit")
        return Event(Toxicity.NEURO_OTHER, f.ref, assessment.state, assessment.value, f.onset.at, day,
                     abatement=f.abatement.at if f.abatement else None, resolved_day=end_day,
                     assessment=assessment, condition_ref=f.ref,
                     term=(self.t.ncit_system, ncit, term) if ncit else None,
                     details=(("category", category), ("ctcae_term", term)), evidence=(f.ref,))

    # ---- the CTCAE grade where the data allow (7.2) --------------------------------------------

    def _assess(self, course: Course, category: str, term: str, severity: str | None, day: int,
                end_day: int | None, onset: datetime, abatement: datetime | None, refs: tuple[str, ...],
                reasons: list[str], flags: list[str]) -> Assessment:
        grades: list[int] = []
        evidence = list(refs)
        sev = self.severity.get(severity or "")
        if sev is not None:
            grades.append(sev.grade)
            flags.append("grade-from-condition-severity")
            reasons.append(f"Condition.severity {sev.display} -> CTCAE grade {sev.grade} (approximate: CTCAE "
                           "grades by ADL impact, which the data do not record)")
        elif severity:
            flags.append("condition-severity-not-mapped")
            reasons.append(f"Condition.severity code {severity} is not in {self.label}: not used")
        for row in self.t.support:
            if row.category != category:
                continue
            support = [(d, r) for d, r in course.of("oxygen-device")
                       if r.value == row.device
                       and day <= d and (end_day is None or d <= end_day)]
            if support:
                grades.append(row.grade)
                evidence.extend(r.ref for _, r in support[:3])
                reasons.append(f"{row.device.replace('-', ' ')} on day {support[0][0]} during the event -> "
                               f"CTCAE {term} grade {row.grade} ({self.label} rule {row.id})")
        deceased = course.patient.deceased
        if deceased is not None and course.day_of(deceased) >= day:
            flags.append("death-unattributed")  # decision 2: grade 5 only from a clinician-entered cause
            reasons.append(f"patient died on day {course.day_of(deceased)}: grade 5 needs a "
                           "clinician-entered cause of death")
        missing: tuple[str, ...] = ()
        if grades:
            state, value = State.GRADED, max(grades)
        else:
            state, value, missing = State.NOT_ASSESSABLE, None, (MISSING,)
            reasons.append(f"CTCAE {term} grades by ADL impact: not computable without {MISSING} "
                           "(grading.md 7.2)")
        return Assessment(Toxicity.NEURO_OTHER, ASSESSMENT_CODE, state, value, onset, abatement,
                          evidence=tuple(dict.fromkeys(evidence)), missing=missing, reasons=tuple(reasons),
                          flags=tuple(dict.fromkeys(flags)), table=self.label)
