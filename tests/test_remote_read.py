"""Reading patients and cohorts from a FHIR server, with HTTP mocked by `responses`."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from fhirbuild import PatientBuilder

from cart_fhir.errors import BadInput
from cart_fhir.pipeline import Engine
from cart_fhir.remote.client import Capabilities, FhirClient
from cart_fhir.remote.http import FhirHttp
from cart_fhir.remote.read import OBSERVATION_LOOKBACK_DAYS, PatientReader

BASE = "https://ehr.example.org/fhir"


def caps(everything: bool = True, batch: bool = True) -> dict[str, Any]:
    rest: dict[str, Any] = {"mode": "server", "interaction": [{"code": "transaction"}] +
                            ([{"code": "batch"}] if batch else []),
                            "resource": [{"type": "Patient", "searchParam": [{"name": "_id"}]}]}
    if everything:
        rest["resource"][0]["operation"] = [{"name": "everything",
                                             "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}]
    return {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [rest]}


def page(resources: list[dict[str, Any]], next_url: str | None = None, mode: str = "match") -> dict[str, Any]:
    b: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                         "entry": [{"resource": r, "search": {"mode": mode}} for r in resources]}
    if next_url:
        b["link"] = [{"relation": "next", "url": next_url}]
    return b


def patient() -> PatientBuilder:
    b = PatientBuilder("p1")
    b.temp(1, "08:00", 39.2)
    b.temp(2, "08:00", 37.0)
    return b


def reader(engine: Engine) -> PatientReader:
    return PatientReader(FhirClient(FhirHttp(BASE, sleep=lambda s: None), page_size=50), engine.terminology)


@pytest.mark.parametrize("statement,expected", [
    pytest.param(caps(), (True, True, True), id="everything-on-patient"),
    pytest.param(caps(everything=False, batch=False), (False, True, False), id="no-everything-no-batch"),
    pytest.param({"resourceType": "OperationOutcome"}, (False, True, True), id="no-statement-defaults"),
    pytest.param({"resourceType": "CapabilityStatement", "rest": [{"mode": "server"}]}, (False, True, True),
                 id="silent-statement"),
])
def test_capabilities(statement, expected):
    c = Capabilities.from_statement(statement)
    assert (c.everything, c.transaction, c.batch) == expected


def test_searchable_follows_the_declared_parameters():
    c = Capabilities.from_statement({"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "resource": [
        {"type": "AdverseEvent", "searchParam": [{"name": "subject"}]}, {"type": "Observation", "searchParam": [
            {"name": "identifier"}]}]}]})
    assert not c.searchable("AdverseEvent", "identifier")
    assert c.searchable("Observation", "identifier") and c.searchable("Device", "identifier")  # Device: not listed


@responses.activate
def test_everything_pages_and_fetches_the_medications_it_left_out(engine):
    b = patient()
    ma = b.resources[1]
    ma.pop("medicationCodeableConcept")
    ma["medicationReference"] = {"reference": "Medication/m1"}
    med = {"resourceType": "Medication", "id": "m1", "code": {"coding": [
        {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1987402"}]}}
    responses.get(f"{BASE}/metadata", json=caps())
    nxt = f"{BASE}/Patient/p1/$everything?_count=50&_page_token=abc"
    responses.get(f"{BASE}/Patient/p1/$everything", json=page(b.resources[:2], nxt),
                  match=[responses.matchers.query_param_matcher({"_count": "50"})])
    responses.get(nxt, json=page(b.resources[2:] + [{"resourceType": "OperationOutcome", "issue": []}],
                                 mode="outcome"))
    responses.get(f"{BASE}/Medication", json=page([med]),
                  match=[responses.matchers.query_param_matcher({"_id": "m1", "_count": "50"})])
    r = reader(engine)
    items = r.patient("p1")
    assert sorted(i.resource["id"] for i in items) == ["cart-1", "m1", "p1"]  # outcome entries dropped
    assert r.stats.per_patient == {"Patient/p1": 4}  # metadata, 2 pages, 1 Medication search
    result = engine.grade(items)
    assert result.patients[0].courses, "the infusion is recognised through the fetched Medication"


@responses.activate
def test_everything_mode_outcome_entries_are_dropped_and_matches_kept(engine):
    b = patient()
    responses.get(f"{BASE}/metadata", json=caps())
    responses.get(f"{BASE}/Patient/p1/$everything", json=page(b.resources))
    items = reader(engine).patient("p1")
    assert len(items) == len(b.resources)
    assert items[0].loc.file == f"{BASE}/Patient/p1"
    assert engine.grade(items).patients[0].courses[0].days


@responses.activate
def test_without_everything_one_batch_then_observations_in_a_window(engine):
    b = patient()
    obs = [r for r in b.resources if r["resourceType"] == "Observation"]
    responses.get(f"{BASE}/metadata", json=caps(everything=False))

    def batch(request: Any) -> tuple[int, dict[str, str], bytes]:
        import orjson
        bundle = orjson.loads(request.body)
        urls = [e["request"]["url"] for e in bundle["entry"]]
        assert urls[0] == "Patient/p1" and all(e["request"]["method"] == "GET" for e in bundle["entry"])
        assert any(u.startswith("MedicationAdministration?") and "_include=MedicationAdministration%3Amedication"
                   in u or "_include=MedicationAdministration:medication" in u for u in urls)
        out = [{"resource": b.resources[0], "response": {"status": "200 OK"}}]
        for u in urls[1:]:
            found = [r for r in b.resources if u.startswith(r["resourceType"] + "?")]
            out.append({"resource": page(found), "response": {"status": "200 OK"}})
        return 200, {"Content-Type": "application/fhir+json"}, orjson.dumps(
            {"resourceType": "Bundle", "type": "batch-response", "entry": out})

    responses.add_callback(responses.POST, BASE, callback=batch)
    responses.get(f"{BASE}/Observation", json=page(obs))
    r = reader(engine)
    items = r.patient("p1")
    assert sorted(i.resource["id"] for i in items) == sorted(x["id"] for x in b.resources)
    assert r.stats.per_patient == {"Patient/p1": 3}  # metadata, the batch, the Observation search
    query = parse_qs(urlsplit(responses.calls[-1].request.url).query)
    assert query["patient"] == ["Patient/p1"]
    day0 = b.day0.toordinal()
    from datetime import date
    assert query["date"] == [f"ge{date.fromordinal(day0 - 1 - OBSERVATION_LOOKBACK_DAYS).isoformat()}"]


@responses.activate
def test_no_infusion_means_no_observation_search(engine):
    b = PatientBuilder("p2", infusion="none")
    responses.get(f"{BASE}/metadata", json=caps(everything=False, batch=False))
    responses.get(f"{BASE}/Patient/p2", json=b.resources[0])
    for rtype in ("MedicationAdministration", "MedicationStatement", "Procedure", "Condition"):
        responses.get(f"{BASE}/{rtype}", json=page([]))
    items = reader(engine).patient("p2")
    assert [i.resource["resourceType"] for i in items] == ["Patient"]
    assert not any(c.request.url.startswith(f"{BASE}/Observation") for c in responses.calls)


@responses.activate
def test_a_missing_patient_is_bad_input(engine):
    responses.get(f"{BASE}/metadata", json=caps())
    responses.get(f"{BASE}/Patient/nobody/$everything", status=404, json={
        "resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]})
    with pytest.raises(BadInput, match="Patient/nobody was not found"):
        reader(engine).patient("nobody")


@responses.activate
def test_group_members_skip_inactive_and_non_patients(engine):
    responses.get(f"{BASE}/Group/g1", json={"resourceType": "Group", "id": "g1", "type": "person", "actual": True,
                                            "member": [{"entity": {"reference": "Patient/a"}},
                                                       {"entity": {"reference": "Patient/b"}, "inactive": True},
                                                       {"entity": {"reference": f"{BASE}/Patient/c"}},
                                                       {"entity": {"reference": "Practitioner/x"}}]})
    assert reader(engine).group_members("Group/g1") == ["a", "c"]


@responses.activate
def test_infused_patients_searches_product_and_procedure_codes(engine):
    responses.get(f"{BASE}/MedicationAdministration", json=page([
        {"resourceType": "MedicationAdministration", "id": "x", "subject": {"reference": "Patient/a"}}]),
        match=[responses.matchers.query_param_matcher({"_elements": "subject"}, strict_match=False)])
    responses.get(f"{BASE}/Medication", json=page([]))
    responses.get(f"{BASE}/Procedure", json=page([
        {"resourceType": "Procedure", "id": "y", "subject": {"reference": "Patient/b"}},
        {"resourceType": "Procedure", "id": "z", "subject": {"reference": "Patient/a"}}]))
    assert reader(engine).infused_patients() == ["a", "b"]
    ma_query = parse_qs(urlsplit(responses.calls[0].request.url).query)
    assert "http://www.nlm.nih.gov/research/umls/rxnorm|1987402" in ma_query["code"][0].split(",")
    proc_query = parse_qs(urlsplit(responses.calls[2].request.url).query)
    assert proc_query["code"] == [("http://www.ama-assn.org/go/cpt|38228,"
                                   "https://cart-fhir.org/fhir/CodeSystem/cart-product|car-t-cell-product")]
