"""The input layer (input-contract.md): containers, references, day 0, units, site ConceptMaps, statuses,
malformed input, lenient mode and the run report.

Most tests build one small patient with PatientBuilder (infusion on 2024-05-01 10:00+01:00 = day 0) and
check either the daily CRS/ICANS grades that come out, or the errors and counts in the run report.
"""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhirbuild import BASE, LOINC, RXNORM, UCUM, PatientBuilder, bundle_of
from helpers import daily, run

from cart_fhir.errors import BadInput, ConfigError, InputErrors
from cart_fhir.ingest.read import read_bytes, read_paths
from cart_fhir.ingest.units import UnitError
from cart_fhir.pipeline import Engine, RunResult
from cart_fhir.timeline import Course

G = "graded"
CS_OBS = f"{BASE}/CodeSystem/cart-observation"
CS_O2 = f"{BASE}/CodeSystem/oxygen-delivery"
CS_PRODUCT = f"{BASE}/CodeSystem/cart-product"
CPT = "http://www.ama-assn.org/go/cpt"
SITE = "https://hospital.example/flowsheet"


@pytest.fixture(scope="module", autouse=True)
def _warm_ucum(engine: Engine) -> None:
    """Build the UCUM registry and parser once (~2 s per process) so each test below measures the adapter."""
    for unit in ("qqq-not-a-unit", "mg"):
        with pytest.raises(UnitError):
            engine.units.convert(1.0, unit, "Cel")


@pytest.fixture()
def lenient(engine: Engine) -> Engine:
    return Engine(tables=engine.tables, strict=False)


def standard_patient(**kw: Any) -> PatientBuilder:
    """Fever on day 1 (grade 1), nasal cannula 3 L/min with fever on day 2 (grade 2), ICE 8 on day 3."""
    b = PatientBuilder(**kw)
    b.temp(1, "06:00", 38.6)
    b.temp(2, "06:00", 38.9)
    b.oxygen(2, "07:00", "nasal-cannula", 3)
    b.ice(3, "09:00", 8)
    return b


STANDARD_CRS = {1: (G, 1), 2: (G, 2)}


def errors_of(excinfo: pytest.ExceptionInfo[InputErrors]) -> list[BadInput]:
    assert excinfo.value.errors, "InputErrors without errors"
    return excinfo.value.errors


def obs_ref(obs: dict[str, Any]) -> str:
    return f"Observation/{obs['id']}"


def course_of(result: RunResult, patient: int = 0, n: int = 0) -> Course:
    return result.patients[patient].courses[n].course


def by_id(result: RunResult, pid: str) -> Any:
    return next(p for p in result.patients if p.patient.id == pid)


# =====================================================================================================
# 1. Containers
# =====================================================================================================

def wrap(b: PatientBuilder, btype: str) -> dict[str, Any]:
    """The patient's resources in a Bundle of `btype`, with the extras each type carries."""
    bundle = b.bundle(btype)
    if btype == "searchset":
        for e in bundle["entry"]:
            if e["resource"]["resourceType"] == "Patient":
                e["search"] = {"mode": "include"}
        bundle["entry"].append({"resource": {"resourceType": "OperationOutcome", "id": "oo1",
                                             "issue": [{"severity": "information", "code": "informational"}]},
                                "search": {"mode": "outcome"}})
    elif btype == "document":
        bundle["identifier"] = {"system": "https://example.org/docs", "value": "d1"}
        bundle["entry"].insert(0, {"fullUrl": "urn:uuid:7f5e0d2a-0000-4000-8000-000000000001",
                                   "resource": {"resourceType": "Composition", "id": "comp1", "status": "final",
                                                "type": {"text": "discharge summary"}, "subject": b.subject(),
                                                "date": b.at(5, "12:00"), "title": "CAR-T course"}})
    elif btype == "message":
        bundle["entry"].insert(0, {"fullUrl": "urn:uuid:7f5e0d2a-0000-4000-8000-000000000002",
                                   "resource": {"resourceType": "MessageHeader", "id": "mh1",
                                                "eventCoding": {"system": "https://example.org/events",
                                                                "code": "cart-data"},
                                                "source": {"endpoint": "https://example.org/ehr"}}})
    return bundle


@pytest.mark.parametrize("btype", ["collection", "searchset", "transaction", "batch", "document", "message"])
def test_every_bundle_type_gives_the_same_grades(engine: Engine, btype: str) -> None:
    res = run(engine, wrap(standard_patient(), btype))
    assert daily(res, "crs") == STANDARD_CRS
    assert daily(res, "icans")[3] == (G, 1)


def test_searchset_operation_outcome_is_skipped_with_a_warning(engine: Engine) -> None:
    res = run(engine, wrap(standard_patient(), "searchset"))
    assert res.report.ignored["OperationOutcome"] == 1
    warned = [w for w in res.report.warnings if "OperationOutcome" in w.message]
    assert len(warned) == 1
    assert warned[0].location.resource == "OperationOutcome/oo1"
    assert res.report.errors == []


def test_searchset_include_entries_are_used(engine: Engine) -> None:
    """The Patient arrives only as search.mode=include: observations still join to it."""
    res = run(engine, wrap(standard_patient(), "searchset"))
    assert len(res.patients) == 1 and res.patients[0].patient.id == "p1"


@pytest.mark.parametrize(("btype", "header"), [("document", "Composition"), ("message", "MessageHeader")])
def test_document_and_message_header_resources_are_ignored(engine: Engine, btype: str, header: str) -> None:
    res = run(engine, wrap(standard_patient(), btype))
    assert res.report.ignored[header] == 1
    assert res.report.errors == []


