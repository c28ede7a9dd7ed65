"""CDS Hooks 2.0: cards from engine results of built patients, and the cart-toxicity endpoint end to end."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import jwt
import orjson
import pytest
import responses
from cryptography.hazmat.primitives.asymmetric import ec
from fhirbuild import PatientBuilder, bundle_of
from helpers import run

from cart_fhir.grading.registry import GRADERS
from cart_fhir.grading.result import Toxicity
from cart_fhir.pipeline import Engine
from cart_fhir.service.app import create_app
from cart_fhir.service.cards import SUMMARY_MAX, criteria_of, toxicity_cards, trend
from cart_fhir.tables import load_tables, mappings_dir

EHR = "https://ehr.example.org/fhir"
TIMELINE = "https://apps.example.org/cart-timeline/launch"
TODAY = date(2024, 5, 10)  # day 9 of PatientBuilder's infusion (day 0 = 2024-05-01)

FACTS = load_tables().output.toxicities  # output-codes.yaml: each toxicity's facts


def fever(b: PatientBuilder, day: int, t: float = 38.6) -> None:
    b.temp(day, "06:00", t)


def crs_day(b: PatientBuilder, day: int, grade: int) -> None:
    """One CRS day of the given ASTCT grade (tests/test_crs_criteria.py rows): fever, then low-flow oxygen
    (grade 2) or a vasopressor (grade 3); grade 0 is a normal temperature."""
    if grade == 0:
        b.temp(day, "06:00", 36.9)
        return
    fever(b, day)
    if grade == 2:
        b.oxygen(day, "09:00", "nasal-cannula", 3)
    elif grade == 3:
        b.pressor("norepinephrine", day, "08:00", day, "20:00")


def crs_series(*grades: int) -> Callable[[PatientBuilder], None]:
    def build(b: PatientBuilder) -> None:
        for i, g in enumerate(grades, start=1):
            crs_day(b, i, g)
    return build


def cards_of(engine: Engine, build: Callable[[PatientBuilder], Any], today: date = TODAY,
             pid: str = "p1", **patient: Any) -> list[dict[str, Any]]:
    b = PatientBuilder(pid=pid, **patient)
    build(b)
    return toxicity_cards(run(engine, b.bundle()), today=today, source_url="https://cart-fhir.example/cds-services",
                          timeline_url=TIMELINE, patient_id=pid, criteria=criteria_of(engine))


def only(cards: list[dict[str, Any]], topic: str) -> dict[str, Any]:
    found = [c for c in cards if c["source"]["topic"]["code"] == topic]
    assert len(found) == 1, [c["summary"] for c in cards]
    return found[0]


# ---- cards: indicator, summary, trend --------------------------------------------------------------

@pytest.mark.parametrize(("build", "indicator", "summary"), [
    pytest.param(crs_series(1), "info", "CRS grade 1 (ASTCT 2019) since day 1", id="crs-grade1-info"),
    pytest.param(crs_series(2), "warning", "CRS grade 2 (ASTCT 2019) since day 1", id="crs-grade2-warning"),
    pytest.param(crs_series(3), "critical", "CRS grade 3 (ASTCT 2019) since day 1", id="crs-grade3-critical"),
    pytest.param(crs_series(1, 2), "warning", "CRS grade 2 (ASTCT 2019) since day 1, rising",
                 id="crs-1-2-rising-warning"),
    pytest.param(crs_series(3, 2, 1), "info", "CRS grade 1 (ASTCT 2019) since day 1, falling, max 3 day 1",
                 id="crs-3-2-1-falling-current-grade-sets-indicator"),
    pytest.param(crs_series(2, 2, 2), "warning", "CRS grade 2 (ASTCT 2019) since day 1, stable",
                 id="crs-2-2-2-stable"),
    pytest.param(crs_series(1, 3, 3, 3, 1, 2), "warning", "CRS grade 2 (ASTCT 2019) since day 1, falling, max 3 day 2",
                 id="crs-trend-uses-last-three-graded-days"),
    pytest.param(lambda b: (fever(b, 1), b.oxygen(1, "09:00", "nasal-cannula")), "warning",
                 "CRS grade >=2 (ASTCT 2019) since day 1", id="crs-at-least-2-lower-bound-shown"),
    pytest.param(crs_series(2, 0), "info", "CRS resolved day 2 (max grade 2, ASTCT 2019), onset day 1",
                 id="crs-resolved-info"),
])
def test_crs_card_indicator_and_summary(engine, build, indicator, summary) -> None:
    card = only(cards_of(engine, build, today=date(2024, 5, 10)), "crs")
    assert card["indicator"] == indicator
    assert card["summary"].startswith(summary), card["summary"]
    assert len(card["summary"]) <= SUMMARY_MAX


@pytest.mark.parametrize(("grades", "expected"), [
    pytest.param([1], None, id="one-day-no-trend"),
    pytest.param([1, 2], "rising", id="two-days-rising"),
    pytest.param([2, 2, 2], "stable", id="stable"),
    pytest.param([3, 2, 1], "falling", id="falling"),
    pytest.param([1, 3, 1], "stable", id="peak-between-same-ends-stable"),
    pytest.param([3, 1, 2, 3], "rising", id="only-last-three-count"),
])
def test_trend(grades, expected) -> None:
    assert trend(grades) == expected


def test_not_assessable_day_names_what_is_missing(engine) -> None:
    def build(b: PatientBuilder) -> None:
        fever(b, 1)
        b.bp(2, "08:00", 120, 70)  # no temperature on day 2
    card = only(cards_of(engine, build, today=date(2024, 5, 3)), "crs")
    assert "day 2 not assessable" in card["summary"]
    assert card["indicator"] == "info"  # grade 1 was the last graded day: never raised by a gap
    assert "Day 2 not assessable: missing body temperature (LOINC 8310-5)" in card["detail"]
    assert "d1 1 -> d2 n/a" in card["detail"]


def test_detail_names_onset_evidence_and_criteria_table(engine) -> None:
    card = only(cards_of(engine, crs_series(1, 3)), "crs")
    d = card["detail"]
    assert "- Onset: day 1, 2024-05-02 06:00+01:00" in d
    assert "d1 1 -> d2 3" in d
    assert "hypotension: single vasopressor (grade 3)" in d and "MedicationAdministration/norepinephrine-" in d
    assert "table astct-crs-2019 v1" in d
    assert "Lee et al., Biol Blood Marrow Transplant 2019;25:625-638" in d


def test_icans_card_uses_icans_criteria(engine) -> None:
    card = only(cards_of(engine, lambda b: (b.ice(1, "10:00", 8), b.ice(2, "10:00", 5))), "icans")
    assert card["summary"].startswith("ICANS grade 2 (ASTCT 2019) since day 1, rising")
    assert card["indicator"] == "warning"
    assert "ice score 5 (grade 2)" in card["detail"]


def test_event_cards_infection_and_icaht(engine) -> None:
    def build(b: PatientBuilder) -> None:
        b.lab("anc", 2, "08:00", 300, "/uL")
        b.lab("anc", 4, "08:00", 80, "/uL")
        b.coded_condition("http://snomed.info/sct", "233604007", 6, "10:00", display="pneumonia")
    cards = cards_of(engine, build)
    infection = only(cards, "infection")
    assert infection["summary"] == "Infection (Lung infection) grade >=2 (CTCAE v5.0) since day 6"
    assert infection["indicator"] == "warning"
    assert infection["source"]["url"] == FACTS[Toxicity.INFECTION].source_url
    assert "Grade could be higher, missing:" in infection["detail"]
    b = PatientBuilder()
    build(b)
    [ev] = [e for e in run(engine, b.bundle()).patients[0].courses[0].events if e.toxicity == Toxicity.ICAHT_EARLY]
    shown = f">={ev.max_grade}" if ev.state.value == "at-least" else str(ev.max_grade)
    icaht = only(cards, "icaht")  # the card says exactly what the engine graded
    assert icaht["summary"] == f"Early ICAHT grade {shown} (EHA/EBMT 2023) since day {ev.onset_day}"
    assert icaht["indicator"] == {1: "info", 2: "warning"}.get(ev.max_grade, "critical")
    assert icaht["source"]["label"] == "cart-fhir: EHA/EBMT 2023 (Rejeski et al., Blood 2023;142:865-877)"


def test_hematotox_score_is_an_info_card_when_low(engine) -> None:
    def build(b: PatientBuilder) -> None:
        for var, value, unit in (("platelets", 200, "10*3/uL"), ("anc", 3.0, "10*3/uL"),
                                 ("hemoglobin", 12.0, "g/dL"), ("crp", 0.5, "mg/dL"), ("ferritin", 300, "ng/mL")):
            b.lab(var, -6, "08:00", value, unit)
        b.medication("fludarabine", -5, "09:00", rxnorm="24698")
        fever(b, 1)
    cards = cards_of(engine, build)
    hx = only(cards, "car-hematotox-score")
    assert hx["summary"] == "CAR-HEMATOTOX score 0 (Rejeski 2021): low risk of hematotoxicity"
    assert hx["indicator"] == "info"
    assert [c["source"]["topic"]["code"] for c in cards] == ["crs", "car-hematotox-score"]


@pytest.mark.parametrize(("build", "today"), [
    pytest.param(lambda b: None, TODAY, id="infusion-nothing-graded"),
    pytest.param(crs_series(0, 0), TODAY, id="grade-0-days-only"),
    pytest.param(crs_series(2), date(2024, 4, 30), id="today-before-infusion"),
    pytest.param(lambda b: crs_day(b, 5, 2), date(2024, 5, 4), id="episode-after-today-not-shown"),
])
def test_no_cards(engine, build, today) -> None:
    assert cards_of(engine, build, today=today) == []


def test_no_infusion_no_cards(engine) -> None:
    assert cards_of(engine, crs_series(2), infusion="none") == []


def test_data_after_today_is_left_out(engine) -> None:
    card = only(cards_of(engine, crs_series(1, 2, 3), today=date(2024, 5, 3)), "crs")
    assert card["summary"].startswith("CRS grade 2 (ASTCT 2019) since day 1, rising")
    assert "d3" not in card["detail"]


def test_only_the_most_recent_infusion(engine) -> None:
    def build(b: PatientBuilder) -> None:
        crs_day(b, 1, 3)
        crs_day(b, 2, 0)
        b.infusion_medication(40, "10:00")
        crs_day(b, 41, 1)
    cards = cards_of(engine, build, today=date(2024, 6, 12))
    crs = only(cards, "crs")
    assert crs["summary"].startswith("CRS grade 1 (ASTCT 2019) since day 1")  # day 1 of the re-infusion
    assert orjson.loads(crs["links"][0]["appContext"])["infusion"] != "MedicationAdministration/cart-1"


def test_uuid_is_deterministic_and_per_patient_episode(engine) -> None:
    first = only(cards_of(engine, crs_series(1, 2)), "crs")
    again = only(cards_of(engine, crs_series(1, 2, 3)), "crs")
    other = only(cards_of(engine, crs_series(1, 2), pid="p2"), "crs")
    assert uuid.UUID(first["uuid"]).version == 5
    assert first["uuid"] == again["uuid"]  # the same episode, a day later and worse
    assert first["uuid"] != other["uuid"]


def test_card_shape_link_and_source(engine) -> None:
    card = only(cards_of(engine, crs_series(2)), "crs")
    assert set(card) == {"uuid", "summary", "detail", "indicator", "source", "links"}
    assert card["source"]["label"] == "cart-fhir: ASTCT 2019 (Lee et al., Biol Blood Marrow Transplant 2019;25:625-638)"
    assert card["source"]["url"] == "https://doi.org/10.1016/j.bbmt.2018.12.758"
    [link] = card["links"]
    assert (link["type"], link["url"], link["label"]) == ("smart", TIMELINE, "CAR-T toxicity timeline")
    assert orjson.loads(link["appContext"]) == {"patient": "p1", "infusion": "MedicationAdministration/cart-1",
                                                "toxicity": "crs"}


@pytest.mark.parametrize("tox", [pytest.param(t, id=t) for t, f in FACTS.items() if "doi.org" in f.source_url])
def test_source_doi_is_the_one_the_mapping_table_cites(tox) -> None:
    """The card links the paper the criteria table itself names (mappings/*.yaml `source:`)."""
    table = FACTS[tox].criteria_table
    text = next(p.read_text() for p in mappings_dir().glob("*.yaml") if f"table: {table}\n" in p.read_text())
    assert FACTS[tox].source_url.removeprefix("https://doi.org/") in text


def test_summary_stays_short_for_long_names(engine) -> None:
    long_id = "x" * 64
    cards = cards_of(engine, crs_series(1, 2, 3, 3, 2, 1), pid=long_id)
    assert cards and all(len(c["summary"]) <= SUMMARY_MAX for c in cards)


# ---- the endpoint ------------------------------------------------------------------------------------

def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return bundle_of(resources, "searchset")


def patient_prefetch(b: PatientBuilder) -> dict[str, Any]:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in b.resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    return {"patient": by_type["Patient"][0], "observations": searchset(by_type.get("Observation", [])),
            "medicationAdministrations": searchset(by_type.get("MedicationAdministration", [])),
            "medicationStatements": None, "procedures": None, "conditions": None}


def hook_call(pid: str = "p1", prefetch: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "context": {"patientId": pid, "userId":
                                                                                   "Practitioner/dr-1"}}
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body | extra


def grade2_patient() -> PatientBuilder:
    b = PatientBuilder()
    crs_series(1, 2)(b)
    return b


@pytest.fixture(scope="module")
def client(engine):
    app = create_app({"testing": True, "auth": False, "upstream": False, "tables": engine.tables,
                      "timeline_url": TIMELINE})
    return app.test_client()


def test_discovery_shape(client) -> None:
    r = client.get("/cds-services")
    assert r.status_code == 200 and r.mimetype == "application/json"
    [svc] = r.json["services"]
    assert (svc["id"], svc["hook"]) == ("cart-toxicity", "patient-view")
    assert svc["title"] and svc["description"] and svc["usageRequirements"]
    assert svc["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert "_include=MedicationAdministration:medication" in svc["prefetch"]["medicationAdministrations"]
    for key, rtype in (("observations", "Observation"), ("procedures", "Procedure"), ("conditions", "Condition")):
        assert svc["prefetch"][key] == f"{rtype}?patient={{{{context.patientId}}}}&_count=1000"


def test_patient_view_with_prefetch(client) -> None:
    r = client.post("/cds-services/cart-toxicity", json=hook_call(prefetch=patient_prefetch(grade2_patient())))
    assert r.status_code == 200, r.json
    assert r.mimetype == "application/json"
    [card] = r.json["cards"]
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("CRS grade 2 (ASTCT 2019) since day 1, rising")
    assert card["links"][0]["url"] == TIMELINE


def test_patient_view_nothing_graded_answers_no_cards(client) -> None:
    r = client.post("/cds-services/cart-toxicity", json=hook_call(prefetch=patient_prefetch(PatientBuilder())))
    assert (r.status_code, r.json) == (200, {"cards": []})


@pytest.mark.parametrize(("mutate", "where"), [
    pytest.param(lambda body: body.update(hook="order-select"), "hook", id="wrong-hook"),
    pytest.param(lambda body: body.pop("hookInstance"), "hookInstance", id="no-hookInstance"),
    pytest.param(lambda body: body.update(context={}), "context.patientId", id="no-patientId"),
    pytest.param(lambda body: body["context"].update(patientId="a b"), "context.patientId", id="bad-patientId"),
    pytest.param(lambda body: body.update(fhirAuthorization={"access_token": "t", "token_type": "Bearer"}),
                 "fhirServer", id="fhirAuthorization-without-fhirServer"),
    pytest.param(lambda body: body.update(fhirServer="http://ehr.example.org/fhir"), "fhirServer",
                 id="plain-http-fhirServer"),
    pytest.param(lambda body: body["prefetch"].update(patient="Patient/p1"), "prefetch.patient",
                 id="prefetch-not-a-resource"),
])
def test_bad_request_is_400_operation_outcome(client, mutate, where) -> None:
    body = hook_call(prefetch=patient_prefetch(grade2_patient()))
    mutate(body)
    r = client.post("/cds-services/cart-toxicity", json=body)
    assert r.status_code == 400
    assert r.json["resourceType"] == "OperationOutcome"
    assert r.json["issue"][0]["expression"] == [where]


@pytest.mark.parametrize("prefetch", [
    pytest.param(None, id="no-prefetch"),
    pytest.param({"patient": None}, id="patient-null"),
    pytest.param({"patient": {"resourceType": "OperationOutcome", "issue": []}}, id="patient-outcome"),
])
def test_no_prefetch_and_no_fhir_server_is_412(client, prefetch) -> None:
    r = client.post("/cds-services/cart-toxicity", json=hook_call(prefetch=prefetch))
    assert r.status_code == 412
    assert r.json["resourceType"] == "OperationOutcome"
    assert "no fhirServer to fetch from" in r.json["issue"][0]["details"]["text"]


def test_paged_prefetch_without_fhir_server_is_412(client) -> None:
    prefetch = patient_prefetch(grade2_patient())
    prefetch["observations"]["link"] = [{"relation": "next", "url": f"{EHR}/Observation?page=2"}]
    r = client.post("/cds-services/cart-toxicity", json=hook_call(prefetch=prefetch))
    assert r.status_code == 412


@pytest.fixture()
def ehr() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def _searchset_for(b: PatientBuilder, rtype: str) -> dict[str, Any]:
    return searchset([r for r in b.resources if r["resourceType"] == rtype])


def test_whole_patient_read_from_fhir_server_when_no_prefetch(client, ehr) -> None:
    b = grade2_patient()
    # No $everything, no batch: PatientReader reads by searches, one per type, then the Patient.
    ehr.get(f"{EHR}/metadata", json={"resourceType": "CapabilityStatement", "rest": [
        {"mode": "server", "interaction": [{"code": "search-system"}]}]})
    for rtype in ("MedicationAdministration", "MedicationStatement", "Procedure", "Condition", "Observation"):
        ehr.get(re.compile(rf"{re.escape(EHR)}/{rtype}\b.*"), json=_searchset_for(b, rtype))
    ehr.get(f"{EHR}/Patient/p1", json=b.resources[0])
    body = hook_call(fhirServer=EHR, fhirAuthorization={"access_token": "ehr-token", "token_type": "Bearer",
                                                        "expires_in": 300, "scope": "patient/*.read",
                                                        "subject": "cds-service"})
    r = client.post("/cds-services/cart-toxicity", json=body)
    assert r.status_code == 200, r.json
    assert [c["indicator"] for c in r.json["cards"]] == ["warning"]
    assert all(call.request.headers["Authorization"] == "Bearer ehr-token" for call in ehr.calls)


def test_only_missing_prefetch_keys_are_fetched(client, ehr) -> None:
    b = grade2_patient()
    prefetch = patient_prefetch(b)
    del prefetch["observations"]  # the EHR could not satisfy this key: left out (CDS Hooks 2.0 Prefetch)
    prefetch["conditions"] = {"resourceType": "OperationOutcome", "issue": []}  # 2.0: a failed prefetch
    obs = ehr.get(re.compile(rf"{re.escape(EHR)}/Observation\?.*"), json=_searchset_for(b, "Observation"))
    cond = ehr.get(re.compile(rf"{re.escape(EHR)}/Condition\?.*"), json=searchset([]))
    r = client.post("/cds-services/cart-toxicity", json=hook_call(prefetch=prefetch, fhirServer=EHR))
    assert r.status_code == 200, r.json
    assert r.json["cards"][0]["summary"].startswith("CRS grade 2")
    assert (obs.call_count, cond.call_count, len(ehr.calls)) == (1, 1, 2)  # no metadata, no Patient read
    assert "patient=p1" in obs.calls[0].request.url


def test_next_page_of_prefetch_is_read_from_fhir_server(client, ehr) -> None:
    b = grade2_patient()
    prefetch = patient_prefetch(b)
    temps = [r for r in b.resources if r["resourceType"] == "Observation"]
    prefetch["observations"] = searchset(temps[:1]) | {"link": [{"relation": "next",
                                                                 "url": f"{EHR}/Observation?page=2"}]}
    page2 = ehr.get(f"{EHR}/Observation?page=2", json=searchset(temps[1:]))
    r = client.post("/cds-services/cart-toxicity", json=hook_call(prefetch=prefetch, fhirServer=EHR))
    assert r.status_code == 200, r.json
    assert page2.call_count == 1
    assert r.json["cards"][0]["summary"].startswith("CRS grade 2")  # day 2's oxygen came from page 2


@pytest.mark.parametrize(("status", "expected"), [pytest.param(500, 502, id="ehr-500-is-502"),
                                                  pytest.param(403, 502, id="ehr-403-is-502")])
def test_fhir_server_error_surfaces_as_gateway_error(client, ehr, status, expected) -> None:
    prefetch = patient_prefetch(grade2_patient())
    del prefetch["observations"]
    ehr.get(re.compile(rf"{re.escape(EHR)}/Observation\?.*"), status=status,
            json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]})
    r = client.post("/cds-services/cart-toxicity", json=hook_call(prefetch=prefetch, fhirServer=EHR))
    assert r.status_code == expected
    assert r.json["resourceType"] == "OperationOutcome"


# ---- with auth on: the EHR's signed JWT (CDS Hooks 2.0 "Trusting CDS Clients") --------------------------

ISSUER = "https://ehr.example.org"
SERVICE_URL = "http://localhost/cds-services/cart-toxicity"  # request.base_url under the test client


@pytest.fixture(scope="module")
def ehr_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def secured(engine, ehr_key, tmp_path_factory):
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(ehr_key.public_key(), as_dict=True) | {"kid": "ehr-1", "alg": "ES384"}
    path = tmp_path_factory.mktemp("cds") / "jwks.json"
    path.write_bytes(orjson.dumps({"keys": [jwk]}))
    app = create_app({"testing": True, "auth": True, "upstream": False, "tables": engine.tables,
                      "audience": "http://localhost", "jwks": str(path), "issuers": ISSUER})
    return app.test_client()


def cds_token(key: ec.EllipticCurvePrivateKey, **over: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "ehr-client", "aud": SERVICE_URL, "iat": now, "exp": now + 300,
              "jti": str(uuid.uuid4())} | over
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": "ehr-1"})


def test_auth_discovery_is_public(secured) -> None:
    assert secured.get("/cds-services").status_code == 200


def test_auth_good_token_gets_cards(secured, ehr_key) -> None:
    r = secured.post("/cds-services/cart-toxicity", json=hook_call(prefetch=patient_prefetch(grade2_patient())),
                     headers={"Authorization": f"Bearer {cds_token(ehr_key)}"})
    assert r.status_code == 200, r.json
    assert r.json["cards"][0]["indicator"] == "warning"


@pytest.mark.parametrize("header", [
    pytest.param(lambda key: None, id="no-token"),
    pytest.param(lambda key: f"Bearer {cds_token(key, aud='https://elsewhere.example/cds-services/x')}",
                 id="wrong-audience"),
    pytest.param(lambda key: f"Bearer {cds_token(ec.generate_private_key(ec.SECP384R1()))}", id="foreign-key"),
])
def test_auth_rejected_before_any_work(secured, ehr_key, header) -> None:
    value = header(ehr_key)
    r = secured.post("/cds-services/cart-toxicity", json=hook_call(),  # no prefetch: would be 412 if it got far
                     headers={"Authorization": value} if value else {})
    assert r.status_code == 401
    assert r.json["resourceType"] == "OperationOutcome"


def test_auth_replayed_jti_is_refused(secured, ehr_key) -> None:
    token = cds_token(ehr_key)
    body = hook_call(prefetch=patient_prefetch(grade2_patient()))
    first = secured.post("/cds-services/cart-toxicity", json=body, headers={"Authorization": f"Bearer {token}"})
    again = secured.post("/cds-services/cart-toxicity", json=body, headers={"Authorization": f"Bearer {token}"})
    assert (first.status_code, again.status_code) == (200, 401)


def test_criteria_cover_every_toxicity(engine) -> None:
    crit = criteria_of(engine)
    assert set(crit) == {t for spec in GRADERS for t in spec.toxicities}
    assert {t: c.short for t, c in crit.items() if t in (Toxicity.CRS, Toxicity.IEC_HS, Toxicity.INFECTION)} == {
        Toxicity.CRS: "ASTCT 2019", Toxicity.IEC_HS: "ASTCT 2023", Toxicity.INFECTION: "CTCAE v5.0"}


def test_t_cell_malignancy_card_carries_the_fda_actions(engine) -> None:
    """Issue 16: a second malignancy has no grade; its card is a warning naming the boxed-warning actions."""
    def build(b: PatientBuilder) -> None:
        b.coded_condition("http://hl7.org/fhir/sid/icd-10-cm", "C84.40", 5, "09:00",
                          display="Peripheral T-cell lymphoma")
    card = only(cards_of(engine, build), "second-malignancy")
    assert card["summary"] == "Second malignancy (t-cell) since day 5"
    assert card["indicator"] == "warning"
    assert "CAR transgene" in card["detail"] and "manufacturer" in card["detail"] and "none applies" in card["detail"]
