"""Attribution of a toxicity to its suspects: the IAGO "Attribution" step (Rejeski, Hill, Dahiya, Jain,
Nat Med 2025; grading.md 6.4, 0.3, 11.11, 11.12), written as AdverseEvent.suspectEntity (output-contract.md
section 3) with WHO-UMC causality categories (HL7 R4 adverse-event-causality-assess codes).

Combining rules (windows, alternative causes and second suspects are rows of mappings/attribution-rules.yaml):
- The CAR-T infusion is always the first suspect; its assessment is the window row of the toxicity that holds
  the onset day (an onset no row holds is Unassessable-Unclassifiable).
- An alternative cause in the data (an infection Condition or a positive culture within +-N days of onset,
  not abated before it, not itself evidence of the toxicity) lowers that assessment one WHO-UMC step, once,
  however many rules match. It never excludes the toxicity: it is a review hint (11.11).
- Lymphodepleting chemotherapy given in the lookback before the infusion is a second suspect (one per agent)
  for the toxicities a row names.
- Decision 9: these are defaults; only a clinician sets a cause other than the CAR-T course.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ..model import DrugAdmin
from ..tables import Row, Table
from ..timeline import Course
from .result import Toxicity

Causality = Literal["Certain", "Probably-Likely", "Possible", "Unlikely", "Conditional-Classified",
                    "Unassessable-Unclassifiable"]
# WHO-UMC categories that rank, strongest first.
LADDER: tuple[Causality, ...] = ("Certain", "Probably-Likely", "Possible", "Unlikely")
UNASSESSABLE: Causality = "Unassessable-Unclassifiable"
INFECTIONS = "infections"  # ConditionFact.table of infection events (mappings/infections.yaml)


@dataclass(frozen=True)
class Suspect:
    """One AdverseEvent.suspectEntity: the instance, its role, the causality and the rule that decided it."""

    ref: str
    role: str  # "car-t-infusion" | "lymphodepletion"
    assessment: str  # WHO-UMC R4 code (Causality)
    rule: str  # "<table> v<version> rule <id>: ..." naming what decided


class AttributionSettings(Row, frozen=True, kw_only=True):
    ld_lookback_days: int
    culture_concepts: tuple[str, ...]
    culture_negative_values: tuple[str, ...]
    verified: bool
    source: str


class WindowRow(Row, frozen=True, kw_only=True):
    id: str
    toxicity: str
    from_day: int
    to_day: int | None
    assessment: Causality
    verified: bool
    source: str

    def holds(self, day: int) -> bool:
        return self.from_day <= day and (self.to_day is None or day <= self.to_day)


class AlternativeCauseRow(Row, frozen=True, kw_only=True):
    id: str
    toxicity: str
    cause: Literal["infection-condition", "positive-culture"]
    within_days: int
    sites: tuple[str, ...] = ()
    verified: bool
    source: str


class SecondSuspectRow(Row, frozen=True, kw_only=True):
    id: str
    toxicity: str
    role: Literal["lymphodepletion"]
    assessment: Causality
    verified: bool
    source: str


class AttributionRulesTable(Table, frozen=True, kw_only=True):
    settings: AttributionSettings
    windows: tuple[WindowRow, ...]
    alternative_causes: tuple[AlternativeCauseRow, ...]
    second_suspects: tuple[SecondSuspectRow, ...]

    def __post_init__(self) -> None:
        ids = [*(r.id for r in self.windows), *(r.id for r in self.alternative_causes),
               *(r.id for r in self.second_suspects)]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate rule ids {sorted({i for i in ids if ids.count(i) > 1})}")
        for w in self.windows:
            if w.to_day is not None and w.to_day < w.from_day:
                raise ValueError(f"window {w.id}: to_day before from_day")
            for o in self.windows:
                if o is not w and o.toxicity == w.toxicity and o.holds(w.from_day):
                    raise ValueError(f"windows {w.id} and {o.id} overlap")


def lower(assessment: str) -> str:
    """One WHO-UMC step weaker; Unlikely, Conditional and Unassessable stay as they are."""
    if assessment in LADDER[:-1]:
        return LADDER[LADDER.index(assessment) + 1]
    return assessment


class Attributor:
    """The default causality of each suspect of a toxicity, with the rule that decided it."""

    def __init__(self, table: AttributionRulesTable) -> None:
        self.t = table
        self.label = f"{self.t.table} v{self.t.version}"

    def suspects(self, course: Course, toxicity: Toxicity, onset_day: int, onset: datetime,
                 evidence: Sequence[str] = ()) -> list[Suspect]:
        """The CAR-T infusion first, then lymphodepletion where a row names it and the data hold it."""
        tox = str(toxicity)
        return [self._infusion(course, tox, onset_day, onset, frozenset(evidence)), *self._second(course, tox)]

    def _infusion(self, course: Course, tox: str, onset_day: int, onset: datetime,
                  evidence: frozenset[str]) -> Suspect:
        ref = course.infusion.ref
        row = next((w for w in self.t.windows if w.toxicity == tox and w.holds(onset_day)), None)
        if row is None:
            return Suspect(ref, "car-t-infusion", UNASSESSABLE,
                           f"{self.label}: no window for {tox} onset on day {onset_day} -> {UNASSESSABLE}")
        span = f"days {row.from_day}-{row.to_day}" if row.to_day is not None else f"day {row.from_day} on"
        rule = f"{self.label} rule {row.id}: {tox} onset on day {onset_day} ({span}) -> {row.assessment}"
        causes = list(self._alternatives(course, tox, onset_day, onset, evidence))
        if not causes:
            return Suspect(ref, "car-t-infusion", row.assessment, rule)
        lowered = lower(row.assessment)
        rule += "; " + "; ".join(causes) + f" -> {lowered} (one step lower)"
        return Suspect(ref, "car-t-infusion", lowered, rule)

    def _alternatives(self, course: Course, tox: str, onset_day: int, onset: datetime,
                      evidence: frozenset[str]) -> Iterable[str]:
        """Rule text of each alternative cause found: "alternative cause: infection Condition/c1 (...)"."""
        s = self.t.settings
        for row in self.t.alternative_causes:
            if row.toxicity != tox:
                continue
            near = f"rule {row.id}, within +-{row.within_days} days"
            for day, f in course.conditions:
                if f.table != INFECTIONS or f.ref in evidence or abs(day - onset_day) > row.within_days:
                    continue
                if f.abatement is not None and f.abatement.at < onset:
                    continue  # over before the toxicity began
                if row.sites and f.attr("site") not in row.sites:
                    continue
                culture = _resource_type(f.ref) == "Observation"  # a microbiology result the table maps
                if culture == (row.cause == "positive-culture"):
                    what = "positive culture" if culture else "infection"
                    yield f"alternative cause: {what} {f.ref} ({f.display}, day {day}; {near})"
            if row.cause != "positive-culture":
                continue
            # Per toxicity event: only the culture concepts' readings (Course index), not every reading.
            for day, r in course.of_any(s.culture_concepts):
                if (r.ref not in evidence
                        and abs(day - onset_day) <= row.within_days
                        and _positive(r.value, s.culture_negative_values)):
                    yield f"alternative cause: positive culture {r.ref} (day {day}; {near})"

    def _second(self, course: Course, tox: str) -> list[Suspect]:
        out: list[Suspect] = []
        for row in self.t.second_suspects:
            if row.toxicity != tox:
                continue
            by_agent: dict[str, list[DrugAdmin]] = {}
            for d in self._lymphodepletion(course, row.role):
                by_agent.setdefault(d.agent, []).append(d)
            for agent, given in by_agent.items():
                days = [course.day_of(d.start) for d in given]
                span = f"day {days[0]}" if days[0] == days[-1] else f"days {days[0]} to {days[-1]}"
                out.append(Suspect(given[0].ref, row.role, row.assessment,
                                   f"{self.label} rule {row.id}: lymphodepleting chemotherapy {agent} "
                                   f"({len(given)} administration{'s' if len(given) > 1 else ''}, {span}) "
                                   f"-> {row.assessment}"))
        return out

    def _lymphodepletion(self, course: Course, role: str) -> list[DrugAdmin]:
        """Administrations of the role on days -lookback..0 before the infusion, time-ordered, once each."""
        first = -self.t.settings.ld_lookback_days
        seen: dict[str, DrugAdmin] = {}
        for d in (*course.pre_drugs, *course.drugs):
            if (d.role == role and d.ref not in seen and first <= course.day_of(d.start) <= 0
                    and d.start.at <= course.infusion.when.at):
                seen[d.ref] = d
        return sorted(seen.values(), key=lambda d: d.start.at)


def _resource_type(ref: str) -> str:
    """"Observation/o1" or ".../fhir/Observation/o1" -> "Observation"; an id-less key is "Type@location"."""
    parts = ref.split("@", 1)[0].split("/")
    return parts[-2] if len(parts) >= 2 else parts[0]


def _positive(value: object, negatives: tuple[str, ...]) -> bool:
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value not in negatives