def test_nested_bundle_inside_an_entry_is_read(engine: Engine) -> None:
    b = standard_patient()
    inner_resources = [r for r in b.resources if r["resourceType"] == "Observation"]
    outer_resources = [r for r in b.resources if r["resourceType"] != "Observation"]
    outer = bundle_of(outer_resources, "message")
    outer["entry"].append({"fullUrl": "urn:uuid:7f5e0d2a-0000-4000-8000-0000000000b1",
                           "resource": bundle_of(inner_resources, "collection")})
    res = run(engine, outer)
    assert daily(res, "crs") == STANDARD_CRS


def ndjson(resources: list[dict[str, Any]]) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in resources) + b"\n"


def test_ndjson_bytes(engine: Engine) -> None:
    res = engine.grade(read_bytes(ndjson(standard_patient().resources), "export.ndjson"))
    assert daily(res, "crs") == STANDARD_CRS


def test_ndjson_is_recognised_without_the_ndjson_name(engine: Engine) -> None:
    res = engine.grade(read_bytes(ndjson(standard_patient().resources), "export.json"))
    assert daily(res, "crs") == STANDARD_CRS


def test_ndjson_items_are_located_by_line(engine: Engine) -> None:
    items = list(read_bytes(ndjson(standard_patient().resources), "export.ndjson"))
    assert [i.loc.line for i in items] == list(range(1, len(items) + 1))
    assert items[0].loc.resource == "Patient/p1"


def test_folder_of_ndjson_files_one_per_resource_type(engine: Engine, tmp_path: Path) -> None:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in standard_patient().resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    for rtype, resources in by_type.items():
        (tmp_path / f"{rtype}.ndjson").write_bytes(ndjson(resources))
    assert len(list(tmp_path.iterdir())) == 3  # Patient, MedicationAdministration, Observation
    (tmp_path / ".bulk-export.json").write_text('{"status_url": "x"}')  # a tool's state file: not input
    res = engine.grade(read_paths([tmp_path]))
    assert daily(res, "crs") == STANDARD_CRS
    assert res.report.resources_read == len(standard_patient().resources)


def own_ids(b: PatientBuilder) -> list[dict[str, Any]]:
    """The builder's resources with ids made unique across patients (each builder counts from 1)."""
    for r in b.resources[1:]:
        r["id"] = f"{b.pid}-{r['id']}"
    return b.resources


def test_two_patients_in_one_input_are_graded_independently(engine: Engine) -> None:
    febrile = standard_patient(pid="p1")
    quiet = PatientBuilder(pid="p2", tz="-05:00", day0="2024-06-10")
    quiet.temp(1, "06:00", 37.0)
    quiet.ice(1, "07:00", 5)
    res = run(engine, bundle_of(own_ids(febrile) + own_ids(quiet)))
    assert {p.patient.id for p in res.patients} == {"p1", "p2"}
    assert res.report.patients == res.report.patients_graded == 2
    i1, i2 = res.patients.index(by_id(res, "p1")), res.patients.index(by_id(res, "p2"))
    assert daily(res, "crs", patient=i1) == STANDARD_CRS
    assert daily(res, "crs", patient=i2) == {1: (G, 0)}
    assert daily(res, "icans", patient=i2) == {1: (G, 2)}
    assert by_id(res, "p2").courses[0].course.infusion.day0 == date(2024, 6, 10)


def test_two_patients_in_ndjson_interleaved(engine: Engine) -> None:
    a, b = standard_patient(pid="pa"), PatientBuilder(pid="pb")
    b.temp(2, "08:00", 39.5)
    ra, rb = own_ids(a), own_ids(b)
    mixed = [r for pair in zip(ra, rb, strict=False) for r in pair] + ra[len(rb):]  # ra may be longer
    res = engine.grade(read_bytes(ndjson(mixed), "mixed.ndjson"))
    ia = res.patients.index(by_id(res, "pa"))
    ib = res.patients.index(by_id(res, "pb"))
    assert daily(res, "crs", patient=ia) == STANDARD_CRS
    assert daily(res, "crs", patient=ib) == {2: (G, 1)}


# =====================================================================================================
# 2. References and CAR-T product recognition
# =====================================================================================================

@pytest.mark.parametrize("subject", [
    "Patient/p1",
    "https://server.example/fhir/Patient/p1",
    "Patient/p1/_history/2",
    "https://server.example/fhir/Patient/p1/_history/2",
], ids=["relative", "absolute", "versioned", "absolute-versioned"])
def test_subject_reference_forms(engine: Engine, subject: str) -> None:
    b = standard_patient()
    for r in b.resources[1:]:
        r["subject"] = {"reference": subject}
    res = run(engine, b.bundle())
    assert daily(res, "crs") == STANDARD_CRS
    assert res.report.errors == []


