"""Second primary malignancy after CAR-T, an IAGO long-term effect (Rejeski, Hill, Dahiya, Jain, Nat Med 2025;
grading.md 6.4), with the FDA's 2024 boxed-warning actions for T-cell malignancies (life-long monitoring;
contact the manufacturer; test the tumour for the CAR transgene) and myeloid neoplasms (MDS/AML) flagged.

Combining rules (codes, names and actions are rows of mappings/second-malignancy.yaml; ingest turns a matching
Condition into a ConditionFact of table `second-malignancy`):
- A new malignancy Condition with onset after the infusion is one event with its lineage (t-cell / myeloid /
  other). A malignancy of the same ICD-10-CM category recorded before the infusion is the treated disease
  (relapse), not a second primary: it is left out.
- No CTCAE grade is computed; the AdverseEvent is serious (a malignancy). IAGO attribution is the clinician's:
  the CAR-T causality stays Unassessable (attribution-rules.yaml) and the event is flagged for it.
"""

from __future__ import annotations

from ..model import ConditionFact
from ..tables import MalignancyActionRow, MalignancyTable
from ..timeline import Course
from .result import Assessment, Component, Event, Findings, State, Toxicity

SECOND_MALIGNANCY = Toxicity("second-malignancy")
CODE = "second-malignancy-iago"
TABLE = "second-malignancy"


def _category(code: str) -> str:
    """"http://hl7.org/fhir/sid/icd-10-cm|C84.40" -> "C84"; text matches have no category."""
    system, _, value = code.partition("|")
    return value[:3].upper() if system.endswith("icd-10-cm") else ""


class SecondMalignancyGrader:
    def __init__(self, table: MalignancyTable) -> None:
        self.t = table
        self.label = f"{table.table} v{table.version}"
        self.actions: dict[str, MalignancyActionRow] = {a.lineage: a for a in table.actions}

    def grade(self, course: Course) -> Findings:
        start = course.infusion.when.at
        before = {_category(f.code) for f in course.patient.conditions
                  if f.table == TABLE and f.onset.at < start} - {""}
        events = [self._event(day, f) for day, f in course.conditions
                  if f.table == TABLE and day >= 0 and f.onset.at > start and _category(f.code) not in before]
        return Findings(tuple(e.assessment for e in events if e.assessment is not None), tuple(events))

    def notices(self, found: Findings) -> list[str]:
        return [f"{ev.condition_ref}: {self.actions[str(ev.detail('lineage'))].text}" for ev in found.events
                if str(ev.detail("lineage")) in self.actions]

    def unverified(self, found: Findings) -> list[str]:
        rows = {r.id: r for r in self.t.rows}
        out = []
        for ev in found.events:
            row = rows.get(str(ev.detail("row")))
            if row is not None and not row.verified:
                out.append(f"{self.t.table}:{row.id}")
            action = self.actions.get(str(ev.detail("lineage")))
            if action is not None and not action.verified:
                out.append(f"{self.t.table}:{action.id}")
        return out

    def _event(self, day: int, f: ConditionFact) -> Event:
        lineage = f.attr("lineage", "other")
        reasons = [(f"{f.display} ({f.ref}): new malignancy with onset on day {day} after the infusion, "
                   f"lineage {lineage} ({self.label} row {f.attr('row')})"),
                   "IAGO attribution to the CAR-T product is left to the clinician"]
        flags = ["attribution-by-clinician"]
        action = self.actions.get(lineage)
        if action is not None:
            reasons.append(f"action: {action.text} ({action.source})")
            flags.append(action.flag)
        a = Assessment(SECOND_MALIGNANCY, CODE, State.GRADED, None, f.onset.at, None,
                       components=(Component("malignancy-lineage", "malignancy-lineage", lineage),),
                       evidence=(f.ref,), reasons=tuple(reasons), flags=tuple(flags), table=self.label)
        return Event(SECOND_MALIGNANCY, f.ref, State.GRADED, None, f.onset.at, day,
                     abatement=f.abatement.at if f.abatement else None,
                     resolved_day=None, assessment=a, condition_ref=f.ref,
                     details=(("lineage", lineage), ("row", f.attr("row"))), evidence=(f.ref,), serious=True)
