"""Load and check the criteria and code tables in mappings/ once, at start-up (house style habit 4)."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import orjson
import yaml

from .constants import CS_OXYGEN, cs
from .errors import ConfigError
from .table_ids import check_row_ids


def mappings_dir() -> Path:
    """The mappings folder: inside the installed wheel, else beside the package in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_data" / "mappings", here.parent.parent / "mappings"):
        if (candidate / "concepts.yaml").is_file():
            return candidate
    raise ConfigError(f"mapping tables not found (looked in {here / '_data' / 'mappings'} and "
                      f"{here.parent.parent / 'mappings'})")


# Table rows are msgspec Structs, not pydantic models (issue 18): a file run then imports no pydantic, and
# building and validating the tables costs a fraction of the CPU. Subclasses repeat `frozen=True, kw_only=True`:
# msgspec does not inherit kw_only (it keeps the columns in declaration order, required ones after optional
# ones) and mypy does not see an inherited frozen; forbid_unknown_fields is inherited. A row's or table's check
# is its __post_init__ raising ValueError: msgspec.convert turns that into a ValidationError with the row's
# path, which _parse reports as ConfigError naming the file.

class Row(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A table row: unknown columns are an error, every row says where it comes from."""

    id: str | None = None  # the row's name in an evidence trail; required in files by table_ids.check_row_ids


class Table(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    table: str
    version: int
    source: str


T = TypeVar("T", bound=Table)


# ---- input-concepts ----------------------------------------------------------------------------

class ConceptRow(Row, frozen=True, kw_only=True):
    concept: str
    system: str
    code: str
    kind: Literal["quantity", "integer", "code", "boolean", "panel"]
    unit: str | None = None
    value_system: str | None = None
    min: int | None = None
    max: int | None = None
    verified: bool
    source: str

    def __post_init__(self) -> None:
        if self.kind == "quantity" and not self.unit:
            raise ValueError(f"quantity concept {self.concept} needs a unit")
        if self.kind == "code" and not self.value_system:
            raise ValueError(f"coded concept {self.concept} needs a value_system")


class ConceptTable(Table, frozen=True, kw_only=True):
    rows: tuple[ConceptRow, ...]
    values: dict[str, tuple[str, ...]]


# ---- plausibility -------------------------------------------------------------------------------

class PlausibilityRow(Row, frozen=True, kw_only=True):
    """Inclusive limits of a quantity concept, in its canonical unit (checked after unit conversion)."""

    concept: str
    min: float | None = None
    max: float | None = None
    unit: str
    verified: bool
    source: str

    def allowed(self) -> str:
        lo, hi = (None if b is None else f"{b:g}" for b in (self.min, self.max))
        rng = f"{lo}-{hi}" if lo is not None and hi is not None else f">= {lo}" if lo is not None else f"<= {hi}"
        return f"{rng} {self.unit}"


class UnitMixupRow(Row, frozen=True, kw_only=True):
    """A number, as written with `unit`, in [min, max] that is probably another unit: said in the message."""

    concept: str
    unit: str
    min: float
    max: float
    hint: str
    source: str


class PlausibilityTable(Table, frozen=True, kw_only=True):
    rows: tuple[PlausibilityRow, ...]
    mixups: tuple[UnitMixupRow, ...] = ()


# ---- coverage ------------------------------------------------------------------------------------

class CoverageRow(Row, frozen=True, kw_only=True):
    """Concepts any one of which is a usable reading of an input the graders need (e.g. blood pressure)."""

    id: str  # the group's name (`--require` takes it)
    concepts: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    routine: bool  # charted for every patient in the window: most infusions without it is a warning
    source: str


class CoverageTable(Table, frozen=True, kw_only=True):
    from_day: int
    to_day: int
    rows: tuple[CoverageRow, ...]
    events: tuple[str, ...]  # concepts charted only when present: their absence is no gap


class UnitAliasRow(Row, frozen=True, kw_only=True):
    alias: str
    ucum: str


class ConversionRow(Row, frozen=True, kw_only=True):
    from_: str = msgspec.field(name="from")
    to: str
    scale: float
    offset: float


class UnitTable(Table, frozen=True, kw_only=True):
    rows: tuple[UnitAliasRow, ...]
    conversions: tuple[ConversionRow, ...] = ()


class DrugRow(Row, frozen=True, kw_only=True):
    agent: str
    role: Literal["vasopressor", "vasopressin", "inotrope", "anti-cytokine", "corticosteroid", "antipyretic",
                  "intrathecal-candidate", "lymphodepletion", "anti-infective", "g-csf", "hlh-directed"]
    rxnorm: str | None
    names: tuple[str, ...]
    drug_class: Literal["antibacterial", "antiviral", "antifungal", "anti-pjp", "immunoglobulin"] | None = None
    typical_use: Literal["prophylaxis", "treatment", "either"] | None = None
    dex_equivalent: float | None = None  # mg dexamethasone per mg of this corticosteroid (systemic)
    verified: bool
    source: str


class DrugTable(Table, frozen=True, kw_only=True):
    rows: tuple[DrugRow, ...]


class ProductRow(Row, frozen=True, kw_only=True):
    product: str
    brand: str
    rxnorm: tuple[str, ...]
    ndc: tuple[str, ...]
    verified: bool
    source: str


class CodeRef(Row, frozen=True, kw_only=True):
    system: str
    code: str
    verified: bool
    source: str


class ProductTable(Table, frozen=True, kw_only=True):
    rows: tuple[ProductRow, ...]
    procedure_codes: tuple[CodeRef, ...]


class ConditionFindingRow(Row, frozen=True, kw_only=True):
    system: str
    code: str
    display: str
    concept: Literal["seizure", "cerebral-edema", "motor"]
    value: str
    names: tuple[str, ...] = ()  # whole words matched in the Condition's text and displays when no code matches
    verified: bool
    source: str


class ConditionFindingTable(Table, frozen=True, kw_only=True):
    rows: tuple[ConditionFindingRow, ...]


class CodedEventRow(Row, frozen=True, kw_only=True):
    """A code that marks an event beyond CRS/ICANS, with the CTCAE v5.0 term it is graded with."""

    system: str
    code: str
    display: str
    key: str
    ctcae_term: str
    ncit: str | None = None
    verified: bool
    source: str


class InfectionRow(CodedEventRow, frozen=True, kw_only=True):
    """A coded infection (Condition) or positive microbiology result (Observation) and how it is classified."""

    pathogen_type: Literal["bacterial", "viral", "fungal", "other"]
    site: str


class InfectionTable(Table, frozen=True, kw_only=True):
    rows: tuple[InfectionRow, ...]


class NeuroEventRow(CodedEventRow, frozen=True, kw_only=True):
    """A coded non-ICANS neurological event (grading.md section 7.1)."""

    category: Literal["movement-disorder", "cranial-neuropathy", "peripheral-neuropathy", "gbs",
                      "myelopathy-paraparesis", "other"]
    names: tuple[str, ...] = ()  # whole words matched in the Condition's text and displays when no code matches


class NeuroEventTable(Table, frozen=True, kw_only=True):
    rows: tuple[NeuroEventRow, ...]


class MalignancyRow(Row, frozen=True, kw_only=True):
    """A code prefix (or names) that marks a new malignancy Condition, with its lineage (second-malignancy.yaml)."""

    system: str
    prefix: str
    names: tuple[str, ...]
    exclude_prefixes: tuple[str, ...] = ()
    lineage: Literal["t-cell", "myeloid", "other"]
    verified: bool
    source: str

    def matches_code(self, system: str, code: str) -> bool:
        return (bool(self.prefix) and system == self.system and code.upper().startswith(self.prefix)
                and not any(code.upper().startswith(x) for x in self.exclude_prefixes))


class MalignancyActionRow(Row, frozen=True, kw_only=True):
    lineage: Literal["t-cell", "myeloid", "other"]
    flag: str
    text: str
    verified: bool
    source: str


class MalignancyTable(Table, frozen=True, kw_only=True):
    rows: tuple[MalignancyRow, ...]
    actions: tuple[MalignancyActionRow, ...]


# ---- astct-crs-2019 ----------------------------------------------------------------------------

class FeverRule(Row, frozen=True, kw_only=True):
    threshold_celsius: float
    source: str
    verified: bool


class HypotensionRow(Row, frozen=True, kw_only=True):
    from_age: int
    to_age: int | None
    sbp_base: float
    sbp_per_year: float
    map_below: float | None
    verified: bool
    source: str


class TierRow(Row, frozen=True, kw_only=True):
    tier: Literal["none", "low-blood-pressure", "single-vasopressor", "vasopressin-only", "multiple-vasopressors"]
    grade: int
    source: str


class DeviceRow(Row, frozen=True, kw_only=True):
    device: str
    tier: Literal["none", "low-flow", "high-flow", "positive-pressure"]
    grade: int | None = None
    by_flow: bool = False
    grade_low: int | None = None
    grade_high: int | None = None
    unknown_flow: str | None = None  # "at-least-N" or "N"
    source: str

    def __post_init__(self) -> None:
        if self.by_flow:
            if self.grade_low is None or self.grade_high is None or self.unknown_flow is None:
                raise ValueError(f"device {self.device}: by_flow needs grade_low, grade_high, unknown_flow")
        elif self.grade is None:
            raise ValueError(f"device {self.device}: needs a grade")


class OxygenRules(Row, frozen=True, kw_only=True):
    low_flow_max_l_min: float
    low_flow_source: str
    devices: tuple[DeviceRow, ...]


class CrsTable(Table, frozen=True, kw_only=True):
    fever: FeverRule
    hypotension: tuple[HypotensionRow, ...]
    hypotension_tiers: tuple[TierRow, ...]
    oxygen: OxygenRules


# ---- astct-icans-2019 --------------------------------------------------------------------------

class IcansSettings(Row, frozen=True, kw_only=True):
    capd_max_age_years: int
    capd_age_source: str
    capd_age_verified: bool
    motor_alternative_days: int
    motor_alternative_categories: tuple[str, ...]
    motor_alternative_verified: bool
    motor_alternative_source: str


class InflammationRow(Row, frozen=True, kw_only=True):
    """One sign of inflammation around an ICANS onset (grading.md decision 7, revised)."""

    kind: Literal["fever", "open-crs", "above-range"]
    concept: str | None = None
    threshold: float | None = None
    verified: bool
    source: str


class InflammatoryContextRule(Row, frozen=True, kw_only=True):
    before_hours: int
    after_hours: int
    required: tuple[str, ...]
    source: str
    rows: tuple[InflammationRow, ...]
    review_flag_source: str


class Band(Row, frozen=True, kw_only=True):
    min: int
    max: int
    grade: int
    source: str


class CodeGrade(Row, frozen=True, kw_only=True):
    code: str
    grade: int
    source: str


class CannotPerform(Row, frozen=True, kw_only=True):
    grade: int
    source: str


class IcansTable(Table, frozen=True, kw_only=True):
    settings: IcansSettings
    ice_bands: tuple[Band, ...]
    capd_bands: tuple[Band, ...]
    cannot_perform: CannotPerform
    inflammatory_context: InflammatoryContextRule
    domains: dict[Literal["consciousness", "seizure", "motor", "cerebral-edema"], tuple[CodeGrade, ...]]


# ---- output codes -----------------------------------------------------------------------------

class Coded(Row, frozen=True, kw_only=True):
    code: str
    display: str
    source: str | None = None


class ToxicityCodes(Row, frozen=True, kw_only=True):
    """Everything said about one toxicity, in one place: its codes, displays, criteria and labels."""

    code: str  # the cart-toxicity CodeSystem code of the toxicity type
    short: str  # CDS card title, terminal label
    criteria_table: str  # the criteria table it is graded with (its version is the engine's)
    source_url: str  # where a clinician reads the criteria (Card.source.url)
    summary_details: tuple[str, ...] = ()  # Event details copied into its summary row
    label_detail: str | None = None  # the Event detail shown beside its name in the terminal table
    display: str
    scale: str
    scale_display: str
    criteria: str
    ncit: Coded | None
    icd10cm: dict[str, Coded] = {}
    icd10cm_source: str | None = None


class OutputCodeTable(Table, frozen=True, kw_only=True):
    toxicities: dict[str, ToxicityCodes]
    ncit_grades: dict[str, Coded]
    ncit_grades_source: str
    assessment_displays: dict[str, str]  # cart-toxicity code -> display (published CodeSystem, checked)
    component_displays: dict[str, str]


# ---- registry-columns ------------------------------------------------------------------------------

class RegistryColumnRow(Row, frozen=True, kw_only=True):
    """One column of the registry CSV, named after the CIBMTR form question it fills where its text was read."""

    column: str
    description: str
    form: str
    question: str
    url: str
    verified: bool


class RegistryColumnTable(Table, frozen=True, kw_only=True):
    rows: tuple[RegistryColumnRow, ...]
    follow_up: tuple[RegistryColumnRow, ...] = ()  # the follow-up CSV (follow_up.py): one row per period


@dataclass(frozen=True, slots=True)
class TableFile:
    """A table a grader (or the attribution rules) brings: its file in mappings/ and its model."""

    file: str
    model: type[Table]


class Tables(msgspec.Struct, frozen=True, kw_only=True):
    """Every table the graders and writers use, checked against each other (built from tables already
    validated one by one: never converted itself)."""

    concepts: ConceptTable
    units: UnitTable
    drugs: DrugTable
    products: ProductTable
    condition_findings: ConditionFindingTable
    infections: InfectionTable
    neuro_events: NeuroEventTable
    malignancies: MalignancyTable
    crs: CrsTable
    icans: IcansTable
    output: OutputCodeTable
    registry_columns: RegistryColumnTable
    plausibility: PlausibilityTable
    coverage: CoverageTable
    avpu_map: dict[str, Any]
    # The criteria tables the registered graders bring (grading/registry.py), by model: Tables.get(Model).
    extra: dict[type[Table], Table] = {}

    def get(self, model: type[T]) -> T:
        """A grader's own table, by its model class; ConfigError when no registered grader declared it."""
        table = self.extra.get(model)
        if not isinstance(table, model):
            raise ConfigError(f"no table of type {model.__name__} was loaded: declare it in the grader registry")
        return table

    def versions(self) -> dict[str, int]:
        """Criteria table id -> version, recorded in Observation.method and the Provenance device version
        (the registry CSV's column table is an export format, not criteria: it is not listed)."""
        core = (self.concepts, self.units, self.drugs, self.products, self.condition_findings, self.infections,
                self.neuro_events, self.malignancies, self.crs, self.icans, self.output, *self.extra.values())
        return {t.table: t.version for t in core}


_FILES: dict[str, tuple[str, type[Table]]] = {
    "concepts": ("concepts.yaml", ConceptTable),
    "units": ("units.yaml", UnitTable),
    "drugs": ("drugs.yaml", DrugTable),
    "products": ("cart-products.yaml", ProductTable),
    "condition_findings": ("condition-findings.yaml", ConditionFindingTable),
    "infections": ("infections.yaml", InfectionTable),
    "neuro_events": ("neurotoxicity-other.yaml", NeuroEventTable),
    "malignancies": ("second-malignancy.yaml", MalignancyTable),
    "crs": ("astct-crs-2019.yaml", CrsTable),
    "icans": ("astct-icans-2019.yaml", IcansTable),
    "output": ("output-codes.yaml", OutputCodeTable),
    "registry_columns": ("registry-columns.yaml", RegistryColumnTable),
    "plausibility": ("plausibility.yaml", PlausibilityTable),
    "coverage": ("coverage.yaml", CoverageTable),
}


def _check(t: Tables) -> None:
    """Cross-table checks: duplicate keys, answer codes that the value sets do not know, band gaps."""
    seen: set[tuple[str, str]] = set()
    for r in t.concepts.rows:
        key = (r.system, r.code)
        if key in seen:
            raise ConfigError(f"concepts.yaml: duplicate code {r.system}|{r.code}")
        seen.add(key)
        if r.kind == "code" and r.value_system not in t.concepts.values:
            raise ConfigError(f"concepts.yaml: {r.concept}: value system {r.value_system} has no values")
    for table, rows in (("drugs.yaml", [d.agent for d in t.drugs.rows]),
                        ("units.yaml", [u.alias for u in t.units.rows]),
                        ("cart-products.yaml", [p.product for p in t.products.rows])):
        dupes = {x for x in rows if rows.count(x) > 1}
        if dupes:
            raise ConfigError(f"{table}: duplicate keys {sorted(dupes)}")
    devices = set(t.concepts.values[CS_OXYGEN])
    table_devices = [d.device for d in t.crs.oxygen.devices]
    if set(table_devices) != devices or len(table_devices) != len(devices):
        raise ConfigError(f"astct-crs-2019.yaml: oxygen devices {sorted(table_devices)} do not match the "
                          f"oxygen-delivery codes {sorted(devices)}")
    domain_systems = {"consciousness": "consciousness-level", "seizure": "seizure-type", "motor": "motor-finding",
                      "cerebral-edema": "cerebral-edema-finding"}
    for domain, grades in t.icans.domains.items():
        codes = [r.code for r in grades]
        expected = set(t.concepts.values[cs(domain_systems[domain])])
        if set(codes) != expected or len(codes) != len(expected):
            raise ConfigError(f"astct-icans-2019.yaml: {domain} codes {sorted(codes)} != value set {sorted(expected)}")
    for name, bands, top in (("ice_bands", t.icans.ice_bands, 10), ("capd_bands", t.icans.capd_bands, 32)):
        covered = sorted(v for b in bands for v in range(b.min, b.max + 1))
        if covered != list(range(top + 1)):
            raise ConfigError(f"astct-icans-2019.yaml: {name} must cover 0..{top} exactly once")
    ages = sorted(t.crs.hypotension, key=lambda r: r.from_age)
    for a, b in itertools.pairwise(ages):
        if a.to_age != b.from_age:
            raise ConfigError("astct-crs-2019.yaml: hypotension age rows must be contiguous")
    _check_plausibility(t)
    _check_coverage(t)
    for f in t.condition_findings.rows:  # a finding's concept is the ICANS domain of the same name
        if f.value not in {r.code for r in t.icans.domains[f.concept]}:
            raise ConfigError(f"condition-findings.yaml: {f.code}: unknown {f.concept} value {f.value}")


def _check_plausibility(t: Tables) -> None:
    """Each limit names a quantity concept once, in that concept's canonical unit; mix-ups name known concepts."""
    units = {r.concept: r.unit for r in t.concepts.rows if r.kind == "quantity"}
    seen: set[str] = set()
    for r in t.plausibility.rows:
        if r.concept not in units:
            raise ConfigError(f"plausibility.yaml: {r.id}: {r.concept} is not a quantity concept of concepts.yaml")
        if r.unit != units[r.concept]:
            raise ConfigError(f"plausibility.yaml: {r.id}: unit {r.unit} is not {r.concept}'s canonical unit "
                              f"{units[r.concept]}")
        if r.concept in seen:
            raise ConfigError(f"plausibility.yaml: {r.id}: {r.concept} has two rows")
        if r.min is not None and r.max is not None and r.min > r.max:
            raise ConfigError(f"plausibility.yaml: {r.id}: min is above max")
        seen.add(r.concept)
    for m in t.plausibility.mixups:
        if m.concept not in seen:
            raise ConfigError(f"plausibility.yaml: mixups {m.id}: {m.concept} has no limits row")


def _check_coverage(t: Tables) -> None:
    """Every concept named is in concepts.yaml, in one group at most; names (ids, aliases) are unique."""
    known = {r.concept for r in t.concepts.rows}
    grouped: dict[str, str] = {}
    names: set[str] = set()
    for r in t.coverage.rows:
        for c in r.concepts:
            if c not in known:
                raise ConfigError(f"coverage.yaml: {r.id}: unknown concept {c} (concepts.yaml)")
            if c in grouped:
                raise ConfigError(f"coverage.yaml: {r.id}: concept {c} is already in {grouped[c]}")
            grouped[c] = r.id
        for name in (r.id, *r.aliases):
            if name in names or (name in known and name not in r.concepts):
                raise ConfigError(f"coverage.yaml: {r.id}: name {name} is used twice (or is another concept)")
            names.add(name)
    for c in t.coverage.events:
        if c not in known or c in grouped:
            raise ConfigError(f"coverage.yaml: events: {c} is unknown or also in a group")
    if t.coverage.from_day > t.coverage.to_day:
        raise ConfigError("coverage.yaml: from_day is after to_day")


def read_yaml(path: Path) -> Any:
    """A table file's YAML, parsed once per process and file version: the loaders and the start-up check
    against the published profiles share the parse. Callers must not mutate the result."""
    stat = path.stat()
    return _parse_yaml(path, stat.st_mtime_ns, stat.st_size)


# libyaml's parser (PyYAML's C extension, shipped in its wheels) with the same safe constructors: the same values
# for every shipped table (tests/test_fast_read.py compares them), in 0.03 s instead of 0.31 s at every start-up
# (issue 18: a tenth of a 200-patient run's CPU). The pure-Python loader where the extension is missing.
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _parse_yaml(path: Path, mtime_ns: int, size: int) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)