def test_urn_uuid_full_urls_resolve_resources_without_ids(engine: Engine) -> None:
    b = standard_patient()
    entries = []
    patient_url = "urn:uuid:0b1c6f2e-5d6a-4c1e-9c1f-000000000001"
    for n, r in enumerate(b.resources):
        r = copy.deepcopy(r)
        r.pop("id")
        url = patient_url if r["resourceType"] == "Patient" else f"urn:uuid:9d3a1e70-0000-4000-8000-{n:012d}"
        if r["resourceType"] != "Patient":
            r["subject"] = {"reference": patient_url}
        entries.append({"fullUrl": url, "resource": r})
    res = run(engine, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert daily(res, "crs") == STANDARD_CRS
    assert res.patients[0].patient.key == patient_url


def cart_admin(b: PatientBuilder, **medication: Any) -> dict[str, Any]:
    res = {"resourceType": "MedicationAdministration", "id": "cart-x", "status": "completed",
           "subject": b.subject(), "effectiveDateTime": b.at(0, "10:00"), **medication}
    b.resources.append(res)
    return res


AXI_CODE = {"coding": [{"system": RXNORM, "code": "1987402"}]}


def test_medication_reference_to_a_medication_resource_sets_day0(engine: Engine) -> None:
    b = PatientBuilder(infusion="none")
    b.resources.append({"resourceType": "Medication", "id": "med-axi", "code": AXI_CODE})
    cart_admin(b, medicationReference={"reference": "Medication/med-axi"})
    b.temp(1, "08:00", 38.5)
    res = run(engine, b.bundle())
    course = course_of(res)
    assert course.infusion.day0 == date(2024, 5, 1)
    assert course.infusion.product == "axicabtagene ciloleucel"
    assert daily(res, "crs") == {1: (G, 1)}


def test_medication_reference_by_urn_uuid_to_a_medication_without_id(engine: Engine) -> None:
    b = PatientBuilder(infusion="none")
    cart_admin(b, medicationReference={"reference": "urn:uuid:3f1e0000-0000-4000-8000-00000000a001"})
    b.temp(1, "08:00", 38.5)
    bundle = b.bundle()
    bundle["entry"].append({"fullUrl": "urn:uuid:3f1e0000-0000-4000-8000-00000000a001",
                            "resource": {"resourceType": "Medication", "code": AXI_CODE}})
    res = run(engine, bundle)
    assert course_of(res).infusion.day0 == date(2024, 5, 1)


def test_medication_reference_to_a_contained_medication_sets_day0(engine: Engine) -> None:
    b = PatientBuilder(infusion="none")
    cart_admin(b, contained=[{"resourceType": "Medication", "id": "med1", "code": AXI_CODE}],
               medicationReference={"reference": "#med1"})
    b.temp(1, "08:00", 38.5)
    res = run(engine, b.bundle())
    assert course_of(res).infusion.day0 == date(2024, 5, 1)
    assert daily(res, "crs") == {1: (G, 1)}


@pytest.mark.parametrize(("medication", "product"), [
    ({"text": "Kymriah 1 bag IV"}, "tisagenlecleucel"),
    ({"text": "KYMRIAH"}, "tisagenlecleucel"),
    ({"coding": [{"system": "https://hospital.example/pharmacy", "code": "X1", "display": "Carvykti infusion"}]},
     "ciltacabtagene autoleucel"),
    ({"coding": [{"system": CS_PRODUCT, "code": "car-t-cell-product"}]}, "CAR-T cell product"),
    ({"coding": [{"system": RXNORM, "code": "1987402"}]}, "axicabtagene ciloleucel"),
], ids=["kymriah-text", "kymriah-uppercase", "carvykti-display", "project-code", "rxnorm"])
def test_cart_product_recognised_in_medication_codeable_concept(engine: Engine, medication: dict[str, Any],
                                                                 product: str) -> None:
    b = PatientBuilder(infusion="none")
    cart_admin(b, medicationCodeableConcept=medication)
    b.temp(1, "08:00", 38.5)
    res = run(engine, b.bundle())
    inf = course_of(res).infusion
    assert (inf.day0, inf.product) == (date(2024, 5, 1), product)


@pytest.mark.parametrize("code", [{"system": CPT, "code": "38228"}, {"system": CS_PRODUCT,
                                                                      "code": "car-t-cell-product"}],
                         ids=["cpt-38228", "project-code"])
def test_cart_procedure_sets_day0(engine: Engine, code: dict[str, str]) -> None:
    b = PatientBuilder(infusion="procedure")
    b.resources[-1]["code"] = {"coding": [code]}
    b.temp(1, "08:00", 38.5)
    res = run(engine, b.bundle())
    assert course_of(res).infusion.day0 == date(2024, 5, 1)
    assert daily(res, "crs") == {1: (G, 1)}


def test_other_medication_is_not_an_infusion(engine: Engine) -> None:
    b = PatientBuilder(infusion="none")
    cart_admin(b, medicationCodeableConcept={"coding": [{"system": RXNORM, "code": "161"}], "text": "paracetamol"})
    b.temp(1, "08:00", 38.5)
    res = run(engine, b.bundle())
    assert res.patients[0].courses == []
    assert res.report.patients_graded == 0
    assert any("no CAR-T infusion" in w.message for w in res.report.warnings)


# =====================================================================================================
# 3. Day 0 and the time axis
# =====================================================================================================

def temp_at(b: PatientBuilder, when: str, value: float, oid: str) -> None:
    b.resources.append({"resourceType": "Observation", "id": oid, "status": "final",
                        "code": {"coding": [{"system": LOINC, "code": "8310-5"}]}, "subject": b.subject(),
                        "effectiveDateTime": when,
                        "valueQuantity": {"value": value, "unit": "Cel", "system": UCUM, "code": "Cel"}})


def test_day_numbers_follow_the_infusion_offset_not_utc(engine: Engine) -> None:
    # Infusion 2024-05-01 22:30-05:00 (= 2024-05-02 03:30Z): day 0 is 2024-05-01 in -05:00.
    b = PatientBuilder(tz="-05:00", infusion_time="22:30")
    temp_at(b, "2024-05-02T04:00:00Z", 38.5, "t-d0")    # 23:00-05:00 on 05-01 -> day 0
    temp_at(b, "2024-05-02T10:00:00Z", 37.0, "t-d1a")   # 05:00-05:00 on 05-02 -> day 1 (UTC date says 0)
    temp_at(b, "2024-05-03T02:00:00Z", 37.1, "t-d1b")   # 21:00-05:00 on 05-02 -> day 1 (UTC date says 2)
    temp_at(b, "2024-05-03T06:00:00Z", 38.2, "t-d2")    # 01:00-05:00 on 05-03 -> day 2
    res = run(engine, b.bundle())
    course = course_of(res)
    assert course.infusion.day0 == date(2024, 5, 1)
    assert [(day, r.ref) for day, r in course.readings] == [
        (0, "Observation/t-d0"), (1, "Observation/t-d1a"), (1, "Observation/t-d1b"), (2, "Observation/t-d2")]
    assert daily(res, "crs") == {0: (G, 1), 1: (G, 0), 2: (G, 1)}


def test_observation_before_the_infusion_time_on_day0_is_not_counted(engine: Engine) -> None:
    b = PatientBuilder(tz="-05:00", infusion_time="22:30")
    temp_at(b, "2024-05-02T02:00:00Z", 39.0, "t-early")  # 21:00-05:00: 90 minutes before the infusion
    res = run(engine, b.bundle())
    assert course_of(res).readings == []
    assert res.report.ignored["events before day 0"] == 1


def test_bare_date_infusion_counts_the_whole_date_as_day0(engine: Engine) -> None:
    b = PatientBuilder(tz="Z", infusion_time=None)
    assert b.resources[1]["effectiveDateTime"] == "2024-05-01"
    b.temp(0, "00:30", 38.4)
    b.temp(0, "23:30", 37.0)
    b.temp(1, "00:10", 37.2)
    b.temp(-1, "23:50", 39.0)
    res = run(engine, b.bundle())
    course = course_of(res)
    assert course.infusion.day0 == date(2024, 5, 1)
    assert [day for day, _ in course.readings] == [0, 0, 1]
    assert daily(res, "crs")[0] == (G, 1)
    assert res.report.ignored["events before day 0"] == 1


def test_bare_date_infusion_day0_is_the_events_own_calendar_date(engine: Engine) -> None:
    b = PatientBuilder(tz="-05:00", infusion_time=None)
    b.temp(0, "21:00", 38.5)                   # 2024-05-01 21:00-05:00: on the infusion date
    b.temp(1, "08:00", 37.0)
    res = run(engine, b.bundle())
    assert [day for day, _ in course_of(res).readings] == [0, 1]
    assert daily(res, "crs") == {0: (G, 1), 1: (G, 0)}


def test_reinfusion_starts_a_second_course_with_days_from_zero(engine: Engine) -> None:
    b = PatientBuilder()
    b.temp(1, "08:00", 38.5)
    b.temp(20, "08:00", 37.0)                  # before the re-infusion: course 1, day 20
    b.infusion_medication(20, "10:00")          # re-infusion on day 20
    b.temp(20, "14:00", 37.1)                  # course 2, day 0
    b.temp(22, "08:00", 38.8)                  # course 2, day 2
    b.ice(22, "09:00", 6)
    res = run(engine, b.bundle())
    first, second = (cr.course for cr in res.patients[0].courses)
    assert (first.number, second.number) == (1, 2)
    assert second.infusion.day0 == date(2024, 5, 21)
    assert [d for d, _ in first.readings] == [1, 20]
    assert [d for d, _ in second.readings] == [0, 2, 2]
    assert daily(res, "crs", course=0) == {1: (G, 1), 20: (G, 0)}
    assert daily(res, "crs", course=1) == {0: (G, 0), 2: (G, 1)}
    assert daily(res, "icans", course=1)[2] == (G, 2)


# =====================================================================================================
# 4. Units
# =====================================================================================================

@pytest.mark.parametrize("quantity", [
    {"value": 101.0, "unit": "°F", "system": UCUM, "code": "[degF]"},
    {"value": 101.0, "unit": "°F"},
    {"value": 101.0, "unit": "°F", "system": UCUM, "code": "degF"},
    {"value": 101.0, "unit": "F"},
    {"value": 101.0, "unit": "degF", "system": UCUM, "code": "degF"},
], ids=["ucum-degF", "display-only-degree-F", "code-degF", "display-F", "code-and-unit-degF"])
def test_fahrenheit_temperatures_are_converted(engine: Engine, quantity: dict[str, Any]) -> None:
    b = PatientBuilder()
    b.temp_raw(1, "08:00", quantity)
    res = run(engine, b.bundle())
    (_, reading), = course_of(res).readings
    assert reading.value.value == pytest.approx(38.3333, abs=1e-3)
    assert daily(res, "crs") == {1: (G, 1)}


@pytest.mark.parametrize("quantity", [
    {"value": 38.3, "unit": "°C"},
    {"value": 38.3, "unit": "C"},
    {"value": 38.3, "unit": "Cel"},
    {"value": 38.3, "unit": "degrees C", "system": UCUM, "code": "Cel"},
], ids=["degree-C", "C", "Cel-unit-only", "ucum-Cel"])
def test_celsius_spellings_are_accepted(engine: Engine, quantity: dict[str, Any]) -> None:
    b = PatientBuilder()
    b.temp_raw(1, "08:00", quantity)
    res = run(engine, b.bundle())
    assert course_of(res).readings[0][1].value.value == pytest.approx(38.3)


@pytest.mark.parametrize(("quantity", "words"), [
    ({"value": 38.5, "unit": "xyz", "system": UCUM, "code": "xyz"}, ["unit", "xyz"]),
    ({"value": 38.5, "unit": "xyz"}, ["unit", "xyz"]),
    ({"value": 38.5, "unit": "mg", "system": UCUM, "code": "mg"}, ["unit", "mg", "cannot be converted"]),
    ({"value": 38.5}, ["no unit"]),
], ids=["unknown-code", "unknown-display-unit", "wrong-dimension", "missing-unit"])
def test_bad_temperature_unit_is_an_input_error(engine: Engine, quantity: dict[str, Any],
                                                 words: list[str]) -> None:
    b = PatientBuilder()
    obs = b.temp_raw(1, "08:00", quantity)
    with pytest.raises(InputErrors) as excinfo:
        run(engine, b.bundle(), name="site-export.json")
    (err,) = errors_of(excinfo)
    assert all(w in err.message for w in words), err.message
    assert err.location.resource == f"Observation/{obs['id']}"
    assert err.location.file == "site-export.json"
    assert f"Observation/{obs['id']}" in str(excinfo.value)


@pytest.mark.parametrize(("value", "unit", "target", "expected"), [
    (1.2, "K/uL", "/uL", 1200.0),
    (1.2, "x10E3/uL", "10*9/L", 1.2),
    (4.5, "x10^9/L", "10*3/uL", 4.5),
    (80.0, "mmHg", "mm[Hg]", 80.0),
    (2.0, "LPM", "L/min", 2.0),
])
def test_unit_aliases_from_mappings(engine: Engine, value: float, unit: str, target: str,
                                    expected: float) -> None:
    assert engine.units.convert(value, unit, target) == pytest.approx(expected)


# =====================================================================================================
# 5. Site-local codes through a ConceptMap
# =====================================================================================================

SITE_MAP: dict[str, Any] = {
    "resourceType": "ConceptMap", "id": "site", "status": "active",
    "group": [
        {"source": SITE, "target": LOINC,
         "element": [{"code": "TEMP", "target": [{"code": "8310-5", "equivalence": "equivalent"}]}]},
        {"source": SITE, "target": CS_O2,
         "element": [{"code": "NC", "target": [{"code": "nasal-cannula", "equivalence": "equivalent"}]}]},
    ],
}


def site_patient() -> PatientBuilder:
    """Day 1: fever charted with the flowsheet TEMP row and a nasal cannula charted as NC at 3 L/min."""
    b = PatientBuilder()
    b.obs({"system": SITE, "code": "TEMP"}, 1, "06:00", "site-temp",
          valueQuantity={"value": 38.7, "unit": "Cel", "system": UCUM, "code": "Cel"})
    b.obs({"system": CS_OBS, "code": "oxygen-delivery-device"}, 1, "07:00", "site-o2",
          valueCodeableConcept={"coding": [{"system": SITE, "code": "NC"}]})
    b.flow(1, "07:00", 3)
    return b


def test_site_concept_map_translates_local_codes(engine: Engine) -> None:
    site_engine = Engine(tables=engine.tables, concept_maps=[("site.json", SITE_MAP)])
    standard = PatientBuilder()
    standard.temp(1, "06:00", 38.7)
    standard.oxygen(1, "07:00", "nasal-cannula", 3)
    expected = daily(run(engine, standard.bundle()), "crs")
    assert expected == {1: (G, 2)}
    assert daily(run(site_engine, site_patient().bundle()), "crs") == expected


def test_site_codes_without_the_concept_map_are_not_understood(engine: Engine) -> None:
    b = PatientBuilder()
    b.obs({"system": SITE, "code": "TEMP"}, 1, "06:00", "site-temp",
          valueQuantity={"value": 38.7, "unit": "Cel", "system": UCUM, "code": "Cel"})
    res = run(engine, b.bundle())
    assert res.report.ignored["Observation (code not used)"] == 1
    assert daily(res, "crs") == {}


def test_site_answer_code_without_the_concept_map_is_an_error(engine: Engine) -> None:
    b = site_patient()
    (device,) = [r for r in b.resources if r["id"].startswith("site-o2")]
    with pytest.raises(InputErrors) as excinfo:
        run(engine, b.bundle())
    (err,) = errors_of(excinfo)
    assert "NC" in err.message and "oxygen-delivery" in err.message
    assert err.location.resource == obs_ref(device)


@pytest.mark.parametrize("target", [(LOINC, "9999-9"), (CS_O2, "jetpack"), ("https://nowhere.example", "TEMP")],
                         ids=["unknown-loinc", "unknown-device", "unknown-system"])
def test_concept_map_with_unknown_target_is_a_config_error(engine: Engine, target: tuple[str, str]) -> None:
    cm = {"resourceType": "ConceptMap", "group": [
        {"source": SITE, "target": target[0], "element": [{"code": "X", "target": [{"code": target[1]}]}]}]}
    with pytest.raises(ConfigError, match="bad-site.json"):
        Engine(tables=engine.tables, concept_maps=[("bad-site.json", cm)])


@pytest.mark.parametrize("cm", [{"resourceType": "CodeSystem"}, {"resourceType": "ConceptMap", "group": []}],
                         ids=["not-a-conceptmap", "no-groups"])
def test_malformed_concept_map_is_a_config_error(engine: Engine, cm: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Engine(tables=engine.tables, concept_maps=[("site.json", cm)])


# =====================================================================================================
# 6. Status handling
# =====================================================================================================

@pytest.mark.parametrize("status", ["entered-in-error", "cancelled"])
def test_retracted_observation_never_counts(engine: Engine, status: str) -> None:
    b = PatientBuilder()
    b.temp(1, "06:00", 39.5, status=status)
    b.temp(1, "08:00", 37.0)
    res = run(engine, b.bundle())
    assert daily(res, "crs") == {1: (G, 0)}
    assert res.report.ignored[f"Observation status {status}"] == 1


def versions(b: PatientBuilder, v1: tuple[str, float], v2: tuple[str, float]) -> tuple[dict, dict]:
    """Two versions of Observation/t-v of a day-1 temperature: versionId 1 and 2."""
    first = b.temp(1, "06:00", v1[1], status=v1[0])
    b.resources.pop()
    first["id"], first["meta"] = "t-v", {"versionId": "1"}
    second = copy.deepcopy(first)
    second["status"], second["meta"] = v2[0], {"versionId": "2"}
    second["valueQuantity"]["value"] = v2[1]
    return first, second


@pytest.mark.parametrize("order", ["v1-then-v2", "v2-then-v1"])
def test_amended_observation_replaces_the_preliminary_one(engine: Engine, order: str) -> None:
    b = PatientBuilder()
    first, second = versions(b, ("preliminary", 39.0), ("amended", 37.0))
    b.resources += [first, second] if order == "v1-then-v2" else [second, first]
    res = run(engine, b.bundle())
    assert daily(res, "crs") == {1: (G, 0)}
    ((_, reading),) = course_of(res).readings
    assert reading.value.value == 37.0
    assert res.report.ignored["superseded version"] == 1


@pytest.mark.parametrize("order", ["v1-then-v2", "v2-then-v1"])
def test_later_entered_in_error_version_retracts_the_observation(engine: Engine, order: str) -> None:
    b = PatientBuilder()
    first, second = versions(b, ("final", 39.0), ("entered-in-error", 39.0))
    b.resources += [first, second] if order == "v1-then-v2" else [second, first]
    res = run(engine, b.bundle())
    assert daily(res, "crs") == {}


def test_latest_version_by_last_updated_instant_wins_across_offsets(engine: Engine) -> None:
    b = PatientBuilder()
    older = b.temp(1, "06:00", 39.0, status="preliminary")
    older["meta"] = {"lastUpdated": "2024-05-02T10:00:00+05:00"}       # 05:00Z
    newer = copy.deepcopy(older)
    newer["status"], newer["meta"] = "amended", {"lastUpdated": "2024-05-02T06:00:00Z"}  # 06:00Z: the latest
    newer["valueQuantity"]["value"] = 37.0
    b.resources.append(newer)
    res = run(engine, b.bundle())
    assert daily(res, "crs") == {1: (G, 0)}


@pytest.mark.parametrize(("status", "grade"), [("completed", 3), ("in-progress", 3), ("not-done", 1),
                                                ("entered-in-error", 1)])
def test_vasopressor_status(engine: Engine, status: str, grade: int) -> None:
    b = PatientBuilder()
    b.temp(1, "06:00", 38.6)
    b.drug("norepinephrine", 1, "08:00", end=(1, "20:00"), status=status)
    res = run(engine, b.bundle())
    assert daily(res, "crs") == {1: (G, grade)}
    if grade == 1:
        assert res.report.ignored[f"MedicationAdministration status {status}"] == 1


def test_not_done_cart_infusion_does_not_set_day0(engine: Engine) -> None:
    b = PatientBuilder(infusion="none")
    b.infusion_medication(0, "10:00", status="not-done")
    b.temp(1, "06:00", 38.6)
    res = run(engine, b.bundle())
    assert res.patients[0].courses == []


# =====================================================================================================
# 7. Malformed input
# =====================================================================================================

def bundle_bytes(entry: Any = None, btype: str = "collection") -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": btype, "entry": entry})


@pytest.mark.parametrize(("data", "name", "words", "where"), [
    (b'{"resourceType": "Bundle", "type": "collection", "entry": [', "broken.json",
     ["not valid JSON"], {}),
    (orjson.dumps({"resourceType": "Patient", "id": "p1"}), "patient.json",
     ["Bundle", "'Patient'"], {}),
    (orjson.dumps({"resourceType": "Patient", "id": "p1"}, option=orjson.OPT_INDENT_2), "patient.json",
     ["Bundle", "'Patient'"], {}),
    (bundle_bytes({"resource": {"resourceType": "Patient"}}), "entry-dict.json",
     ["Bundle.entry must be a list"], {}),
    (bundle_bytes([{"resource": {"resourceType": "Patient"}}], btype="bag"), "type.json",
     ["Bundle.type", "'bag'"], {}),
    (bundle_bytes(["Patient/p1"]), "entry-string.json", ["entry must be a JSON object"], {"entry": 0}),
    (bundle_bytes([{"resource": {"id": "x"}}]), "no-type.json", ["no resourceType"], {"entry": 0}),
    (bundle_bytes([{"resource": {"resourceType": "Patient", "id": 7}}]), "int-id.json",
     ["Patient.id", "7"], {"entry": 0}),
    (b"[1, 2]", "array.json", ["expected a FHIR Bundle"], {}),
    (b"  \n ", "empty.json", ["empty"], {}),
], ids=["broken-json", "top-level-patient", "top-level-patient-indented", "entry-not-a-list",
        "unknown-bundle-type", "entry-not-an-object", "resource-without-type", "id-not-a-string",
        "top-level-array", "empty-file"])
def test_malformed_container_is_bad_input(data: bytes, name: str, words: list[str],
                                          where: dict[str, int]) -> None:
    with pytest.raises(BadInput) as excinfo:
        list(read_bytes(data, name))
    err = excinfo.value
    assert all(w in err.message for w in words), err.message
    assert err.location.file == name
    for attr, value in where.items():
        assert getattr(err.location, attr) == value
    assert name in str(err)


def test_ndjson_broken_line_is_located_by_line_number() -> None:
    lines = [orjson.dumps(r) for r in standard_patient().resources]
    lines[2] = b'{"resourceType": "Observation", "id": "t-broken", '
    with pytest.raises(BadInput) as excinfo:
        list(read_bytes(b"\n".join(lines), "Observation.ndjson"))
    assert excinfo.value.location.file == "Observation.ndjson"
    assert excinfo.value.location.line == 3
    assert "not valid JSON" in excinfo.value.message
    assert "line 3" in str(excinfo.value)


def test_ndjson_line_that_is_not_an_object() -> None:
    data = orjson.dumps({"resourceType": "Patient", "id": "p1"}) + b"\n[1, 2]\n"
    with pytest.raises(BadInput) as excinfo:
        list(read_bytes(data, "x.ndjson"))
    assert excinfo.value.location.line == 2


def test_missing_input_path_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such file"):
        list(read_paths([tmp_path / "missing.ndjson"]))
    with pytest.raises(BadInput, match="no .ndjson or .json files"):
        list(read_paths([tmp_path]))


MALFORMED_RESOURCES = [
    pytest.param(lambda b: b.temp_raw(2, "08:00", {"value": "hot", "unit": "Cel", "system": UCUM, "code": "Cel"}),
                 ["valueQuantity.value must be a number, got a string"], id="value-is-a-string"),
    pytest.param(lambda b: b.ice(2, "08:00", 11), ["ice-score", "outside 0-10"], id="ice-11"),
    pytest.param(lambda b: b.ice(2, "08:00", -1), ["ice-score", "outside 0-10"], id="ice-negative"),
    pytest.param(lambda b: b.neuro("ice-score", 2, "08:00", valueString="seven"), ["valueInteger", "valueString"],
                 id="ice-as-string"),
    pytest.param(lambda b: b.device(2, "08:00", "oxygen-tent"), ["oxygen-tent", "oxygen-delivery"],
                 id="device-not-in-value-set"),
    pytest.param(lambda b: b.obs({"system": LOINC, "code": "8310-5"}, 2, "08:00", "temp",
                                 effectiveDateTime="2024-05", valueQuantity={"value": 38.0, "unit": "Cel"}),
                 ["partial date"], id="partial-effective-date"),
    pytest.param(lambda b: b.obs({"system": LOINC, "code": "8310-5"}, 2, "08:00", "temp",
                                 effectiveDateTime="yesterday", valueQuantity={"value": 38.0, "unit": "Cel"}),
                 ["not a valid FHIR dateTime"], id="unparseable-effective"),
    pytest.param(lambda b: b.temp_raw(2, "08:00", {"value": 38.0, "unit": "Cel", "comparator": "~"}),
                 ["comparator"], id="bad-comparator"),
    pytest.param(lambda b: b.temp_raw(2, "08:00", {"value": 38.0, "unit": "Cel", "comparator": ["<"]}),
                 ["comparator"], id="comparator-not-a-string"),
]


@pytest.mark.parametrize(("build", "words"), MALFORMED_RESOURCES)
def test_malformed_observation_is_an_input_error_naming_the_resource(engine: Engine, build: Any,
                                                                     words: list[str]) -> None:
    b = PatientBuilder()
    obs = build(b)
    with pytest.raises(InputErrors) as excinfo:
        run(engine, b.bundle(), name="chart.json")
    (err,) = errors_of(excinfo)
    assert all(w in err.message for w in words), err.message
    assert "hot" not in err.message and "11" not in err.message  # values are PHI: only with --show-values
    assert err.location.file == "chart.json"
    assert err.location.resource == f"Observation/{obs['id']}"
    assert err.location.entry == b.resources.index(obs)


def test_subject_not_in_the_input_is_an_input_error(engine: Engine) -> None:
    b = PatientBuilder()
    obs = b.temp(1, "06:00", 38.6)
    obs["subject"] = {"reference": "Patient/nobody"}
    with pytest.raises(InputErrors) as excinfo:
        run(engine, b.bundle(), name="chart.json")
    (err,) = errors_of(excinfo)
    assert "Patient/nobody" in err.message and "not in the input" in err.message
    assert (err.location.file, err.location.resource) == ("chart.json", obs_ref(obs))


def test_dangling_urn_uuid_subject_is_an_input_error(engine: Engine) -> None:
    b = PatientBuilder()
    obs = b.temp(1, "06:00", 38.6)
    obs["subject"] = {"reference": "urn:uuid:6c2d6a35-0000-4000-8000-00000000dead"}
    with pytest.raises(InputErrors) as excinfo:
        run(engine, b.bundle(), name="chart.json")
    (err,) = errors_of(excinfo)
    assert "urn:uuid:6c2d6a35-0000-4000-8000-00000000dead" in err.message
    assert err.location.resource == obs_ref(obs)


def test_subject_that_is_not_a_reference_object_is_an_input_error(engine: Engine) -> None:
    b = PatientBuilder()
    obs = b.temp(1, "06:00", 38.6)
    obs["subject"] = "Patient/p1"
    with pytest.raises(InputErrors) as excinfo:
        run(engine, b.bundle())
    (err,) = errors_of(excinfo)
    assert "subject must be a Reference" in err.message
    assert err.location.resource == obs_ref(obs)


def test_all_errors_of_a_run_are_collected(engine: Engine) -> None:
    b = PatientBuilder()
    one = b.ice(1, "08:00", 11)
    two = b.temp_raw(2, "08:00", {"value": 38.0, "unit": "xyz"})
    with pytest.raises(InputErrors) as excinfo:
        run(engine, b.bundle())
    assert {e.location.resource for e in errors_of(excinfo)} == {obs_ref(one), obs_ref(two)}
    assert "(and 1 more)" in str(excinfo.value)


# =====================================================================================================
# 8. Lenient mode
# =====================================================================================================

@pytest.mark.parametrize(("build", "words"), MALFORMED_RESOURCES[:5])
def test_lenient_mode_reports_the_bad_observation_and_grades_the_rest(lenient: Engine, build: Any,
                                                                      words: list[str]) -> None:
    b = PatientBuilder()
    b.temp(1, "06:00", 38.6)
    obs = build(b)
    b.temp(3, "06:00", 37.0)
    res = run(lenient, b.bundle())
    (err,) = res.report.errors
    assert all(w in err.message for w in words), err.message
    assert err.location.resource == obs_ref(obs)
    assert daily(res, "crs")[1] == (G, 1)
    assert daily(res, "crs")[3] == (G, 0)


def test_lenient_mode_keeps_the_patient_when_another_resource_is_orphaned(lenient: Engine) -> None:
    b = standard_patient()
    orphan = b.temp(1, "07:00", 40.0)
    orphan["subject"] = {"reference": "Patient/nobody"}
    res = run(lenient, b.bundle())
    assert [e.location.resource for e in res.report.errors] == [obs_ref(orphan)]
    assert daily(res, "crs") == STANDARD_CRS


# =====================================================================================================
# 9. Run report
# =====================================================================================================

def test_report_counts_read_used_and_ignored_types(engine: Engine) -> None:
    b = PatientBuilder()                                   # Patient + CAR-T MedicationAdministration
    b.temp(1, "06:00", 38.6)
    b.resources.append({"resourceType": "Encounter", "id": "enc1", "status": "finished",
                        "class": {"code": "IMP"}, "subject": b.subject()})
    b.resources.append({"resourceType": "Encounter", "id": "enc2", "status": "finished",
                        "class": {"code": "IMP"}, "subject": b.subject()})
    res = run(engine, b.bundle())
    r = res.report
    assert r.resources_read == 5
    assert r.resources_used == 3                           # Patient, infusion, temperature
    assert r.ignored == {"Encounter": 2}
    assert (r.patients, r.patients_graded) == (1, 1)
    assert any("Encounter 2" in line for line in r.summary_lines())


def test_report_counts_events_before_day0(engine: Engine) -> None:
    b = PatientBuilder()
    b.temp(-2, "08:00", 39.0)
    b.temp(0, "08:00", 38.9)                               # same day, before the 10:00 infusion
    b.temp(1, "08:00", 37.0)
    res = run(engine, b.bundle())
    assert res.report.ignored["events before day 0"] == 2
    assert daily(res, "crs") == {1: (G, 0)}


@pytest.mark.parametrize(("extra", "reason"), [
    ({"resourceType": "Observation", "id": "hr", "status": "final",
      "code": {"coding": [{"system": LOINC, "code": "8867-4"}]}, "subject": {"reference": "Patient/p1"},
      "effectiveDateTime": "2024-05-02T08:00:00+01:00", "valueQuantity": {"value": 90, "unit": "/min"}},
     "Observation (code not used)"),
    ({"resourceType": "Observation", "id": "t-notime", "status": "final",
      "code": {"coding": [{"system": LOINC, "code": "8310-5"}]}, "subject": {"reference": "Patient/p1"},
      "valueQuantity": {"value": 39.0, "unit": "Cel"}},
     "Observation without effective time"),
    ({"resourceType": "Procedure", "id": "bx", "status": "completed",
      "code": {"text": "bone marrow biopsy"}, "subject": {"reference": "Patient/p1"},
      "performedDateTime": "2024-05-03T08:00:00+01:00"},
     "Procedure (not a CAR-T infusion)"),
    ({"resourceType": "MedicationAdministration", "id": "abx", "status": "completed",
      "medicationCodeableConcept": {"text": "ondansetron"}, "subject": {"reference": "Patient/p1"},
      "effectiveDateTime": "2024-05-03T08:00:00+01:00"},
     "MedicationAdministration (drug not used)"),
    ({"resourceType": "Observation", "id": "grp", "status": "final",
      "code": {"coding": [{"system": LOINC, "code": "8310-5"}]}, "subject": {"reference": "Group/g1"},
      "effectiveDateTime": "2024-05-02T08:00:00+01:00", "valueQuantity": {"value": 39.0, "unit": "Cel"}},
     "Observation about a non-patient subject"),
], ids=["unused-loinc", "no-effective", "other-procedure", "other-drug", "group-subject"])
def test_report_counts_unused_resources_by_reason(engine: Engine, extra: dict[str, Any], reason: str) -> None:
    b = PatientBuilder()
    b.resources.append(extra)
    res = run(engine, b.bundle())
    assert res.report.ignored[reason] == 1
    assert res.report.resources_read == 3


def test_report_warns_about_a_patient_without_infusion(engine: Engine) -> None:
    b = PatientBuilder(infusion="none")
    b.temp(1, "06:00", 39.0)
    res = run(engine, b.bundle())
    assert (res.report.patients, res.report.patients_graded) == (1, 0)
    (w,) = [w for w in res.report.warnings if "no CAR-T infusion" in w.message]
    assert "Patient/p1" in str(w.location)


def test_report_warns_about_a_time_without_offset(engine: Engine) -> None:
    b = PatientBuilder()
    obs = b.temp(1, "06:00", 38.6)
    obs["effectiveDateTime"] = "2024-05-02T06:00:00"
    res = run(engine, b.bundle())
    assert any("no UTC offset" in w.message and w.location.resource == obs_ref(obs)
               for w in res.report.warnings)
    assert daily(res, "crs") == {1: (G, 1)}                # taken in the infusion's +01:00


# =====================================================================================================
# Regressions: bugs found by these tests and fixed
# =====================================================================================================

def test_id_less_observations_in_two_nested_bundles_are_both_kept(engine: Engine) -> None:
    b = PatientBuilder()
    obs = [{"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "8310-5"}]}, "subject": b.subject(),
            "effectiveDateTime": b.at(day, "08:00"), "valueQuantity": {"value": 39.0, "unit": "Cel"}}
           for day in (1, 2)]
    outer = b.bundle("message")
    for o in obs:
        outer["entry"].append({"resource": {"resourceType": "Bundle", "type": "collection",
                                            "entry": [{"resource": o}]}})
    res = run(engine, outer)
    assert daily(res, "crs") == {1: (G, 1), 2: (G, 1)}
    assert res.report.ignored["superseded version"] == 0


def test_dangling_medication_reference_is_reported_once(lenient: Engine) -> None:
    b = PatientBuilder()
    b.resources.append({"resourceType": "MedicationAdministration", "id": "ma-x", "status": "completed",
                        "medicationReference": {"reference": "Medication/nope"}, "subject": b.subject(),
                        "effectiveDateTime": b.at(1, "09:00")})
    res = run(lenient, b.bundle())
    assert len(res.report.errors) == 1


def test_unused_medication_resource_is_accounted_for(engine: Engine) -> None:
    b = PatientBuilder()
    b.resources.append({"resourceType": "Medication", "id": "saline", "code": {"text": "sodium chloride 0.9%"}})
    res = run(engine, b.bundle())
    r = res.report
    assert r.resources_read == r.resources_used + sum(r.ignored.values())
