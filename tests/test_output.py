"""Output contract (output-contract.md): every element the contract names, R4B validity, determinism."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import pytest
from fhirbuild import PatientBuilder
from helpers import RECORDED, run

from cart_fhir.constants import BASE
from cart_fhir.pipeline import Engine
from cart_fhir.validate import validate_resources

NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"


def vignette() -> PatientBuilder:
    """Grade-3 CRS resolving on day 4, grade-2 ICANS ongoing, a not-assessable and an at-least day."""
    b = PatientBuilder(tz="-05:00")
    b.temp(1, "06:00", 38.9)
    b.oxygen(1, "08:00", "nasal-cannula")  # no flow: at least grade 2
    b.temp(2, "08:00", 39.4)
    b.pressor("norepinephrine", 2, "09:00", 2, "21:00")
    b.drug("tocilizumab", 2, "10:00")
    b.bp(3, "08:00", 118, 70)  # no temperature: not assessable
    b.temp(4, "08:00", 36.9)
    b.ice(3, "08:00", 9)
    b.ice(4, "08:00", 5)
    return b


def emitted(engine: Engine, b: PatientBuilder, btype: str = "collection") -> dict[str, Any]:
    res = run(engine, b.bundle())
    return engine.bundle(engine.resources(res, RECORDED), btype)  # type: ignore[arg-type]


def of_type(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def daily_grades(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in of_type(bundle, "Observation")
            if o["code"]["coding"][0]["code"] in ("crs-grade-astct", "icans-grade-astct")]


def crs_icans(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    key = "code" if rtype == "Condition" else "event"
    return [r for r in of_type(bundle, rtype) if r[key]["coding"][0]["code"] in ("crs", "icans")]


def by_full_url(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


@pytest.fixture(scope="module")
def out(engine: Engine) -> dict[str, Any]:
    return emitted(engine, vignette())


def test_every_emitted_resource_validates_with_r4b(out) -> None:
    resources = [e["resource"] for e in out["entry"]]
    assert validate_resources(resources) == len(resources)
    from fhir.resources.R4B.bundle import Bundle
    Bundle.model_validate(out)


def test_resource_counts(out) -> None:
    # CRS days 1-4, ICANS days 3-4; one episode each; one Provenance for the patient; one engine Device
    assert len(daily_grades(out)) == 6
    assert (len(crs_icans(out, "Condition")), len(crs_icans(out, "AdverseEvent"))) == (2, 2)
    assert (len(of_type(out, "Provenance")), len(of_type(out, "Device"))) == (1, 1)
    codes = sorted(o["code"]["coding"][0]["code"] for o in of_type(out, "Observation")
                   if o not in daily_grades(out))
    # one treatment-response per episode, the CAR-HEMATOTOX score (not assessable: no baseline labs), and
    # the early/late ICAHT assessments (not assessable: no ANC), IEC-HS (not assessable: CRS but no ferritin),
    # and the IAGO long-term effects, not assessable without IgG, CD19 counts or blood counts after day 100
    assert codes == ["b-cell-aplasia-iago", "car-hematotox-score", "hypogammaglobulinemia-iago",
                     "icaht-grade-early", "icaht-grade-late", "iec-hs-grade", "prolonged-cytopenia-ctcae",
                     "treatment-response", "treatment-response"]


def test_daily_observation_elements(out) -> None:
    obs = {(o["code"]["coding"][0]["code"], o["effectivePeriod"]["start"][:10]): o for o in daily_grades(out)}
    day2 = obs[("crs-grade-astct", "2024-05-03")]
    assert day2["meta"]["profile"] == [f"{BASE}/StructureDefinition/cart-toxicity-grade"]
    assert day2["status"] == "preliminary"
    assert day2["category"][0]["coding"][0]["code"] == "survey"
    assert day2["valueInteger"] == 3
    assert day2["effectivePeriod"]["start"] == "2024-05-03T00:00:00-05:00"
    assert day2["effectivePeriod"]["end"] == "2024-05-03T23:59:59-05:00"
    rel = day2["effectivePeriod"]["extension"][0]
    assert rel["url"] == "http://hl7.org/fhir/StructureDefinition/cqf-relativeDateTime"
    offset = next(e for e in rel["extension"] if e["url"] == "offset")
    assert offset["valueDuration"]["value"] == 2
    assert day2["method"]["coding"][0]["code"] == "automated-grading"
    assert "ASTCT 2019" in day2["method"]["text"]
    comps = {c["code"]["coding"][0]["code"]: c for c in day2["component"]}
    assert comps["max-temperature"]["valueQuantity"] == {"value": 39.4, "unit": "°C",
                                                         "system": "http://unitsofmeasure.org", "code": "Cel"}
    assert comps["hypotension"]["valueCodeableConcept"]["coding"][0]["code"] == "single-vasopressor"
    assert {"reference": "Observation/temp-4"} in day2["derivedFrom"]  # the fever that set the grade
    supporting = [e["valueReference"]["reference"] for e in day2["extension"]]
    assert any(r.startswith("MedicationAdministration/norepinephrine") for r in supporting)


def test_at_least_and_not_assessable_days(out) -> None:
    obs = {(o["code"]["coding"][0]["code"], o["effectivePeriod"]["start"][:10]): o for o in daily_grades(out)}
    day1 = obs[("crs-grade-astct", "2024-05-02")]
    assert day1["valueInteger"] == 2
    assert day1["interpretation"][0]["coding"][0]["code"] == "at-least"
    assert "oxygen flow" in day1["interpretation"][0]["text"]
    day3 = obs[("crs-grade-astct", "2024-05-04")]
    assert "valueInteger" not in day3
    assert day3["dataAbsentReason"]["coding"][0]["code"] == "not-performed"
    assert "body temperature" in day3["dataAbsentReason"]["text"]


def test_condition_elements(out) -> None:
    urls = by_full_url(out)
    crs = next(c for c in crs_icans(out, "Condition") if c["code"]["coding"][0]["code"] == "crs")
    codes = {(c["system"], c["code"]) for c in crs["code"]["coding"]}
    assert {(f"{BASE}/CodeSystem/cart-toxicity", "crs"), (ICD, "D89.833"), (NCIT, "C143394")} <= codes
    assert crs["clinicalStatus"]["coding"][0]["code"] == "resolved"
    assert crs["abatementDateTime"] == "2024-05-05T00:00:00-05:00"
    assert crs["verificationStatus"]["coding"][0]["code"] == "provisional"
    assert crs["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    assert crs["onsetDateTime"] == "2024-05-02T06:00:00-05:00"
    summary = {(c["system"], c["code"]) for c in crs["stage"][0]["summary"]["coding"]}
    assert summary == {(NCIT, "C41340"), (f"{BASE}/CodeSystem/toxicity-grade", "3")}
    assert crs["stage"][0]["type"]["coding"][0]["code"] == "crs-grade-astct"
    max_obs = urls[crs["stage"][0]["assessment"][0]["reference"]]
    assert max_obs["valueInteger"] == 3
    details = [urls[d["reference"]] for d in crs["evidence"][0]["detail"]]
    assert [d["effectivePeriod"]["start"][:10] for d in details] == ["2024-05-02", "2024-05-03", "2024-05-04"]
    icans = next(c for c in of_type(out, "Condition") if c["code"]["coding"][0]["code"] == "icans")
    assert (ICD, "G92.02") in {(c["system"], c["code"]) for c in icans["code"]["coding"]}
    assert icans["clinicalStatus"]["coding"][0]["code"] == "active"
    assert "abatementDateTime" not in icans


def test_adverse_event_elements(out) -> None:
    urls = by_full_url(out)
    ae = next(a for a in of_type(out, "AdverseEvent") if a["event"]["coding"][0]["code"] == "crs")
    assert ae["meta"]["profile"] == [f"{BASE}/StructureDefinition/cart-adverse-event"]
    assert ae["identifier"]["system"] == f"{BASE}/identifier/adverse-event"
    assert ae["actuality"] == "actual"
    grade = ae["extension"][0]
    assert grade["url"] == "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/ae-grade"
    assert {c["code"] for c in grade["valueCodeableConcept"]["coding"]} == {"C41340", "3"}
    assert ae["severity"]["coding"][0]["code"] == "severe"
    assert ae["seriousness"]["coding"][0]["code"] == "serious"
    assert ae["outcome"]["coding"][0]["code"] == "resolved"
    assert ae["date"] == "2024-05-02T06:00:00-05:00"
    assert ae["recordedDate"] == RECORDED.isoformat()
    assert urls[ae["resultingCondition"][0]["reference"]]["resourceType"] == "Condition"
    suspect = ae["suspectEntity"][0]
    assert suspect["instance"]["reference"].startswith("MedicationAdministration/cart-")
    causality = suspect["causality"][0]
    assert causality["assessment"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/adverse-event-causality-assess",
        "code": "Probably-Likely", "display": "Probably/Likely"}
    assert causality["method"]["coding"][0]["code"] == "ProbabilityScale"
    assert "onset on day 1" in causality["productRelatedness"]
    assert urls[ae["contributor"][0]["reference"]]["resourceType"] == "Device"
    icans_ae = next(a for a in of_type(out, "AdverseEvent") if a["event"]["coding"][0]["code"] == "icans")
    assert (icans_ae["severity"]["coding"][0]["code"], icans_ae["seriousness"]["coding"][0]["code"],
            icans_ae["outcome"]["coding"][0]["code"]) == ("moderate", "non-serious", "ongoing")


def test_provenance_targets_every_written_resource(out) -> None:
    prov = of_type(out, "Provenance")[0]
    written = {e["fullUrl"] for e in out["entry"] if e["resource"]["resourceType"] in
               ("Observation", "Condition", "AdverseEvent")}
    assert {t["reference"] for t in prov["target"]} == written
    assert prov["recorded"] == RECORDED.isoformat()
    assert by_full_url(out)[prov["agent"][0]["who"]["reference"]]["resourceType"] == "Device"
    sources = {e["what"]["reference"] for e in prov["entity"]}
    assert "Observation/temp-4" in sources and any(s.startswith("MedicationAdministration/cart-") for s in sources)
    assert prov["activity"]["coding"][0]["code"] == "CREATE"


def test_device_records_versions(out) -> None:
    dev = of_type(out, "Device")[0]
    assert dev["identifier"] == [{"system": f"{BASE}/identifier/device", "value": "cart-fhir"}]
    assert {v["type"]["text"] for v in dev["version"]} >= {"cart-fhir", "astct-crs-2019", "astct-icans-2019"}


def test_same_input_same_identifiers_and_content(engine) -> None:
    from datetime import datetime

    first = emitted(engine, vignette())
    second_res = run(engine, vignette().bundle())
    later = datetime(2025, 1, 1, tzinfo=UTC)
    second = engine.bundle(engine.resources(second_res, later))

    def strip(b: dict[str, Any]) -> list[Any]:
        out = []
        for e in b["entry"]:
            r = dict(e["resource"])
            r.pop("recordedDate", None)
            r.pop("recorded", None)
            out.append((e["fullUrl"], r))
        return out

    assert strip(first) == strip(second)


def test_identifiers_are_unique_and_deterministic_hashes(out) -> None:
    values = []
    for r in (e["resource"] for e in out["entry"]):
        ident = r.get("identifier")
        if isinstance(ident, dict):
            ident = [ident]
        if ident:
            values.append((ident[0]["system"], ident[0]["value"]))
    assert len(values) == len(set(values))
    assert all(len(v) == 32 for s, v in values if not s.endswith("/device"))


def test_transaction_bundle_is_conditional_updates(engine) -> None:
    tx = emitted(engine, vignette(), "transaction")
    assert tx["type"] == "transaction"
    for e in tx["entry"]:
        r = e["resource"]
        assert e["request"]["method"] == "PUT"
        url = e["request"]["url"]
        if r["resourceType"] == "Provenance":
            tag = r["meta"]["tag"][0]
            assert url == f"Provenance?_tag={tag['system']}|{tag['code']}"
        elif r["resourceType"] == "AdverseEvent":  # R4 defines no identifier search for it: a stable id
            assert url == f"AdverseEvent/cart-{r['identifier']['value']}" == f"AdverseEvent/{r['id']}"
        else:
            ident = r["identifier"] if isinstance(r["identifier"], dict) else r["identifier"][0]
            assert url == f"{r['resourceType']}?identifier={ident['system']}|{ident['value']}"
    from fhir.resources.R4B.bundle import Bundle
    Bundle.model_validate(tx)


def test_icd_code_follows_maximum_grade(engine) -> None:
    for grade, setup, icd in ((1, lambda b: None, "D89.831"),
                              (2, lambda b: b.oxygen(1, "09:00", "nasal-cannula", 2), "D89.832"),
                              (4, lambda b: b.oxygen(1, "09:00", "bipap"), "D89.834")):
        b = PatientBuilder()
        b.temp(1, "06:00", 38.5)
        setup(b)
        cond = of_type(emitted(engine, b), "Condition")[0]
        assert (ICD, icd) in {(c["system"], c["code"]) for c in cond["code"]["coding"]}, grade


def test_patient_without_infusion_writes_nothing(engine) -> None:
    b = PatientBuilder(infusion="none")
    b.temp(1, "06:00", 39.0)
    res = run(engine, b.bundle())
    assert engine.resources(res, RECORDED) == []
    assert any("no CAR-T infusion" in w.message for w in res.report.warnings)
