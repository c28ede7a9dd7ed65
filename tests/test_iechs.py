"""IEC-HS screen and suggested grade (grading.md 3.1-3.3; UNVERIFIED criteria in
mappings/astct-iechs-2023.yaml): both sides of every threshold, every timing and grade rule, the
not-assessable rows, and CRS left alone.

Each case names the table rows it covers (`covers`); a meta-test checks that every row has a case.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fhirbuild import PatientBuilder
from helpers import run

from cart_fhir.constants import CS_OXYGEN
from cart_fhir.errors import ConfigError
from cart_fhir.grading import iechs
from cart_fhir.grading.iechs import IecHsGrader, IecHsTable
from cart_fhir.grading.iechs.screen import ctcae_grade
from cart_fhir.grading.registry import load_all
from cart_fhir.grading.result import Findings, State, Toxicity
from cart_fhir.model import Moment, Quantity, Reading

TABLES = load_all()
OXYGEN = TABLES.concepts.values[CS_OXYGEN]
GRADER = IecHsGrader(TABLES.get(IecHsTable), OXYGEN)
T = GRADER.t
G1, G2, G3, G4 = ([("graded", g)] for g in (1, 2, 3, 4))
NONE: list[tuple[str, int | None]] = []
NA = [("not-assessable", None)]
Build = Callable[[PatientBuilder], Any]


# ---- scenario pieces (days relative to the infusion; CRS graded by the engine's own CRS grader) ---------

def crs_resolved(b: PatientBuilder) -> None:
    """CRS grade 1 on days 1-2, resolved on day 3 (first afebrile day)."""
    b.temp(1, "06:00", 38.6)
    b.temp(2, "06:00", 39.0)
    b.temp(3, "06:00", 37.0)


def run_steps(b: PatientBuilder, *steps: Build) -> None:
    for step in steps:
        step(b)


def after_crs(*steps: Build) -> Build:
    """crs_resolved, then the given steps."""
    return lambda b: run_steps(b, crs_resolved, *steps)


def ferritin(day: int, value: float, hhmm: str = "08:00", high: float | None = 300) -> Build:
    return lambda b: b.lab("ferritin", day, hhmm, value, "ng/mL", low=20 if high else None, high=high)


def fibrinogen(day: int, value: float, hhmm: str = "08:00", low: float | None = None) -> Build:
    return lambda b: b.lab("fibrinogen", day, hhmm, value, "mg/dL", low=low, high=400 if low else None)


def lab(concept: str, day: int, value: float, unit: str, hhmm: str = "08:00", **rng: float) -> Build:
    return lambda b: b.lab(concept, day, hhmm, value, unit, **rng)


def count(concept: str, day: int, value: float, low: float | None, hhmm: str = "08:00") -> Build:
    """A blood count in /uL (sent as 10*3/uL) or g/dL (hemoglobin), with its LLN or no range at all."""
    if concept == "hemoglobin":
        return lambda b: b.lab(concept, day, hhmm, value, "g/dL", low=low, high=16 if low else None)
    return lambda b: b.lab(concept, day, hhmm, value / 1000, "10*3/uL", low=low / 1000 if low else None,
                           high=500 if low else None)


def screen(b: PatientBuilder, day: int = 6) -> None:
    """A standard positive screen after a resolved CRS: ferritin 1500 (5 x ULN) and fibrinogen 120."""
    after_crs(ferritin(day, 1500), fibrinogen(day, 120))(b)


def screened(*steps: Build, day: int = 6) -> Build:
    """screen (positive on `day`), then the given steps."""
    return lambda b: run_steps(b, lambda x: screen(x, day), *steps)


def second_crs(b: PatientBuilder) -> None:
    """A second CRS episode rising to grade 3 on day 6, three days after the first resolved; labs that day."""
    screen(b, 6)
    b.temp(6, "06:00", 39.1)
    b.pressor("norepinephrine", 6, "07:00", 6, "20:00")


def with_rows(**changes: dict[str, Any]) -> Callable[[IecHsTable], IecHsTable]:
    """The table with some rows changed: row key -> field updates (ferritin and timing rows, fibrinogen)."""
    def apply(t: IecHsTable) -> IecHsTable:
        rules = tuple(msgspec.structs.replace(r, **changes.get(r.key, {})) for r in t.ferritin_rules)
        timing = tuple(msgspec.structs.replace(r, **changes.get(r.key, {})) for r in t.timing)
        fib = msgspec.structs.replace(t.fibrinogen, **changes.get("fibrinogen", {}))
        return msgspec.structs.replace(t, ferritin_rules=rules, timing=timing, fibrinogen=fib)
    return apply


def case(cid: str, covers: list[str], build: Build, expected: Sequence[tuple[str, int | None]],
         flags: tuple[str, ...] = (), table: Callable[[IecHsTable], IecHsTable] | None = None) -> Any:
    return pytest.param(covers, build, expected, flags, table, id=cid)


F6 = ferritin(6, 1500)  # the raised ferritin most cases pair with
DOUBLING_ON = with_rows(**{"ferritin-doubling": {"enabled": True}})

CASES = [
    # --- key finding: ferritin > 2 x ULN (strict), > 2 x baseline (and > ULN), doubling in 48 h (default off)
    case("iechs-ferritin-600-uln300-not-above-2xuln-none", ["ferritin-uln"],
         after_crs(ferritin(6, 600), fibrinogen(6, 120)), NONE),
    case("iechs-ferritin-601-uln300-above-2xuln-grade1",
         ["ferritin-uln", "fibrinogen", "timing-after-crs", "screen-positive"],
         after_crs(ferritin(6, 601), fibrinogen(6, 120)), G1),
    case("iechs-ferritin-no-range-default-uln-601-grade1", ["default:ferritin:high"],
         after_crs(ferritin(6, 601, high=None), fibrinogen(6, 120)), G1, flags=("default-uln-ferritin",)),
    case("iechs-ferritin-350-over-2x-baseline-150-grade1", ["ferritin-baseline"],
         after_crs(ferritin(-3, 150), ferritin(6, 350), fibrinogen(6, 120)), G1),
    case("iechs-ferritin-300-not-over-2x-baseline-150-none", ["ferritin-baseline"],
         after_crs(ferritin(-3, 150), ferritin(6, 300), fibrinogen(6, 120)), NONE),
    case("iechs-ferritin-2x-low-baseline-but-below-uln-none", ["ferritin-baseline"],
         after_crs(ferritin(-3, 50), ferritin(6, 250), fibrinogen(6, 120)), NONE),
    case("iechs-ferritin-baseline-from-day0-after-infusion-grade1", ["ferritin-baseline"],
         after_crs(ferritin(0, 150, "12:00"), ferritin(6, 350), fibrinogen(6, 120)), G1),
    case("iechs-ferritin-baseline-30-days-before-used-grade1", ["baseline-lookback-days"],
         after_crs(ferritin(-30, 150), ferritin(6, 350), fibrinogen(6, 120)), G1),
    case("iechs-ferritin-baseline-31-days-before-ignored-none", ["baseline-lookback-days"],
         after_crs(ferritin(-31, 150), ferritin(6, 350), fibrinogen(6, 120)), NONE),
    case("iechs-ferritin-doubling-off-by-default-none", ["ferritin-doubling"],
         after_crs(ferritin(5, 200), ferritin(6, 450), fibrinogen(6, 120)), NONE),
    case("iechs-ferritin-doubling-48h-enabled-grade1", ["ferritin-doubling"],
         after_crs(ferritin(4, 200), ferritin(6, 450), fibrinogen(6, 120)), G1, table=DOUBLING_ON),
    case("iechs-ferritin-doubling-over-48h-enabled-none", ["ferritin-doubling"],
         after_crs(ferritin(4, 200, "07:00"), ferritin(6, 450), fibrinogen(6, 120)), NONE, table=DOUBLING_ON),
    # --- second criterion: ALT/AST > 5 x ULN, or > 5 x an abnormal baseline
    case("iechs-alt-200-uln40-not-above-5x-none", ["transaminases"],
         after_crs(F6, lab("alt", 6, 200, "U/L", low=7, high=40)), NONE),
    case("iechs-alt-201-uln40-above-5x-grade1", ["transaminases"],
         after_crs(F6, lab("alt", 6, 201, "U/L", low=7, high=40)), G1),
    case("iechs-alt-no-range-default-uln-201-grade1", ["default:alt:high"],
         after_crs(F6, lab("alt", 6, 201, "U/L")), G1, flags=("default-uln-alt",)),
    case("iechs-ast-no-range-default-uln-200-none", ["default:ast:high"],
         after_crs(F6, lab("ast", 6, 200, "U/L")), NONE),
    case("iechs-ast-no-range-default-uln-201-grade1", ["default:ast:high"],
         after_crs(F6, lab("ast", 6, 201, "U/L")), G1, flags=("default-uln-ast",)),
    case("iechs-ast-abnormal-baseline-100-500-not-above-5x-none", ["transaminases"],
         after_crs(F6, lab("ast", -3, 100, "U/L", high=40), lab("ast", 6, 500, "U/L", high=40)), NONE),
    case("iechs-ast-abnormal-baseline-100-501-above-5x-grade1", ["transaminases"],
         after_crs(F6, lab("ast", -3, 100, "U/L", high=40), lab("ast", 6, 501, "U/L", high=40)), G1),
    # --- second criterion: fibrinogen < 150 mg/dL, or < the result's LLN
    case("iechs-fibrinogen-150-none", ["fibrinogen"], after_crs(F6, fibrinogen(6, 150)), NONE),
    case("iechs-fibrinogen-149-grade1", ["fibrinogen"], after_crs(F6, fibrinogen(6, 149)), G1),
    case("iechs-fibrinogen-1.49-g-per-L-grade1", ["fibrinogen"],
         after_crs(F6, lab("fibrinogen", 6, 1.49, "g/L")), G1),
    case("iechs-fibrinogen-180-below-lln-200-grade1", ["fibrinogen"],
         after_crs(F6, fibrinogen(6, 180, low=200)), G1),
    case("iechs-fibrinogen-200-at-lln-200-none", ["fibrinogen"],
         after_crs(F6, fibrinogen(6, 200, low=200)), NONE),
    case("iechs-fibrinogen-below-lln-rule-off-none", ["fibrinogen"],
         after_crs(F6, fibrinogen(6, 180, low=200)),
         NONE, table=with_rows(fibrinogen={"below_lln": False})),
    # --- second criterion: new or worsening cytopenia (CTCAE v5 grades vs the prior 72 h)
    case("iechs-platelets-g1-to-g3-in-48h-grade1", ["cytopenia", "band:platelets:3"],
         after_crs(F6, count("platelets", 4, 80000, 150000), count("platelets", 6, 40000, 150000)), G1),
    case("iechs-platelets-g2-stays-g2-none", ["cytopenia", "band:platelets:2"],
         after_crs(F6, count("platelets", 5, 60000, 150000), count("platelets", 6, 55000, 150000)), NONE),
    case("iechs-platelets-default-lln-g0-to-g1-grade1", ["default:platelets:low", "band:platelets:1"],
         after_crs(F6, count("platelets", 5, 160000, None), count("platelets", 6, 140000, None)), G1,
         flags=("default-lln-platelets",)),
    case("iechs-anc-g0-to-g1-prior-72h-grade1", ["cytopenia", "band:anc:1"],
         after_crs(F6, count("anc", 3, 2000, 1800), count("anc", 6, 1700, 1800)), G1),
    case("iechs-anc-g0-73h-before-not-prior-none", ["cytopenia"],
         after_crs(F6, count("anc", 3, 2000, 1800, "07:00"), count("anc", 6, 1700, 1800)), NONE),
    case("iechs-anc-new-g3-after-g2-grade1", ["cytopenia", "band:anc:3", "band:anc:2"],
         after_crs(F6, count("anc", 1, 1200, 1800), count("anc", 6, 800, 1800)), G1),
    case("iechs-anc-g3-without-earlier-value-none", ["cytopenia"],
         after_crs(F6, count("anc", 6, 800, 1800)), NONE),
    case("iechs-anc-default-lln-grade1", ["default:anc:low"],
         after_crs(F6, count("anc", 4, 1900, None), count("anc", 6, 1700, None)), G1,
         flags=("default-lln-anc",)),
    case("iechs-hemoglobin-g1-to-g3-grade1", ["cytopenia", "band:hemoglobin:3", "band:hemoglobin:1"],
         after_crs(F6, count("hemoglobin", 4, 10.5, 12.0), count("hemoglobin", 6, 7.5, 12.0)), G1),
    case("iechs-hemoglobin-default-lln-grade1", ["default:hemoglobin:low"],
         after_crs(F6, count("hemoglobin", 4, 12.5, None), count("hemoglobin", 6, 11.5, None)), G1,
         flags=("default-lln-hemoglobin",)),
    # --- the two criteria together: within concurrence-hours, else not assessable
    case("iechs-ferritin-only-no-second-criterion-lab-not-assessable", ["second-criterion"],
         after_crs(F6), NA),
    case("iechs-second-criterion-48h-apart-grade1", ["concurrence-hours"],
         after_crs(F6, fibrinogen(8, 120)), G1),
    case("iechs-second-criterion-49h-apart-not-assessable", ["concurrence-hours"],
         after_crs(F6, fibrinogen(8, 120, "09:00")), NA),
    # --- timing
    case("iechs-during-crs-onset-not-resolved-none", ["crs-onset-phase"],
         lambda b: (b.temp(1, "06:00", 38.6), b.temp(2, "06:00", 39.2),
                    b.pressor("norepinephrine", 2, "07:00", 2, "20:00"), ferritin(2, 3000)(b),
                    fibrinogen(2, 120)(b)),
         NONE),
    case("iechs-second-crs-rising-inside-after-crs-window-none", ["crs-onset-phase"], second_crs, NONE),
    case("iechs-second-crs-rising-onset-rule-off-grade4", ["crs-onset-phase"], second_crs, G4,
         table=with_rows(**{"crs-onset-phase": {"enabled": False}})),
    case("iechs-crs-resolving-below-peak-grade1", ["timing-crs-resolving"],
         lambda b: (b.temp(1, "06:00", 38.6), b.temp(2, "06:00", 39.0),
                    b.oxygen(2, "07:00", "nasal-cannula", 3), b.temp(3, "06:00", 38.4), ferritin(3, 3000)(b),
                    fibrinogen(3, 120)(b)), G1),
    case("iechs-crs-plateau-at-peak-none", ["timing-crs-resolving"],
         lambda b: (b.temp(1, "06:00", 38.6), b.temp(2, "06:00", 38.8), b.temp(3, "06:00", 38.4),
                    ferritin(3, 3000)(b), fibrinogen(3, 120)(b)), NONE),
    case("iechs-7-days-after-crs-resolution-grade1", ["timing-after-crs"],
         after_crs(ferritin(10, 1500), fibrinogen(10, 120)), G1),
    case("iechs-8-days-after-crs-resolution-none", ["timing-after-crs"],
         after_crs(ferritin(11, 1500), fibrinogen(11, 120)), NONE),
    case("iechs-crp-reworsening-after-fall-grade1", ["timing-reworsening"],
         after_crs(lab("crp", 1, 20, "mg/dL"), lab("crp", 4, 5, "mg/dL"), lab("crp", 12, 8, "mg/dL", "07:00"),
                   ferritin(12, 1500), fibrinogen(12, 120)), G1),
    case("iechs-crp-rise-below-50pct-of-nadir-none", ["timing-reworsening"],
         after_crs(lab("crp", 1, 20, "mg/dL"), lab("crp", 4, 5, "mg/dL"),
                   lab("crp", 12, 7.4, "mg/dL", "07:00"), ferritin(12, 1500), fibrinogen(12, 120)), NONE),
    case("iechs-no-crs-afebrile-grade1-flagged", ["timing-no-crs", "first-screen-day"],
         lambda b: (b.temp(1, "06:00", 37.0), ferritin(1, 1500)(b), fibrinogen(1, 120)(b)), G1,
         flags=("iec-hs-without-crs",)),
    case("iechs-no-crs-no-temperatures-flagged", ["timing-no-crs"],
         lambda b: (ferritin(6, 1500)(b), fibrinogen(6, 120)(b)), G1,
         flags=("iec-hs-without-crs", "crs-not-assessed")),
    case("iechs-day0-labs-not-screened-none", ["first-screen-day"],
         lambda b: (ferritin(0, 1500, "12:00")(b), fibrinogen(0, 120, "12:00")(b)), NONE),
    case("iechs-no-ferritin-after-day0-with-crs-not-assessable", ["ferritin"],
         after_crs(fibrinogen(6, 120)), NA),
    case("iechs-no-ferritin-no-crs-none", ["ferritin"], fibrinogen(6, 120), NONE),
    # --- suggested grade from treatment and organ support started/new on or after the screen day
    case("iechs-anakinra-after-screen-grade2", ["iec-hs-treatment"],
         screened(lambda b: b.drug("anakinra", 7, "10:00")), G2, flags=("treatment-indication-unconfirmed",)),
    case("iechs-dexamethasone-on-screen-day-grade2", ["iec-hs-treatment"],
         screened(lambda b: b.drug("dexamethasone", 6, "05:00")), G2),
    case("iechs-ruxolitinib-grade2", ["iec-hs-treatment"],
         screened(lambda b: b.medication("ruxolitinib", 7, "10:00", dose_mg=10)), G2),
    case("iechs-intrathecal-dexamethasone-grade1", ["iec-hs-treatment"],
         screened(lambda b: b.drug("dexamethasone", 7, "10:00", route="72607000")), G1),
    case("iechs-anakinra-prophylaxis-grade1", ["iec-hs-treatment"],
         screened(lambda b: b.medication("anakinra", 7, "10:00", rxnorm="72435", reason_text="prophylaxis")),
         G1),
    case("iechs-anakinra-given-before-screen-grade1", ["iec-hs-treatment", "support-lookback-hours"],
         screened(lambda b: b.drug("anakinra", 5, "10:00"), lambda b: b.drug("anakinra", 7, "10:00")), G1,
         flags=("treatment-or-support-before-screen",)),
    case("iechs-new-nasal-cannula-grade3", ["new-oxygen"],
         screened(lambda b: b.oxygen(7, "10:00", "nasal-cannula", 2)), G3),
    case("iechs-new-flow-without-device-grade3", ["new-oxygen"],
         screened(lambda b: b.flow(7, "10:00", 2)), G3),
    case("iechs-room-air-grade1", ["new-oxygen"], screened(lambda b: b.oxygen(7, "10:00", "room-air")), G1),
    case("iechs-oxygen-49h-before-screen-day-is-new-grade3", ["support-lookback-hours"],
         screened(lambda b: b.oxygen(4, "23:00", "nasal-cannula", 2),
                  lambda b: b.oxygen(8, "10:00", "nasal-cannula", 2), day=7), G3),
    case("iechs-oxygen-48h-before-screen-day-not-new-grade1", ["support-lookback-hours"],
         screened(lambda b: b.oxygen(5, "00:00", "nasal-cannula", 2),
                  lambda b: b.oxygen(8, "10:00", "nasal-cannula", 2), day=7), G1,
         flags=("treatment-or-support-before-screen",)),
    case("iechs-creatinine-1.3-over-1.5x-baseline-0.8-grade3", ["new-creatinine-rise"],
         screened(lab("creatinine", -3, 0.8, "mg/dL"), lab("creatinine", 7, 1.3, "mg/dL")), G3),
    case("iechs-creatinine-1.2-not-over-1.5x-baseline-0.8-grade1", ["new-creatinine-rise"],
         screened(lab("creatinine", -3, 0.8, "mg/dL"), lab("creatinine", 7, 1.2, "mg/dL")), G1),
    case("iechs-creatinine-no-baseline-grade1-flagged", ["new-creatinine-rise"],
         screened(lab("creatinine", 7, 3.0, "mg/dL")), G1, flags=("creatinine-baseline-missing",)),
    case("iechs-norepinephrine-grade4", ["vasopressor"],
         screened(lambda b: b.pressor("norepinephrine", 7, "10:00", 7, "20:00")), G4),
    case("iechs-vasopressin-grade4", ["vasopressor"],
         screened(lambda b: b.pressor("vasopressin", 7, "10:00", 7, "20:00")), G4),
    case("iechs-cpap-grade4", ["positive-pressure"], screened(lambda b: b.oxygen(7, "10:00", "cpap")), G4),
    case("iechs-mechanical-ventilation-and-anakinra-grade4", ["positive-pressure"],
         screened(lambda b: b.oxygen(7, "10:00", "mechanical-ventilation"),
                  lambda b: b.drug("anakinra", 7, "11:00")),
         G4),
    case("iechs-death-never-grade5", ["screen-positive"],
         screened(lambda b: b.pressor("norepinephrine", 7, "10:00", 8, "10:00"),
                  lambda b: b.deceased(8, "12:00")),
         G4, flags=("death-attribution-unconfirmed",)),
]


def grade_of(engine: Any, b: PatientBuilder, grader: IecHsGrader = GRADER) -> tuple[Findings, Any]:
    cr = run(engine, b.bundle()).patients[0].courses[0]
    return grader.grade(cr.course, cr.days[Toxicity.CRS], cr.episodes[Toxicity.CRS]), cr


@pytest.mark.parametrize(("covers", "build", "expected", "flags", "table"), CASES)
def test_iechs_case(engine, covers, build, expected, flags, table) -> None:
    b = PatientBuilder()
    build(b)
    grader = IecHsGrader(table(T), OXYGEN) if table else GRADER
    found, _ = grade_of(engine, b, grader)
    assert [(a.state.value, a.value) for a in found.assessments] == expected
    assert len(found.events) == sum(1 for s, _ in expected if s == "graded")
    for a in found.assessments:
        assert set(flags) <= set(a.flags)
        assert a.table == "astct-iechs-2023 v1"
        if a.state == State.GRADED:
            assert {"clinician-confirmation-required", "attribution-unconfirmed"} <= set(a.flags)


def table_rows() -> set[str]:
    rows = set(T.settings) | {r.key for r in T.ferritin_rules} | {r.key for r in T.timing}
    rows |= {T.transaminases.key, T.fibrinogen.key, T.cytopenia.key} | {r.key for r in T.grade_rules}
    rows |= {f"default:{d.concept}:{d.bound}" for d in T.default_limits} | set(T.inputs)
    return rows | {f"band:{b.concept}:{b.grade}" for b in T.ctcae_bands}


def test_every_iechs_table_row_has_a_case() -> None:
    covered = {c for p in CASES for c in p.values[0]} | {c for p in BAND_CASES for c in p.values[0]}
    assert table_rows() - covered == set()
    assert covered - table_rows() == set(), "a case names a row the table does not have"


def test_every_iechs_row_is_unverified_except_ctcae_bands() -> None:
    """grading.md section 3 is UNVERIFIED (decision 10); the CTCAE v5 bands are VERIFIED text (9.2)."""
    rows = [*T.settings.values(), *T.ferritin_rules, T.transaminases, T.fibrinogen, T.cytopenia, *T.timing,
            *T.grade_rules, *T.default_limits]
    assert all(r.verified is False and r.source for r in rows)
    assert all(b.verified and "CTCAE v5.0" in b.source for b in T.ctcae_bands)


# ---- CTCAE v5 bands of the cytopenia criterion, both sides of each edge (grading.md 9.2) ------------

AT = Moment(datetime(2024, 5, 7, 8, 0, tzinfo=timezone(timedelta(hours=1))))


def band(cid: str, covers: list[str], concept: str, value: float, low: float | None,
         expected: int | None) -> Any:
    return pytest.param(covers, concept, value, low, expected, id=cid)


BAND_CASES = [
    band("anc-499-g4", ["band:anc:4"], "anc", 499, 1800, 4),
    band("anc-500-g3", ["band:anc:4"], "anc", 500, 1800, 3),
    band("anc-999-g3", ["band:anc:3"], "anc", 999, 1800, 3),
    band("anc-1000-g2", ["band:anc:3"], "anc", 1000, 1800, 2),
    band("anc-1499-g2", ["band:anc:2"], "anc", 1499, 1800, 2),
    band("anc-1500-g1", ["band:anc:2"], "anc", 1500, 1800, 1),
    band("anc-1799-g1", ["band:anc:1"], "anc", 1799, 1800, 1),
    band("anc-1800-g0", ["band:anc:1"], "anc", 1800, 1800, 0),
    band("plt-24999-g4", ["band:platelets:4"], "platelets", 24999, 150000, 4),
    band("plt-25000-g3", ["band:platelets:4"], "platelets", 25000, 150000, 3),
    band("plt-49999-g3", ["band:platelets:3"], "platelets", 49999, 150000, 3),
    band("plt-50000-g2", ["band:platelets:3"], "platelets", 50000, 150000, 2),
    band("plt-74999-g2", ["band:platelets:2"], "platelets", 74999, 150000, 2),
    band("plt-75000-g1", ["band:platelets:2"], "platelets", 75000, 150000, 1),
    band("plt-150000-g0", ["band:platelets:1"], "platelets", 150000, 150000, 0),
    band("hb-7.9-g3", ["band:hemoglobin:3"], "hemoglobin", 7.9, 12.0, 3),
    band("hb-8.0-g2", ["band:hemoglobin:3"], "hemoglobin", 8.0, 12.0, 2),
    band("hb-9.9-g2", ["band:hemoglobin:2"], "hemoglobin", 9.9, 12.0, 2),
    band("hb-10.0-g1", ["band:hemoglobin:2"], "hemoglobin", 10.0, 12.0, 1),
    band("hb-12.0-g0", ["band:hemoglobin:1"], "hemoglobin", 12.0, 12.0, 0),
    band("hb-11.9-no-range-default-lln-g1", ["default:hemoglobin:low"], "hemoglobin", 11.9, None, 1),
]


@pytest.mark.parametrize(("covers", "concept", "value", "low", "expected"), BAND_CASES)
def test_ctcae_band(covers, concept, value, low, expected) -> None:
    r = Reading(concept, AT, Quantity(value), "Observation/x", low=low)
    assert ctcae_grade(GRADER.lk, r)[0] == expected


def test_ctcae_band_bound_straddling_is_undecided() -> None:
    assert ctcae_grade(GRADER.lk, Reading("anc", AT, Quantity(400, "<"), "Observation/x", low=1800)) == (4, ())
    r = Reading("anc", AT, Quantity(1200, ">"), "Observation/x", low=1800)
    assert ctcae_grade(GRADER.lk, r) == (None, ("lab-bound-straddles-threshold",))


# ---- the episode, its assessment and event ------------------------------------------------------

def built(*steps: Build) -> PatientBuilder:
    b = PatientBuilder()
    run_steps(b, *steps)
    return b


def test_episode_assessment_and_event(engine) -> None:
    b = built(after_crs(ferritin(-3, 250), ferritin(6, 1500), lab("alt", 6, 90, "U/L", high=40),
                        fibrinogen(6, 130, "14:00"), ferritin(7, 4200), fibrinogen(7, 110),
                        ferritin(9, 450)))  # day 9: below 2 x ULN and 2 x baseline, the key finding resolved
    found, cr = grade_of(engine, b)
    (a,), (e,) = found.assessments, found.events
    assert (e.key, e.state, e.max_grade, e.onset_day, e.resolved_day) == ("iec-hs-1", State.GRADED, 1, 6, 9)
    assert e.onset.isoformat() == "2024-05-07T14:00:00+01:00"  # the fibrinogen completed the screen
    assert e.abatement == a.end and a.end is not None and a.end.isoformat() == "2024-05-10T08:00:00+01:00"
    assert e.details == (("screen", "positive"),) and e.assessment is a
    assert (a.toxicity, a.code, a.start) == (Toxicity.IEC_HS, "iec-hs-grade", e.onset)
    comps = {(c.code, c.value) for c in a.components}
    assert {("ferritin", 4200), ("ferritin-ratio", 14.0), ("ferritin-baseline-ratio", 16.8), ("alt", 90),
            ("fibrinogen", 110), ("cytopenia", False), ("screen-criterion", "ferritin-uln"),
            ("screen-criterion", "ferritin-baseline"), ("screen-criterion", "fibrinogen"),
            ("screen-criterion", "timing-after-crs")} <= comps
    assert set(a.evidence) <= {r.ref for _, r in cr.course.readings}
    assert "Observation/fibrinogen-8" in a.evidence
    assert a.reasons[0] == "ferritin 1500 ng/mL > 2 x ULN (300) and > 2 x baseline (250 on day -3) on day 6"
    assert any(r.startswith("timing: day 6 is 3 day(s) after CRS resolved on day 3") for r in a.reasons)


def test_second_episode_after_ferritin_resolution(engine) -> None:
    b = built(screened(ferritin(7, 400), ferritin(9, 2000), fibrinogen(9, 100), day=5))
    found, _ = grade_of(engine, b)
    assert [(e.key, e.onset_day, e.resolved_day) for e in found.events] == [("iec-hs-1", 5, 7),
                                                                             ("iec-hs-2", 9, None)]


def test_open_episode_is_extended_beyond_the_timing_window(engine) -> None:
    """Once open, later findings extend the episode without a new timing check (day 14 > resolution + 7)."""
    b = built(screened(ferritin(14, 5000), fibrinogen(14, 90), lambda b: b.drug("anakinra", 14, "12:00")))
    found, _ = grade_of(engine, b)
    (a,), (e,) = found.assessments, found.events
    assert (e.max_grade, e.onset_day, e.resolved_day) == (2, 6, None)
    assert a.end is not None and a.end.isoformat() == "2024-05-15T08:00:00+01:00"


def test_not_assessable_without_ferritin_names_it(engine) -> None:
    found, _ = grade_of(engine, built(crs_resolved))
    (a,) = found.assessments
    assert (a.state, a.value, a.missing, found.events) == (State.NOT_ASSESSABLE, None,
                                                           ("ferritin (LOINC 2276-4) after day 0",), ())


def test_not_assessable_without_second_criterion_names_it(engine) -> None:
    (a,) = grade_of(engine, built(after_crs(F6)))[0].assessments
    assert a.missing == ("ALT (LOINC 1742-6) or AST (LOINC 1920-8), fibrinogen (LOINC 3255-7) or a blood "
                         "count (platelets 777-3, ANC 751-8, hemoglobin 718-7) within 48 h of the raised "
                         "ferritin",)
    assert a.evidence == ("Observation/ferritin-5",)


def test_high_ferritin_in_crs_grade3_is_not_iechs_and_crs_is_unchanged(engine) -> None:
    """grading.md 3.1: IEC-HS must not be confused with CRS. Ferritin 5000 during a grade-3 CRS with normal
    ALT, fibrinogen and counts: no IEC-HS, and the CRS grades are those of the CRS grader alone."""
    labs = [step for day in (2, 3, 5)
            for step in (ferritin(day, 5000), lab("alt", day, 60, "U/L", high=40),
                         fibrinogen(day, 320, low=200), count("platelets", day, 180000, 150000))]
    b = built(lambda b: (b.temp(1, "06:00", 38.9), b.temp(2, "06:00", 39.4), b.temp(3, "06:00", 38.2),
                         b.pressor("norepinephrine", 2, "08:00", 2, "20:00"), b.temp(4, "06:00", 36.9)),
              *labs)
    cr = run(engine, b.bundle()).patients[0].courses[0]
    before = [(d.day, d.state, d.grade) for d in cr.days[Toxicity.CRS]]
    assert GRADER.grade(cr.course, cr.days[Toxicity.CRS], cr.episodes[Toxicity.CRS]) == Findings()
    assert [(d.day, d.state, d.grade) for d in cr.days[Toxicity.CRS]] == before
    assert [(e.onset_day, e.max_grade, e.resolved_day) for e in cr.episodes[Toxicity.CRS]] == [(1, 3, 4)]


def test_table_rejects_grade5_rule_missing_timing_rule_and_unknown_device() -> None:
    for change, message in ((lambda d: d["grade_rules"][1].update(grade=5), "grade 5"),
                            (lambda d: d.update(timing=d["timing"][1:]), "timing"),
                            (lambda d: d["grade_rules"][2].update(devices=["nasal-prongs"]), "nasal-prongs")):
        data = msgspec.to_builtins(T)
        change(data)
        with pytest.raises(ConfigError, match=message):
            IecHsGrader(msgspec.convert(data, IecHsTable), OXYGEN)


def test_grader_is_pure() -> None:
    """House style habit 1: the grader imports no FHIR, I/O or web module."""
    allowed = {"__future__", "collections.abc", "dataclasses", "datetime", "typing", "errors", "model",
               "tables", "timeline", "result", "table", "labs", "screen", "timing", "suggest", "grader"}
    for path in Path(iechs.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        mods = {n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom)}
        mods |= {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        assert mods <= allowed, f"{path.name} imports {sorted(mods - allowed)}"
