"""CAR-HEMATOTOX score, case by case (grading.md 5.1-5.2): each cut-off on both sides, the CRP unit trap,
the baseline window rules and the bounds method for missing values.

Each case names the rows of mappings/car-hematotox-2021.yaml it covers (`covers`); a meta-test checks that
every row has at least one case. Labs are drawn on day -6 at 08:00, lymphodepletion (fludarabine) starts on
day -5 at 09:00, unless a case says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from fhirbuild import PatientBuilder
from helpers import run

from cart_fhir.grading.hematotox import HematotoxScorer, HematotoxTable
from cart_fhir.grading.registry import load_all
from cart_fhir.grading.result import Assessment, State, Toxicity
from cart_fhir.pipeline import Engine
from cart_fhir.tables import load_yaml_table

G, AL, NA = "graded", "at-least", "not-assessable"
SCORER = HematotoxScorer(load_all().get(HematotoxTable))
NORMAL: dict[str, tuple[Any, ...]] = {"platelets": (200, "10*3/uL"), "anc": (3.0, "10*3/uL"),
                                      "hemoglobin": (12.0, "g/dL"), "crp": (0.5, "mg/dL"),
                                      "ferritin": (300, "ng/mL")}
ALL_ZERO = ["platelets-0", "anc-0", "hemoglobin-0", "crp-0", "ferritin-0"]


def labs(day: int = -6, hhmm: str = "08:00", ld: tuple[int, str | None] | None = (-5, "09:00"),
         **over: tuple[Any, ...] | None) -> Callable[[PatientBuilder], None]:
    """The five variables (NORMAL unless overridden; None leaves one out) and the first LD dose."""
    def build(b: PatientBuilder) -> None:
        for var, v in (NORMAL | over).items():
            if v is not None:
                value, unit, *comparator = v
                b.lab(var, day, hhmm, value, unit, comparator=comparator[0] if comparator else None)
        if ld is not None:
            b.medication("fludarabine", ld[0], ld[1], rxnorm="24698")
    return build


def then(*builds: Callable[[PatientBuilder], Any]) -> Callable[[PatientBuilder], None]:
    def build(b: PatientBuilder) -> None:
        for f in builds:
            f(b)
    return build


def case(cid: str, covers: list[str], build: Callable[[PatientBuilder], Any],
         expected: tuple[str, int | None, str | None]) -> Any:
    return pytest.param(covers, build, expected, id=cid)


def score(engine: Engine, build: Callable[[PatientBuilder], Any]) -> Assessment:
    b = PatientBuilder()
    build(b)
    return SCORER.score(run(engine, b.bundle()).patients[0].courses[0].course)


CASES = [
    case("hematotox-all-normal-score0-low", [*ALL_ZERO, "risk:low"], labs(), (G, 0, "low")),
    # --- platelets: > 175,000 = 0; 75,000-175,000 = 1; < 75,000 = 2
    case("hematotox-plt-175001-0pts", ["platelets-0"], labs(platelets=(175001, "/uL")), (G, 0, "low")),
    case("hematotox-plt-175000-1pt", ["platelets-1"], labs(platelets=(175000, "/uL")), (G, 1, "low")),
    case("hematotox-plt-75000-1pt", ["platelets-1"], labs(platelets=(75000, "/uL")), (G, 1, "low")),
    case("hematotox-plt-74999-2pts", ["platelets-2", "risk:high"], labs(platelets=(74999, "/uL")),
         (G, 2, "high")),
    case("hematotox-plt-74.999k-per-uL-2pts", ["platelets-2"], labs(platelets=(74.999, "10*3/uL")),
         (G, 2, "high")),
    # --- ANC: < 1,200 = 1 (exactly 1,200 scores 0: inclusivity unverified)
    case("hematotox-anc-1200-0pts", ["anc-0"], labs(anc=(1.2, "10*3/uL")), (G, 0, "low")),
    case("hematotox-anc-1199-1pt", ["anc-1", "risk:low"], labs(anc=(1199, "/uL")), (G, 1, "low")),
    # --- hemoglobin: < 9.0 g/dL = 1
    case("hematotox-hb-9.0-0pts", ["hemoglobin-0"], labs(hemoglobin=(9.0, "g/dL")), (G, 0, "low")),
    case("hematotox-hb-8.9-1pt", ["hemoglobin-1"], labs(hemoglobin=(8.9, "g/dL")), (G, 1, "low")),
    case("hematotox-hb-89gL-is-8.9gdL-1pt", ["hemoglobin-1"], labs(hemoglobin=(89, "g/L")), (G, 1, "low")),
    case("hematotox-hb-90gL-is-9.0gdL-0pts", ["hemoglobin-0"], labs(hemoglobin=(90, "g/L")), (G, 0, "low")),
    # --- CRP: >= 3.0 mg/dL = 1; the unit trap (mg/L / 10)
    case("hematotox-crp-2.9mgdL-0pts", ["crp-0"], labs(crp=(2.9, "mg/dL")), (G, 0, "low")),
    case("hematotox-crp-3.0mgdL-1pt", ["crp-1"], labs(crp=(3.0, "mg/dL")), (G, 1, "low")),
    case("hematotox-crp-30mgL-is-3mgdL-1pt", ["crp-1"], labs(crp=(30, "mg/L")), (G, 1, "low")),
    case("hematotox-crp-29mgL-is-2.9mgdL-0pts", ["crp-0"], labs(crp=(29, "mg/L")), (G, 0, "low")),
    # --- ferritin: < 650 = 0; 650-2,000 = 1; > 2,000 = 2
    case("hematotox-ferritin-649-0pts", ["ferritin-0"], labs(ferritin=(649, "ng/mL")), (G, 0, "low")),
    case("hematotox-ferritin-650-1pt", ["ferritin-1"], labs(ferritin=(650, "ng/mL")), (G, 1, "low")),
    case("hematotox-ferritin-2000-1pt", ["ferritin-1"], labs(ferritin=(2000, "ug/L")), (G, 1, "low")),
    case("hematotox-ferritin-2001-2pts", ["ferritin-2", "risk:high"], labs(ferritin=(2001, "ng/mL")),
         (G, 2, "high")),
    case("hematotox-all-worst-score7-high", ["platelets-2", "anc-1", "hemoglobin-1", "crp-1", "ferritin-2"],
         labs(platelets=(50, "10*3/uL"), anc=(0.5, "10*3/uL"), hemoglobin=(8.0, "g/dL"), crp=(5.0, "mg/dL"),
              ferritin=(3000, "ng/mL")), (G, 7, "high")),
    # --- comparators are bounds (grading.md 0.4)
    case("hematotox-ferritin-gt2000-2pts", ["ferritin-2"], labs(ferritin=(2000, "ng/mL", ">")),
         (G, 2, "high")),
    case("hematotox-ferritin-gt1500-straddles-not-assessable", ["ferritin-1", "ferritin-2"],
         labs(ferritin=(1500, "ng/mL", ">")), (NA, None, None)),
    case("hematotox-crp-lt0.5-0pts", ["crp-0"], labs(crp=(0.5, "mg/dL", "<")), (G, 0, "low")),
    case("hematotox-hscrp-gt10mgL-capped-low-determined", ["crp-0", "crp-1"], labs(crp=(10, "mg/L", ">")),
         (AL, 0, "low")),
    # --- 5.2 missing values: bounds
    case("hematotox-missing-crp-high-determined", ["risk:high"],
         labs(crp=None, platelets=(60, "10*3/uL")), (AL, 2, "high")),
    case("hematotox-missing-crp-low-determined", ["risk:low"], labs(crp=None), (AL, 0, "low")),
    case("hematotox-missing-ferritin-not-assessable", ["ferritin-2"], labs(ferritin=None), (NA, None, None)),
    case("hematotox-missing-two-score1-not-assessable", ["ferritin-1"],
         labs(crp=None, hemoglobin=None, ferritin=(700, "ng/mL")), (NA, None, None)),
    # --- 5.2 baseline window: [LD start - 7 days, first LD dose)
    case("hematotox-ld-day-before-dose-counts", ["ld-lookback-days"],
         then(labs(), lambda b: b.lab("ferritin", -5, "08:00", 2500, "ng/mL")), (G, 2, "high")),
    case("hematotox-ld-day-after-dose-ignored", ["ld-lookback-days"],
         then(labs(), lambda b: b.lab("ferritin", -5, "10:00", 2500, "ng/mL")), (G, 0, "low")),
    case("hematotox-ld-bare-date-same-day-ignored", ["ld-lookback-days"],
         then(labs(ld=(-5, None)), lambda b: b.lab("ferritin", -5, "08:00", 2500, "ng/mL")), (G, 0, "low")),
    case("hematotox-ld-minus-7-days-counts", ["ld-lookback-days"], labs(day=-12), (G, 0, "low")),
    case("hematotox-ld-minus-8-days-too-old", ["ld-lookback-days"], labs(day=-13), (NA, None, None)),
    case("hematotox-ld-older-than-day-14-is-prior-therapy", ["ld-search-first-day", "no-ld-first-day"],
         labs(day=-13, ld=(-15, "09:00")), (G, 0, "low")),
    case("hematotox-ld-day-14-is-used", ["ld-search-first-day"], labs(day=-13, ld=(-14, "09:00")),
         (NA, None, None)),
    case("hematotox-no-ld-day-minus3-counts", ["no-ld-last-day"], labs(day=-3, ld=None), (G, 0, "low")),
    case("hematotox-no-ld-day-minus2-too-late", ["no-ld-last-day"], labs(day=-2, ld=None), (NA, None, None)),
    case("hematotox-no-ld-day-minus14-counts", ["no-ld-first-day"], labs(day=-14, ld=None), (G, 0, "low")),
    case("hematotox-no-ld-day-minus15-too-old", ["no-ld-first-day"], labs(day=-15, ld=None),
         (NA, None, None)),
    case("hematotox-latest-value-wins", ["ld-lookback-days"],
         then(labs(day=-7, platelets=(60, "10*3/uL")),
              lambda b: b.lab("platelets", -6, "08:00", 200, "10*3/uL")),
         (G, 0, "low")),
    case("hematotox-no-labs-not-assessable", ["ld-lookback-days"],
         lambda b: b.medication("fludarabine", -5, "09:00", rxnorm="24698"), (NA, None, None)),
]


@pytest.mark.parametrize(("covers", "build", "expected"), CASES)
def test_hematotox_case(engine, covers, build, expected) -> None:
    a = score(engine, build)
    assert (a.toxicity, a.code) == (Toxicity.CAR_HEMATOTOX, "car-hematotox-score")
    assert (a.state.value, a.value, a.interpretation) == expected
    assert bool(a.missing) == (a.state != State.GRADED)


def test_every_hematotox_row_has_a_case() -> None:
    t = load_yaml_table("car-hematotox-2021.yaml", HematotoxTable)
    rows = {b.id for b in t.bands} | {f"risk:{r.group}" for r in t.risk} | set(t.settings)
    # gcsf-lookback-days: test_gcsf_before_the_draw_is_a_caveat
    covered = {c for p in CASES for c in p.values[0]} | {"gcsf-lookback-days"}
    assert rows - covered == set()
    assert covered - rows == set(), "a case names a row the table does not have"


def test_components_evidence_and_reasons(engine) -> None:
    a = score(engine, labs(platelets=(74999, "/uL"), crp=(30, "mg/L")))
    assert {c.code: c.value for c in a.components} == {"platelets": 2, "anc": 0, "hemoglobin": 0, "crp": 1,
                                                       "ferritin": 0}
    assert len(a.evidence) == 5 and all(e.startswith("Observation/") for e in a.evidence)
    assert "CRP 3 mg/dL on day -6: 1 point(s)" in a.reasons and "score 3: high risk" in a.reasons
    assert a.flags == ("unverified-cutoffs",) and a.table == "car-hematotox-2021 v1"
    assert (a.start.isoformat(), a.end and a.end.isoformat()) == ("2024-04-19T00:00:00+01:00",
                                                                  "2024-04-26T09:00:00+01:00")


def test_missing_variables_are_named(engine) -> None:
    a = score(engine, labs(crp=None, ferritin=(1500, "ng/mL", ">")))
    crp = "CRP (LOINC 1988-5) before lymphodepletion (day -12 to the first fludarabine dose on day -5)"
    assert a.missing == (crp, "exact Ferritin (reported as >1500 ng/mL, could score 1-2)")
    assert a.state == State.NOT_ASSESSABLE and a.value is None


def test_fallback_window_is_flagged(engine) -> None:
    a = score(engine, labs(day=-4, ld=None))
    assert "no-lymphodepletion-data" in a.flags
    assert SCORER.unverified_rows(a)[-2:] == ("car-hematotox-2021:no-ld-first-day",
                                              "car-hematotox-2021:no-ld-last-day")


@pytest.mark.parametrize(("gcsf_day", "flagged"), [
    pytest.param(-12, True, id="hematotox-gcsf-6-days-before-anc-draw-flagged"),
    pytest.param(-13, True, id="hematotox-gcsf-7-days-before-anc-draw-flagged"),
    pytest.param(-14, False, id="hematotox-gcsf-8-days-before-anc-draw-not-flagged"),
])
def test_gcsf_before_the_draw_is_a_caveat(engine, gcsf_day: int, flagged: bool) -> None:
    a = score(engine, then(labs(), lambda b: b.medication("filgrastim", gcsf_day, "08:00", rxnorm="68442")))
    assert (a.state, a.value) == (State.GRADED, 0)
    assert ("g-csf-before-draw" in a.flags) == flagged
    assert bool(a.supporting) == flagged


def test_table_rejects_bands_with_a_hole() -> None:
    data = msgspec.to_builtins(load_yaml_table("car-hematotox-2021.yaml", HematotoxTable))
    anc0 = next(b for b in data["bands"] if b["id"] == "anc-0")
    anc0["min_inclusive"] = False  # exactly 1,200 would fall in no band
    with pytest.raises(msgspec.ValidationError, match="cover every value"):
        msgspec.convert(data, HematotoxTable)