@functools.cache
def load_tables(folder: str | None = None, extra: tuple[TableFile, ...] = ()) -> Tables:
    """Parse, validate and cross-check every core table and each `extra` one (the graders' own, declared in
    grading/registry.py: use its `load_all`); a bad row raises ConfigError naming file and row."""
    base = Path(folder) if folder else mappings_dir()
    parsed: dict[str, Any] = {key: _parse(base / name, model) for key, (name, model) in _FILES.items()}
    try:
        parsed["avpu_map"] = orjson.loads((base / "avpu-conceptmap.json").read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{base / 'avpu-conceptmap.json'}: {exc}") from exc
    if not isinstance(parsed["avpu_map"], dict):
        raise ConfigError(f"{base / 'avpu-conceptmap.json'}: not a JSON object (a FHIR ConceptMap)")
    parsed["extra"] = {f.model: _parse(base / f.file, f.model) for f in extra}
    tables = Tables(**parsed)
    _check(tables)
    return tables


def _parse(path: Path, model: type[T]) -> T:
    try:
        table = msgspec.convert(read_yaml(path), model)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: mapping table missing") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_where(exc)}") from exc
    check_row_ids(str(path), table)
    return table


def _where(exc: msgspec.ValidationError) -> str:
    """msgspec's "what - at `$.rows[3].min`" as "rows[3].min: what" (a dict key: "key in settings: what")."""
    what, at, loc = str(exc).partition(" - at ")
    loc = loc.replace("`", "").replace("$.", "").removeprefix("$")
    return f"{loc}: {what}" if at and loc else what


@functools.cache
def load_yaml_table(filename: str, model: type[T], folder: str | None = None) -> T:
    """One table on its own (tests, and graders built outside an engine); an engine's graders get theirs
    from the Tables that grading/registry.py `load_all` built, so one folder reaches every grader."""
    return _parse((Path(folder) if folder else mappings_dir()) / filename, model)
