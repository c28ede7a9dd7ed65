"""Treatment-response table (mappings/treatment-response.yaml, grading.md 8): rows, checks, lookups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...errors import ConfigError
from ...tables import DrugRow, Row, Table

ToxName = Literal["crs", "icans"]


class Sourced(Row, frozen=True, kw_only=True):
    verified: bool
    source: str


class AgentRow(Sourced, frozen=True, kw_only=True):
    agent: str
    treats: Literal["crs", "icans", "any"]


class IntrathecalRow(Sourced, frozen=True, kw_only=True):
    route_system: str
    route_code: str
    treats: ToxName
    label: str
    idm_agents: tuple[str, ...]


class ReasonRow(Sourced, frozen=True, kw_only=True):
    system: str
    code: str
    match: Literal["exact", "prefix"]
    toxicity: ToxName

    def matches(self, coding: str) -> bool:
        system, _, code = coding.partition("|")
        # ICD-10-CM codes are compared without the dot (both spellings occur in EHR extracts).
        mine, theirs = self.code.replace(".", ""), code.replace(".", "")
        hit = theirs.startswith(mine) if self.match == "prefix" else theirs == mine
        return system == self.system and hit


class ReasonWindow(Sourced, frozen=True, kw_only=True):
    before_onset_hours: float
    after_resolution_hours: float


class HighDoseRow(Sourced, frozen=True, kw_only=True):
    id: str
    agent: str
    min_mg_per_24h: float
    text: str
    flag: str | None = None  # review hint when this row decides (a documented default was used)


class RefractoryRow(Sourced, frozen=True, kw_only=True):
    id: str
    toxicity: ToxName
    kind: Literal["persists", "second-line"]
    text: str
    min_grade: int | None = None  # persists
    hours: float | None = None  # persists
    agents: tuple[str, ...] = ()  # second-line
    after: tuple[str, ...] = ()  # second-line: only these steroids count as "steroids first"
    min_mg_per_24h: float | None = None  # second-line: only a dose reaching this 24-h total


class ImprovementRule(Sourced, frozen=True, kw_only=True):
    drop: int
    baseline_days_before: int


class RemissionRow(Sourced, frozen=True, kw_only=True):
    id: str
    baseline_min: int
    baseline_max: int
    target: Literal["grade-at-most", "ice-score", "capd-score"]
    value: int
    text: str


class RemissionRules(Row, frozen=True, kw_only=True):
    baseline_days_before: int
    rows: tuple[RemissionRow, ...]


class DoseLimitRow(Sourced, frozen=True, kw_only=True):
    id: str
    agent: str
    max_doses: int
    window_hours: float | None = None
    flag: str


class TreatmentTable(Table, frozen=True, kw_only=True):
    definition_version: str
    agents: tuple[AgentRow, ...]
    intrathecal: IntrathecalRow
    dose_unit: str
    reasons: tuple[ReasonRow, ...]
    reason_window: ReasonWindow
    high_dose: tuple[HighDoseRow, ...]
    refractory: tuple[RefractoryRow, ...]
    improvement: ImprovementRule
    remission: RemissionRules
    dose_limits: tuple[DoseLimitRow, ...]




def check_treatment_table(t: TreatmentTable, drugs: dict[str, DrugRow]) -> None:
    """Start-up check (habit 4): agents are drugs.yaml rows, steroids have a dexamethasone factor."""
    name = "treatment-response.yaml"
    agents = {r.agent: r for r in t.agents}
    named = {*agents, *t.intrathecal.idm_agents, *(r.agent for r in t.high_dose),
             *(r.agent for r in t.dose_limits)}
    unknown = sorted(a for a in named if a not in drugs)
    if unknown:
        raise ConfigError(f"{name}: agents not in drugs.yaml: {unknown}")
    labels = {*agents, t.intrathecal.label}
    for r in t.refractory:
        if not set(r.agents) | set(r.after) <= labels:
            raise ConfigError(f"{name}: refractory row {r.id} names an unknown agent")
        if (r.kind == "persists") != (r.min_grade is not None and r.hours is not None) or \
                (r.kind == "second-line") != bool(r.agents):
            raise ConfigError(f"{name}: refractory row {r.id}: persists needs min_grade and hours, "
                              "second-line needs agents")
    for a in agents:
        if drugs[a].role == "corticosteroid" and drugs[a].dex_equivalent is None:
            raise ConfigError(f"{name}: corticosteroid {a} has no dex_equivalent in drugs.yaml")


@dataclass(frozen=True, slots=True)
class Lookups:
    """The treatment table with the drug rows it is checked against, indexed once per analyzer."""

    t: TreatmentTable
    drugs: dict[str, DrugRow]  # drugs.yaml rows by agent
    agents: dict[str, AgentRow]  # treatment agents by name
    capd_max_age: int  # decision 6: CAPD, not ICE, up to this age (years)
