"""IEC-HS criteria table (mappings/astct-iechs-2023.yaml, grading.md 3): rows, start-up check, lookups."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, get_args

from ...errors import ConfigError
from ...tables import Row, Table

TABLE_FILE = "astct-iechs-2023.yaml"
OXYGEN_SYSTEM = "https://cart-fhir.org/fhir/CodeSystem/oxygen-delivery"

SettingKey = Literal["first-screen-day", "concurrence-hours", "baseline-lookback-days",
                     "support-lookback-hours"]
FerritinKey = Literal["ferritin-uln", "ferritin-baseline", "ferritin-doubling"]
TimingKey = Literal["crs-onset-phase", "timing-crs-resolving", "timing-after-crs", "timing-reworsening",
                    "timing-no-crs"]


# ---- the table (mappings/astct-iechs-2023.yaml) ---------------------------------------------------

class Setting(Row, frozen=True, kw_only=True):
    value: float
    unit: str
    verified: bool
    source: str


class FerritinRule(Row, frozen=True, kw_only=True):
    key: FerritinKey
    factor: float
    enabled: bool
    require_above_uln: bool = False
    within_hours: float | None = None
    verified: bool
    source: str


class TransaminaseRule(Row, frozen=True, kw_only=True):
    key: Literal["transaminases"]
    concepts: tuple[str, ...]
    factor_uln: float
    factor_baseline: float
    verified: bool
    source: str


class FibrinogenRule(Row, frozen=True, kw_only=True):
    key: Literal["fibrinogen"]
    below_mg_dl: float
    below_lln: bool
    verified: bool
    source: str


class CytopeniaRule(Row, frozen=True, kw_only=True):
    key: Literal["cytopenia"]
    concepts: tuple[str, ...]
    new_grade_at_least: int
    worsening_grades: int
    prior_hours: float
    verified: bool
    source: str


class CtcaeBand(Row, frozen=True, kw_only=True):
    concept: str
    grade: int
    below: float | None  # None: below the lower limit of normal
    unit: str
    verified: bool
    source: str


class DefaultLimit(Row, frozen=True, kw_only=True):
    concept: str
    bound: Literal["low", "high"]
    value: float
    unit: str
    verified: bool
    source: str


class TimingRule(Row, frozen=True, kw_only=True):
    key: TimingKey
    enabled: bool
    days: int | None = None
    concepts: tuple[str, ...] = ()
    fall_fraction: float | None = None
    rise_fraction: float | None = None
    verified: bool
    source: str


class GradeRule(Row, frozen=True, kw_only=True):
    key: str
    kind: Literal["screen", "drug", "oxygen", "creatinine"]
    grade: int
    agents: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    exclude_routes: tuple[str, ...] = ()
    factor: float | None = None
    flag: str | None = None  # review flag raised when the rule is met
    verified: bool
    source: str


class IecHsTable(Table, frozen=True, kw_only=True):
    settings: dict[SettingKey, Setting]
    ferritin_rules: tuple[FerritinRule, ...]
    transaminases: TransaminaseRule
    fibrinogen: FibrinogenRule
    cytopenia: CytopeniaRule
    ctcae_bands: tuple[CtcaeBand, ...]
    default_limits: tuple[DefaultLimit, ...]
    timing: tuple[TimingRule, ...]
    grade_rules: tuple[GradeRule, ...]
    inputs: dict[Literal["ferritin", "second-criterion"], str]


def check_table(t: IecHsTable, oxygen_devices: Collection[str]) -> None:
    """Start-up checks (house style habit 4): every rule present once, grades 1-4, bands from grade 1,
    oxygen devices among `oxygen_devices` (the oxygen-delivery codes of mappings/concepts.yaml). Raises
    ConfigError naming the table."""
    def fail(msg: str) -> None:
        raise ConfigError(f"{TABLE_FILE}: {msg}")

    def once(name: str, keys: list[str], expected: set[str]) -> None:
        if len(keys) != len(set(keys)) or set(keys) != expected:
            fail(f"{name} needs each of {sorted(expected)} exactly once, got {keys}")
    once("settings", list(t.settings), set(get_args(SettingKey)))
    once("ferritin_rules", [r.key for r in t.ferritin_rules], set(get_args(FerritinKey)))
    once("timing", [r.key for r in t.timing], set(get_args(TimingKey)))
    once("grade_rules", [r.key for r in t.grade_rules], {r.key for r in t.grade_rules})
    kinds = [r.kind for r in t.grade_rules]
    if kinds.count("screen") != 1 or any(not 1 <= r.grade <= 4 for r in t.grade_rules):
        fail("grade_rules need one 'screen' row and grades 1-4 only (grade 5 is never suggested)")
    for c in t.cytopenia.concepts:
        if sorted(b.grade for b in t.ctcae_bands if b.concept == c)[:1] != [1]:
            fail(f"ctcae_bands: {c} needs bands from grade 1")
    timing = {r.key: r for r in t.timing}
    rew = timing["timing-reworsening"]
    if timing["timing-after-crs"].days is None or rew.fall_fraction is None or rew.rise_fraction is None:
        fail("timing-after-crs needs days; timing-reworsening needs fall_fraction and rise_fraction")
    unknown = {d for r in t.grade_rules for d in r.devices} - set(oxygen_devices)
    if unknown:
        fail(f"grade_rules name unknown oxygen devices {sorted(unknown)}")


@dataclass(frozen=True, slots=True)
class Lookups:
    """The table indexed once for the rules that read it: setting values, timing rules by key, CTCAE bands
    per concept (most severe first), default reference limits, and the grade of a positive screen."""

    t: IecHsTable
    settings: dict[SettingKey, float]
    timing: dict[str, TimingRule]
    bands: dict[str, list[CtcaeBand]]
    defaults: dict[tuple[str, str], float]
    screen_grade: int

    @classmethod
    def of(cls, t: IecHsTable) -> Lookups:
        return cls(t, {k: v.value for k, v in t.settings.items()}, {r.key: r for r in t.timing},
                   {c: sorted((b for b in t.ctcae_bands if b.concept == c), key=lambda b: -b.grade)
                    for c in t.cytopenia.concepts},
                   {(d.concept, d.bound): d.value for d in t.default_limits},
                   next(r.grade for r in t.grade_rules if r.kind == "screen"))
