"""Issue 13: impossible values after unit conversion, wrong FHIR shapes and PHI-free messages are bad input.

Each row reproduces a finding of the issue ("What was seen"): before, each input graded with exit 0 and no
warning (a 101.1 Cel fever, a 38.4 [degF] temperature moving the CRS onset, a Condition code given as a list
losing a grade-3 infection).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from fhirbuild import LOINC, UCUM, PatientBuilder
from helpers import daily, run

from cart_fhir.errors import ConfigError, InputErrors
from cart_fhir.pipeline import Engine
from cart_fhir.tables import load_tables, mappings_dir

G = "graded"


@pytest.fixture()
def lenient(engine: Engine) -> Engine:
    return Engine(tables=engine.tables, strict=False)


def _temp(value: float, unit: str) -> Any:
    return lambda b: b.temp(2, "06:00", value, unit=unit)


def _sbp(value: float) -> Any:
    return lambda b: b.bp(2, "06:00", value, 60)


IMPLAUSIBLE = [
    pytest.param(_temp(101.1, "Cel"), ["body-temperature", "25-45 Cel", "Fahrenheit value labelled Cel"],
                 "101.1 Cel", id="fahrenheit-labelled-celsius"),
    pytest.param(_temp(38.4, "[degF]"), ["after conversion from [degF]", "25-45 Cel",
                                         "Celsius value labelled [degF]"], "38.4 [degF]",
                 id="celsius-labelled-fahrenheit"),
    pytest.param(_temp(1000, "Cel"), ["body-temperature", "25-45 Cel", "row body-temperature"], "1000.0 Cel",
                 id="temperature-1000-celsius"),
    pytest.param(_temp(37.0, "K"), ["after conversion from K", "Celsius value labelled K"], "37.0 K",
                 id="celsius-labelled-kelvin"),
    pytest.param(_temp(24.9, "Cel"), ["25-45 Cel"], "24.9 Cel", id="temperature-below-25"),
    pytest.param(_temp(45.1, "Cel"), ["25-45 Cel"], "45.1 Cel", id="temperature-above-45"),
    pytest.param(_sbp(-80), ["component[8480-6]", "systolic-bp", "30-300 mm[Hg]"], "-80.0 mm[Hg]",
                 id="negative-systolic-bp"),
    pytest.param(_sbp(301), ["systolic-bp", "30-300 mm[Hg]"], "301.0 mm[Hg]", id="systolic-bp-above-300"),
    pytest.param(lambda b: b.obs({"system": LOINC, "code": "59408-5"}, 2, "06:00", "spo2",
                                 valueQuantity={"value": 101, "unit": "%", "system": UCUM, "code": "%"}),
                 ["spo2", "0-100 %"], "101.0 %", id="spo2-above-100"),
    pytest.param(lambda b: b.lab("anc", 2, "06:00", -0.5, "10*3/uL"), ["anc", ">= 0 /uL"], "-0.5 10*3/uL",
                 id="negative-anc"),
    pytest.param(lambda b: b.lab("crp", 2, "06:00", -1, "mg/L"), ["crp", ">= 0 mg/dL"], "-1.0 mg/L",
                 id="negative-crp"),
    pytest.param(lambda b: b.lab("ferritin", 2, "06:00", -3, "ng/mL"), ["ferritin", ">= 0 ng/mL"], "-3.0 ng/mL",
                 id="negative-ferritin"),
]


@pytest.mark.parametrize(("build", "words", "value"), IMPLAUSIBLE)
def test_implausible_value_is_bad_input_naming_concept_and_range(engine: Engine, build: Any, words: list[str],
                                                                 value: str) -> None:
    b = PatientBuilder()
    obs = build(b)
    with pytest.raises(InputErrors) as excinfo:
        run(engine, b.bundle(), name="chart.json")
    (err,) = excinfo.value.errors
    assert all(w in err.message for w in words), err.message
    assert "plausible range" in err.message and err.location.resource == f"Observation/{obs['id']}"
    assert value.split()[0] not in err.message  # the value is PHI: only --show-values prints it
    assert err.value == value and value in err.describe(show_values=True)


PLAUSIBLE = [
    pytest.param(_temp(25, "Cel"), id="temperature-25-kept"),
    pytest.param(_temp(45, "Cel"), id="temperature-45-kept"),
    pytest.param(_temp(100.4, "[degF]"), id="fahrenheit-100.4-kept"),
    pytest.param(_sbp(30), id="systolic-bp-30-kept"),
    pytest.param(_sbp(300), id="systolic-bp-300-kept"),
    pytest.param(lambda b: b.lab("anc", 2, "06:00", 0, "10*3/uL"), id="anc-0-kept"),
]


@pytest.mark.parametrize("build", PLAUSIBLE)
def test_values_at_the_limits_are_read(engine: Engine, build: Any) -> None:
    b = PatientBuilder()
    build(b)
    assert not run(engine, b.bundle()).report.errors


def test_skip_invalid_skips_the_implausible_reading_and_grades_the_rest(lenient: Engine) -> None:
    b = PatientBuilder()
    b.temp(1, "06:00", 38.6)
    b.temp(2, "06:00", 101.1)  # before: graded as 101.1 Cel, a fever on day 2
    res = run(lenient, b.bundle())
    (err,) = res.report.errors
    assert "Fahrenheit" in err.message
    assert daily(res, "crs")[1] == (G, 1) and 2 not in daily(res, "crs")


def test_fahrenheit_mislabel_no_longer_moves_the_crs_onset(lenient: Engine) -> None:
    b = PatientBuilder()
    b.temp(0, "23:00", 38.4, unit="[degF]")  # before: 3.6 Cel, read as a reading of day 0
    b.temp(1, "06:00", 38.6)
    res = run(lenient, b.bundle())
    assert len(res.report.errors) == 1
    assert res.patients[0].courses[0].episodes[next(iter(res.patients[0].courses[0].episodes))][0].onset_day == 1


def _copy_mappings(tmp_path: Path, old: str, new: str) -> str:
    folder = tmp_path / "mappings"
    shutil.copytree(mappings_dir(), folder)
    path = folder / "plausibility.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return str(folder)


@pytest.mark.parametrize(("old", "new", "words"), [
    pytest.param("concept: spo2, min: 0", "concept: spo3, min: 0", ["spo3", "not a quantity concept"],
                 id="unknown-concept"),
    pytest.param('concept: spo2, min: 0, max: 100, unit: "%"', 'concept: spo2, min: 0, max: 100, unit: "1"',
                 ["canonical unit"], id="wrong-unit"),
    pytest.param("min: 25, max: 45", "min: 45, max: 25", ["min is above max"], id="min-above-max"),
    pytest.param("- {id: spo2,", "- {concept: spo2, id: temp2, min: 1, unit: '%', verified: true, source: x}\n  "
                 "- {id: spo2,", ["spo2 has two rows"], id="duplicate-concept"),
])
def test_plausibility_table_is_checked_at_start_up(tmp_path: Path, old: str, new: str, words: list[str]) -> None:
    from cart_fhir.grading.registry import GRADERS, table_files

    folder = _copy_mappings(tmp_path, old, new)
    with pytest.raises(ConfigError) as excinfo:
        load_tables(folder, table_files(GRADERS))
    assert all(w in str(excinfo.value) for w in words), str(excinfo.value)


# ---- structure (issue 13 item 5) ---------------------------------------------------------------

def _coding_object(b: PatientBuilder) -> dict[str, Any]:
    obs = b.temp(2, "06:00", 38.6)
    obs["code"]["coding"] = obs["code"]["coding"][0]  # before: the CRS episode disappeared
    return obs


def _condition_code_list(b: PatientBuilder) -> dict[str, Any]:
    cond = b.coded_condition("http://snomed.info/sct", "91302008", 2, "08:00")
    cond["code"] = [cond["code"]]  # before: a grade-3 infection was lost
    return cond


def _set(build: Any, key: str, value: Any) -> Any:
    def make(b: PatientBuilder) -> dict[str, Any]:
        res = build(b)
        res[key] = value
        return res
    return make


SHAPES = [
    pytest.param(_coding_object, "Observation.code.coding must be a list of Coding objects, got an object",
                 id="observation-coding-object"),
    pytest.param(_condition_code_list, "Condition.code must be a CodeableConcept object, got a list",
                 id="condition-code-list"),
    pytest.param(_set(lambda b: b.temp(2, "06:00", 38.6), "code", {"coding": ["8310-5"]}),
                 "Observation.code.coding[0] must be a Coding object, got a string", id="coding-item-string"),
    pytest.param(_set(lambda b: b.temp(2, "06:00", 38.6), "code", {"coding": [{"system": LOINC, "code": 8310}]}),
                 "Observation.code.coding[0].code must be a string, got a number", id="code-number"),
    pytest.param(_set(lambda b: b.temp(2, "06:00", 38.6), "status", ["final"]),
                 "Observation.status must be a string, got a list", id="observation-status-list"),
    pytest.param(_set(lambda b: b.bp(2, "06:00", 85, 50), "component", {"code": {}}),
                 "Observation.component must be a list, got an object", id="component-object"),
    pytest.param(_set(lambda b: b.bp(2, "06:00", 85, 50), "component", ["8480-6"]),
                 "Observation.component[0] must be an object, got a string", id="component-item-string"),
    pytest.param(_set(lambda b: b.lab("crp", 2, "06:00", 1, "mg/dL"), "referenceRange", {"high": {}}),
                 "Observation.referenceRange must be a list, got an object", id="reference-range-object"),
    pytest.param(_set(lambda b: b.coded_condition("http://snomed.info/sct", "91302008", 2, "08:00"),
                      "onsetPeriod", "2024-05-03"),
                 "Condition.onsetPeriod must be a Period object, got a string", id="onset-period-string"),
    pytest.param(_set(lambda b: b.coded_condition("http://snomed.info/sct", "91302008", 2, "08:00"),
                      "verificationStatus", [{"coding": []}]),
                 "Condition.verificationStatus must be a CodeableConcept object", id="verification-status-list"),
    pytest.param(_set(lambda b: b.drug("tocilizumab", 2, "08:00"), "medicationCodeableConcept",
                      {"coding": {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "612865"}}),
                 "MedicationAdministration.medicationCodeableConcept.coding must be a list", id="drug-coding-object"),
    pytest.param(_set(lambda b: b.drug("tocilizumab", 2, "08:00"), "dosage", [{"route": {}}]),
                 "MedicationAdministration.dosage must be a Dosage object, got a list", id="ma-dosage-list"),
    pytest.param(_set(lambda b: b.drug("tocilizumab", 2, "08:00"), "reasonReference", {"reference": "x"}),
                 "MedicationAdministration.reasonReference must be a list", id="reason-reference-object"),
    pytest.param(_set(lambda b: b.drug("tocilizumab", 2, "08:00"), "medicationReference", "Medication/m1"),
                 "must be a CodeableConcept object", id="medication-cc-and-reference-string"),
    pytest.param(lambda b: _set(lambda b2: b2.resources[0], "deceasedDateTime", ["2024-05-09"])(b),
                 "Patient.deceasedDateTime must be a string, got a list", id="deceased-list"),
    pytest.param(lambda b: _set(lambda b2: b2.resources[0], "identifier", {"value": "MRN-1"})(b),
                 "Patient.identifier must be a list, got an object", id="patient-identifier-object"),
]


@pytest.mark.parametrize(("build", "message"), SHAPES)
def test_wrong_shape_where_the_graders_read_is_bad_input(engine: Engine, build: Any, message: str) -> None:
    b = PatientBuilder()
    b.temp(1, "06:00", 38.6)
    res = build(b)
    if message == "must be a CodeableConcept object":  # a medicationReference beside a broken CodeableConcept
        res["medicationCodeableConcept"] = "tocilizumab"
    with pytest.raises(InputErrors) as excinfo:
        run(engine, b.bundle(), name="chart.json")
    (err,) = excinfo.value.errors
    assert message in err.message, err.message
    assert err.location.resource == f"{res['resourceType']}/{res['id']}"


def test_birth_date_error_names_the_element_not_the_date(engine: Engine) -> None:
    b = PatientBuilder(birth="1961-07-32")
    with pytest.raises(InputErrors) as excinfo:
        run(engine, b.bundle())
    (err,) = excinfo.value.errors
    assert "Patient.birthDate is not a valid FHIR date" in err.message and "1961" not in str(err)
    assert "1961-07-32" in err.describe(show_values=True)


def test_effective_time_error_names_the_element_not_the_time(engine: Engine) -> None:
    b = PatientBuilder()
    b.obs({"system": LOINC, "code": "8310-5"}, 2, "08:00", "temp", effectiveDateTime="2024-13-45T08:00:00Z",
          valueQuantity={"value": 38.0, "unit": "Cel"})
    with pytest.raises(InputErrors) as excinfo:
        run(engine, b.bundle())
    (err,) = excinfo.value.errors
    assert "Observation.effectiveDateTime is not a valid FHIR dateTime" in err.message
    assert "2024-13-45" not in str(err) and "2024-13-45" in err.describe(show_values=True)
