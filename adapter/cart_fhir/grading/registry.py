"""The grader registry: every grader, in the order the engine runs it, with what it needs and what it makes.

Adding a toxicity is one module (the grader), one table (its criteria in mappings/) and one `GraderSpec` line
here; the engine, the table loader, the run report and the writers read everything else from the spec. The
facts a reader sees about each toxicity (display, criteria, card label, summary fields) are data rows in
mappings/output-codes.yaml, checked against the published CodeSystem at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..constants import CS_OXYGEN
from ..errors import ConfigError
from ..tables import TableFile, Tables, load_tables
from ..timeline import Course
from . import clinician
from .attribution import AttributionRulesTable
from .bcell_aplasia import B_CELL_APLASIA, AplasiaTable, BCellAplasiaGrader
from .crs import CrsGrader
from .episodes import episodes
from .hematotox import HematotoxScorer, HematotoxTable
from .hypogamma import HYPOGAMMA, HypogammaGrader, HypogammaTable
from .icaht import IcahtGrader, IcahtTable
from .icans import MOTOR_OUTSIDE_FLAG, REVIEW_FLAG, IcansGrader
from .iechs import IecHsGrader, IecHsTable
from .infections import InfectionGrader, InfectionGradingTable
from .late_cytopenia import PROLONGED_CYTOPENIA, CytopeniaTable, LateCytopeniaGrader
from .neuro_other import NeuroGradingTable, NeuroOtherGrader
from .result import Assessment, DayGrade, Episode, Event, Findings, State, Toxicity
from .second_malignancy import SECOND_MALIGNANCY, SecondMalignancyGrader
from .treatments import TreatmentAnalyzer, TreatmentResponse, TreatmentTable


class OutputKind(str, Enum):
    """What a grader returns for one infusion course, and so where the engine files it."""

    DAILY = "daily"  # list[DayGrade] of its one toxicity; the engine cuts it into episodes
    TREATMENTS = "treatments"  # dict[Toxicity, list[TreatmentResponse]]: one response per episode
    FINDINGS = "findings"  # Findings: events (each one AdverseEvent) and assessments (each one Observation)
    SCORE = "score"  # one Assessment per infusion (a risk score, not a toxicity)


@dataclass(slots=True)
class CourseResult:
    """Everything the registered graders found for one infusion course, filed by output kind."""

    course: Course
    days: dict[Toxicity, list[DayGrade]] = field(default_factory=dict)
    episodes: dict[Toxicity, list[Episode]] = field(default_factory=dict)
    treatments: dict[Toxicity, list[TreatmentResponse]] = field(default_factory=dict)  # per CRS/ICANS episode
    events: list[Event] = field(default_factory=list)  # IEC-HS, ICAHT, infections, other neurotoxicity
    assessments: list[Assessment] = field(default_factory=list)  # not tied to an event (not assessable ones)
    scores: dict[Toxicity, Assessment] = field(default_factory=dict)  # per-infusion scores (CAR-HEMATOTOX)
    notices: list[str] = field(default_factory=list)  # review actions for the run report (GraderSpec.notices)

    @property
    def hematotox(self) -> Assessment | None:
        return self.scores.get(Toxicity.CAR_HEMATOTOX)


Build = Callable[[Tables], Any]
Run = Callable[[Any, Course, CourseResult], Any]
Unverified = Callable[[Any, Any], Iterable[str]]


def _none(grader: Any, output: Any) -> Iterable[str]:
    return ()


@dataclass(frozen=True, slots=True)
class GraderSpec:
    """One registered grader.

    name: unique; for DAILY and SCORE graders also the one toxicity they grade.
    toxicities: what its results are reported as (summary rows, cards, output-codes.yaml `toxicities` keys).
    tables: its own criteria tables, parsed and checked at start-up by `load_all`, handed over by `build`.
    concepts: the input concepts it reads (concepts.yaml `concept`), checked at start-up.
    reads: earlier graders whose results it reads from the CourseResult (checked: they run before it).
    build: makes the grader from the loaded tables; run: grades one course; unverified: the
    `table:row` ids of `verified: false` rows a result used (grading.md decision 10, run report).
    attribution: apply clinician attribution on input (grading/clinician.py); notices: review actions a
    result asks for, written to the run report.
    """

    name: str
    output: OutputKind
    toxicities: tuple[Toxicity, ...]
    build: Build
    run: Run
    tables: tuple[TableFile, ...] = ()
    concepts: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    unverified: Unverified = _none
    # Clinician attribution (grading/clinician.py): None = not applied; else the condition tables whose
    # Conditions are this grader's own events (they never count as "another cause" for it).
    attribution: tuple[str, ...] | None = None
    # Run-report notices (review actions) of a result: neurological review, FDA boxed-warning actions ...
    notices: Unverified = _none


def _treatments(g: TreatmentAnalyzer, course: Course, cr: CourseResult) -> dict[Toxicity, list[TreatmentResponse]]:
    """CRS and ICANS treatments; each toxicity's responses also see the other's episodes (doses given while
    both were open are flagged)."""
    crs, icans = Toxicity.CRS, Toxicity.ICANS
    return {tox: g.analyze(course, tox, cr.days[tox], cr.episodes[tox], cr.episodes[other])
            for tox, other in ((crs, icans), (icans, crs))}


def _treatment_rows(g: TreatmentAnalyzer, out: dict[Toxicity, list[TreatmentResponse]]) -> Iterable[str]:
    return (r for responses in out.values() for tr in responses for r in tr.unverified_rows)


def _icaht_rows(g: IcahtGrader, found: Findings) -> Iterable[str]:
    return (r for ev in found.events if ev.assessment is not None for r in g.unverified_rows(ev.assessment))


def _icans_rows(g: IcansGrader, days: list[DayGrade]) -> Iterable[str]:
    """The motor-alternative window (an engine convention) when a motor finding was attributed by it."""
    s = g.t.settings
    if not s.motor_alternative_verified and any(MOTOR_OUTSIDE_FLAG in d.flags for d in days):
        yield f"{g.t.table}:motor-alternative"


def _icans_notices(g: IcansGrader, days: list[DayGrade]) -> Iterable[str]:
    """Decision 7 (revised): an isolated-motor, non-inflammatory episode asks for neurological review."""
    for ep in episodes(Toxicity.ICANS, days):
        if REVIEW_FLAG in ep.max_day.flags:
            yield (f"ICANS episode from day {ep.onset_day} is isolated-motor and non-inflammatory: neurological "
                   "review (imaging of the spine, CSF) advised (grading.md decision 7)")


def _iechs_rows(g: IecHsGrader, found: Findings) -> Iterable[str]:
    return (f"{g.t.table}:screen-and-grade" for _ in found.events[:1])


def _hematotox_rows(g: HematotoxScorer, score: Assessment) -> Iterable[str]:
    return g.unverified_rows(score) if score.state != State.NOT_ASSESSABLE else ()


CRS_CONCEPTS = ("body-temperature", "systolic-bp", "diastolic-bp", "mean-bp", "bp-panel", "oxygen-device",
                "oxygen-flow", "spo2")
ICANS_CONCEPTS = ("ice-score", "ice-orientation", "ice-naming", "ice-commands", "ice-writing", "ice-attention",
                  "cannot-perform-ice", "capd-score", "consciousness", "seizure", "motor", "cerebral-edema")

# The engine runs these in this order; a grader may read only the results of graders above it.
GRADERS: list[GraderSpec] = [
    GraderSpec("crs", OutputKind.DAILY, (Toxicity.CRS,), concepts=CRS_CONCEPTS, attribution=(),
               build=lambda t: CrsGrader(t.crs), run=lambda g, course, cr: g.grade(course)),
    GraderSpec("icans", OutputKind.DAILY, (Toxicity.ICANS,), concepts=ICANS_CONCEPTS + ("body-temperature", "crp",
                                                                                         "ferritin"),
               reads=("crs",), build=lambda t: IcansGrader(t.icans),
               run=lambda g, course, cr: g.grade(course, cr.episodes[Toxicity.CRS]), unverified=_icans_rows,
               notices=_icans_notices, attribution=()),
    GraderSpec("treatments", OutputKind.TREATMENTS, (Toxicity.CRS, Toxicity.ICANS),
               tables=(TableFile("treatment-response.yaml", TreatmentTable),),
               concepts=("ice-score", "capd-score"), reads=("crs", "icans"),
               build=lambda t: TreatmentAnalyzer(t.get(TreatmentTable), t.drugs, t.icans.settings),
               run=_treatments, unverified=_treatment_rows),
    GraderSpec("iec-hs", OutputKind.FINDINGS, (Toxicity.IEC_HS,),
               tables=(TableFile("astct-iechs-2023.yaml", IecHsTable),),
               concepts=("ferritin", "alt", "ast", "fibrinogen", "anc", "platelets", "hemoglobin", "oxygen-device",
                         "oxygen-flow"), reads=("crs",),
               build=lambda t: IecHsGrader(t.get(IecHsTable), t.concepts.values.get(CS_OXYGEN, ())),
               run=lambda g, course, cr: g.grade(course, cr.days[Toxicity.CRS], cr.episodes[Toxicity.CRS]),
               unverified=_iechs_rows, attribution=()),
    GraderSpec("icaht", OutputKind.FINDINGS, (Toxicity.ICAHT_EARLY, Toxicity.ICAHT_LATE),
               tables=(TableFile("eha-ebmt-icaht-2023.yaml", IcahtTable),), concepts=("anc",),
               build=lambda t: IcahtGrader(t.get(IcahtTable)), run=lambda g, course, cr: g.grade(course),
               unverified=_icaht_rows, attribution=()),
    GraderSpec("infection", OutputKind.FINDINGS, (Toxicity.INFECTION,),
               tables=(TableFile("infection-grading.yaml", InfectionGradingTable),), concepts=("oxygen-device",),
               build=lambda t: InfectionGrader(t.get(InfectionGradingTable), t.drugs, t.infections),
               run=lambda g, course, cr: g.grade(course), attribution=("infections",)),
    GraderSpec("neurotoxicity-other", OutputKind.FINDINGS, (Toxicity.NEURO_OTHER,),
               tables=(TableFile("neurotoxicity-grading.yaml", NeuroGradingTable),),
               concepts=("motor", "oxygen-device"), reads=("icans",),
               build=lambda t: NeuroOtherGrader(t.get(NeuroGradingTable)),
               run=lambda g, course, cr: g.grade(course, cr.days[Toxicity.ICANS], cr.episodes[Toxicity.ICANS])),
    GraderSpec("car-hematotox", OutputKind.SCORE, (Toxicity.CAR_HEMATOTOX,),
               tables=(TableFile("car-hematotox-2021.yaml", HematotoxTable),),
               concepts=("anc", "platelets", "hemoglobin", "crp", "ferritin"),
               build=lambda t: HematotoxScorer(t.get(HematotoxTable)), run=lambda g, course, cr: g.score(course),
               unverified=_hematotox_rows),
    # IAGO long-term effects (Rejeski et al., Nat Med 2025; issue 16): one module and one table each.
    GraderSpec("hypogammaglobulinemia", OutputKind.FINDINGS, (HYPOGAMMA,), concepts=("igg",), reads=("infection",),
               tables=(TableFile("hypogammaglobulinemia.yaml", HypogammaTable),),
               build=lambda t: HypogammaGrader(t.get(HypogammaTable)),
               run=lambda g, course, cr: g.grade(course, [e for e in cr.events if e.toxicity == Toxicity.INFECTION])),
    GraderSpec("b-cell-aplasia", OutputKind.FINDINGS, (B_CELL_APLASIA,), concepts=("cd19-b-cells",),
               tables=(TableFile("b-cell-aplasia.yaml", AplasiaTable),),
               build=lambda t: BCellAplasiaGrader(t.get(AplasiaTable)), run=lambda g, course, cr: g.grade(course),
               unverified=lambda g, found: g.unverified(found)),
    GraderSpec("second-malignancy", OutputKind.FINDINGS, (SECOND_MALIGNANCY,),
               build=lambda t: SecondMalignancyGrader(t.malignancies), run=lambda g, course, cr: g.grade(course),
               unverified=lambda g, found: g.unverified(found), notices=lambda g, found: g.notices(found)),
    GraderSpec("prolonged-cytopenia", OutputKind.FINDINGS, (PROLONGED_CYTOPENIA,),
               concepts=("anc", "platelets", "hemoglobin"),
               tables=(TableFile("prolonged-cytopenia.yaml", CytopeniaTable),),
               build=lambda t: LateCytopeniaGrader(t.get(CytopeniaTable)), run=lambda g, course, cr: g.grade(course)),
]

# Tables that are not a grader's but are loaded with them: the IAGO attribution of every event.
SHARED_TABLES = (TableFile("attribution-rules.yaml", AttributionRulesTable),)


def register(spec: GraderSpec, registry: list[GraderSpec] | None = None) -> None:
    """Add a grader at the end of the registry (after every grader it reads); checked by `check_registry`."""
    (GRADERS if registry is None else registry).append(spec)


def table_files(registry: Sequence[GraderSpec]) -> tuple[TableFile, ...]:
    files = [*SHARED_TABLES, *(f for spec in registry for f in spec.tables)]
    return tuple(dict.fromkeys(files))  # a table two graders share is loaded once


def load_all(folder: str | None = None, registry: Sequence[GraderSpec] | None = None) -> Tables:
    """Every table, parsed and cross-checked once at start-up: the core tables, each registered grader's
    own, the attribution rules and the registry CSV columns. A bad row or an inconsistent registry raises
    ConfigError naming the file and row."""
    specs = GRADERS if registry is None else registry
    tables = load_tables(folder, table_files(specs))
    check_registry(specs, tables)
    return tables


def check_registry(specs: Sequence[GraderSpec], tables: Tables) -> None:
    """Names unique, reads only earlier graders, concepts known to concepts.yaml, every toxicity described in
    output-codes.yaml, and the attribution rules naming only registered toxicities."""
    seen: set[str] = set()
    known_concepts = {r.concept for r in tables.concepts.rows}
    described = set(tables.output.toxicities)
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"grader registry: {spec.name} registered twice")
        late = [r for r in spec.reads if r not in seen]
        if late:
            raise ConfigError(f"grader registry: {spec.name} reads {late}, which do not run before it")
        unknown = [c for c in spec.concepts if c not in known_concepts]
        if unknown:
            raise ConfigError(f"grader registry: {spec.name} reads unknown concepts {unknown} (concepts.yaml)")
        undescribed = [t for t in spec.toxicities if t not in described]
        if undescribed:
            raise ConfigError(f"grader registry: {spec.name}: toxicities {undescribed} have no row in "
                              "output-codes.yaml `toxicities`")
        seen.add(spec.name)
    toxicities = {t for spec in specs for t in spec.toxicities}
    rules = tables.get(AttributionRulesTable)
    named = [*(r.toxicity for r in rules.windows), *(r.toxicity for r in rules.alternative_causes),
             *(r.toxicity for r in rules.second_suspects)]
    strays = set(named) - toxicities
    if strays:
        raise ConfigError(f"attribution-rules.yaml: unknown toxicities {sorted(strays)}")


@dataclass(frozen=True, slots=True)
class Registered:
    """A built grader with its spec."""

    spec: GraderSpec
    grader: Any


def build_all(tables: Tables, registry: Sequence[GraderSpec] | None = None) -> tuple[Registered, ...]:
    return tuple(Registered(spec, spec.build(tables)) for spec in (GRADERS if registry is None else registry))


def grade_course(graders: Sequence[Registered], course: Course) -> tuple[CourseResult, set[str]]:
    """Every registered grader over one infusion course, in registry order; returns the results and the
    unverified table rows they used."""
    cr = CourseResult(course)
    unverified: set[str] = set()
    # The course as each attribution rule sees it, made once per rule: CRS, ICANS, IEC-HS and ICAHT share one
    # (and so its per-concept index) instead of rebuilding it per grader.
    views: dict[tuple[str, ...], tuple[Course, list[clinician.Dropped]]] = {}
    for g in graders:
        if g.spec.attribution is not None:
            own = g.spec.attribution
            if own not in views:
                views[own] = clinician.view(course, own)
            seen, dropped = views[own]
            out = clinician.annotate(g.spec.run(g.grader, seen, cr), dropped, course)
        else:
            out = g.spec.run(g.grader, course, cr)
        _file(g.spec, out, cr)
        unverified.update(g.spec.unverified(g.grader, out))
        cr.notices.extend(g.spec.notices(g.grader, out))
    return cr, unverified


def _file(spec: GraderSpec, out: Any, cr: CourseResult) -> None:
    """Put a grader's output where the writers and summaries read it."""
    if spec.output == OutputKind.DAILY:
        (tox,) = spec.toxicities
        cr.days[tox] = out
        cr.episodes[tox] = episodes(tox, out)
    elif spec.output == OutputKind.TREATMENTS:
        cr.treatments.update(out)
    elif spec.output == OutputKind.FINDINGS:
        cr.events.extend(out.events)
        tied = {id(ev.assessment) for ev in out.events if ev.assessment is not None}
        cr.assessments.extend(a for a in out.assessments if id(a) not in tied)
    else:
        (tox,) = spec.toxicities
        cr.scores[tox] = out
