"""Issue 15 in process: deadlines against a hung upstream, grading slots, entry limits, JSON only, an honest
CapabilityStatement per mode, SMART discovery, site ConceptMaps, and what `cart-fhir serve` assumes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhirbuild import PatientBuilder, bundle_of
from hung import hung_server

from cart_fhir.errors import ConfigError
from cart_fhir.remote.settings import load_settings
from cart_fhir.service import context as service_context
from cart_fhir.service import create_app
from cart_fhir.service.config import is_loopback, serve_defaults

EXAMPLE = Path("examples/crs-grade2-tocilizumab.json")
FHIR = "application/fhir+json"
BASE = {"testing": True, "auth": False, "upstream": False}


def _app(engine: Any, **overrides: Any) -> Any:
    return create_app({**BASE, "tables": engine.tables, **overrides})


def _texts(resp: Any) -> list[str]:
    body = resp.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome", body
    return [i["details"]["text"] for i in body["issue"]]


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.monotonic()
    out = fn()
    return out, time.monotonic() - start


# ---- one deadline per request, against an upstream that accepts and never answers ----------------

@pytest.fixture()
def hung() -> Any:
    with hung_server() as url:
        yield url


def test_hung_upstream_patient_operation_ends_at_the_deadline_with_504(engine, hung):
    # 60 s read timeout x 4 attempts upstream: without the deadline this took minutes.
    app = _app(engine, upstream=True, deadline=2.0, server=load_settings({"base_url": hung}, None, {}))
    resp, took = _timed(lambda: app.test_client().post("/fhir/Patient/p1/$grade-toxicity"))
    assert resp.status_code == 504 and resp.mimetype == FHIR
    assert any("deadline" in t for t in _texts(resp))
    assert 1.5 <= took <= 3.5


def test_hung_upstream_ready_probe_is_quick(engine, hung):
    app = _app(engine, upstream=True, deadline=2.0, server=load_settings({"base_url": hung}, None, {}))
    resp, took = _timed(lambda: app.test_client().get("/ready"))
    assert resp.status_code == 503 and took <= 3.0
    assert resp.get_json(force=True)["resourceType"] == "OperationOutcome"


def test_hung_cds_fhir_server_ends_at_the_deadline_with_504(engine, hung):
    app = _app(engine, deadline=2.0)
    call = {"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"patientId": "p1"}, "fhirServer": hung,
            "fhirAuthorization": {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                  "scope": "patient/*.read", "subject": "cds"}}
    resp, took = _timed(lambda: app.test_client().post("/cds-services/cart-toxicity", data=orjson.dumps(call),
                                                       headers={"Content-Type": "application/json"}))
    assert resp.status_code == 504 and took <= 3.5
    assert resp.get_json(force=True)["resourceType"] == "OperationOutcome"


def test_deadline_passed_during_write_back_is_reported_and_nothing_more_is_sent(engine, fhir, monkeypatch):
    from cart_fhir.remote.write import ResultWriter
    from cart_fhir.service import operations

    b = PatientBuilder("p1")
    b.temp(1, "08:00", 39.4)
    b.bp(2, "09:00", 85, 50)
    fhir.load(bundle_of(b.resources, "transaction"))

    class SlowWriter(ResultWriter):  # the deadline passes between reading and writing
        def write_patient(self, device: Any, group: Any) -> Any:
            time.sleep(1.6)
            return super().write_patient(device, group)

    monkeypatch.setattr(operations, "ResultWriter", SlowWriter)
    app = _app(engine, upstream=True, deadline=1.5, server=load_settings({"base_url": fhir.base_url}, None, {}))
    before = {t: fhir.count(t) for t in ("Observation", "Condition", "Device")}
    resp = app.test_client().post("/fhir/Patient/p1/$grade-toxicity?writeBack=true")
    assert resp.status_code == 504
    text = " ".join(_texts(resp))
    assert "deadline passed while writing back" in text and "nothing more was sent" in text
    time.sleep(0.5)
    assert {t: fhir.count(t) for t in before} == before  # not written after the answer either


# ---- grading slots, entry limits ---------------------------------------------------------------

def test_busy_worker_answers_503_with_retry_after(engine, monkeypatch):
    monkeypatch.setattr(service_context, "QUEUE_WAIT", 0.2)
    app = _app(engine, max_gradings=1)
    svc = app.extensions["cart_fhir"]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with svc.grading_slot():
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        held.wait(5)
        resp = app.test_client().post("/fhir/$grade-toxicity", data=EXAMPLE.read_bytes(),
                                      headers={"Content-Type": FHIR})
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
        assert "busy" in _texts(resp)[0]
    finally:
        release.set()
        t.join()
    ok = app.test_client().post("/fhir/$grade-toxicity", data=EXAMPLE.read_bytes(), headers={"Content-Type": FHIR})
    assert ok.status_code == 200


def test_380k_tiny_patients_are_refused_before_parsing(engine):
    # issue 15: this 19.8 MiB body drove one worker to 902 MB.
    entry = b'{"resource":{"resourceType":"Patient","id":"p"}},'
    body = b'{"resourceType":"Bundle","type":"collection","entry":[' + entry * 380_000 + b'{}]}'
    assert len(body) < 20 * 1024 * 1024
    app = _app(engine, max_body_bytes=20 * 1024 * 1024)
    tracemalloc.start()
    try:
        resp = app.test_client().post("/fhir/$grade-toxicity", data=body, headers={"Content-Type": FHIR})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status_code == 413 and "CART_FHIR_MAX_ENTRIES" in _texts(resp)[0]
    assert peak < 3 * len(body)  # the body and a copy or two, never the 380k parsed objects


def test_entry_limit_is_a_setting(engine):
    app = _app(engine, max_entries=10)
    resp = app.test_client().post("/fhir/$grade-toxicity", data=EXAMPLE.read_bytes(), headers={"Content-Type": FHIR})
    assert resp.status_code == 413 and "more than 10 resources" in _texts(resp)[0]


# ---- JSON only -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path,headers,status", [
    pytest.param("/fhir/metadata", {"Accept": "application/fhir+xml"}, 406, id="fhir-xml"),
    pytest.param("/fhir/metadata?_format=xml", {}, 406, id="format-xml"),
    pytest.param("/fhir/metadata", {"Accept": "text/html"}, 406, id="html"),
    pytest.param("/fhir/metadata", {"Accept": "application/fhir+xml;q=1, application/fhir+json;q=0.5"}, 200,
                 id="json-acceptable"),
    pytest.param("/fhir/metadata", {"Accept": "*/*"}, 200, id="anything"),
    pytest.param("/fhir/metadata?_format=json", {}, 200, id="format-json"),
    pytest.param("/health", {"Accept": "application/json"}, 200, id="health-json"),
])
def test_json_only(engine, path, headers, status):
    resp = _app(engine).test_client().get(path, headers=headers)
    assert resp.status_code == status
    assert resp.mimetype in (FHIR, "application/json")
    if status == 406:
        assert "JSON only" in _texts(resp)[0]


# ---- an honest CapabilityStatement and SMART discovery -----------------------------------------

def _operations(cs: dict[str, Any]) -> set[str]:
    rest = cs["rest"][0]
    ops = {f"/fhir/${o['name']}" for o in rest.get("operation", [])}
    ops |= {f"/fhir/{r['type']}/{{id}}/${o['name']}" for r in rest["resource"] for o in r.get("operation", [])}
    return ops


def test_bundle_only_mode_does_not_advertise_the_patient_operation(engine):
    client = _app(engine).test_client()
    cs = client.get("/fhir/metadata").get_json(force=True)
    assert _operations(cs) == {"/fhir/$grade-toxicity"}
    assert cs["format"] == ["application/fhir+json", "json"]
    assert "SMART" not in orjson.dumps(cs).decode()
    assert "inbound auth is off" in cs["rest"][0]["security"]["description"]
    assert client.post("/fhir/Patient/p1/$grade-toxicity").status_code == 501  # what it does not advertise
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        assert client.get(path).status_code == 404


def test_with_an_upstream_server_the_patient_operation_is_advertised(engine, fhir):
    app = _app(engine, upstream=True, server=load_settings({"base_url": fhir.base_url}, None, {}))
    cs = app.test_client().get("/fhir/metadata").get_json(force=True)
    assert _operations(cs) == {"/fhir/$grade-toxicity", "/fhir/Patient/{id}/$grade-toxicity"}


@pytest.fixture()
def jwks_file(tmp_path):
    from test_service_auth import RSA_KEY, _jwk

    path = tmp_path / "jwks.json"
    path.write_bytes(orjson.dumps({"keys": [_jwk(RSA_KEY, "rsa-1", "RS384")]}))
    return str(path)


def test_auth_without_token_endpoint_does_not_claim_smart(engine, jwks_file):
    app = _app(engine, auth=True, audience="https://cart.example.org", jwks=jwks_file, issuers="https://as.example")
    client = app.test_client()
    security = client.get("/fhir/metadata").get_json(force=True)["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "OAuth" and "extension" not in security
    assert client.get("/.well-known/smart-configuration").status_code == 404


def test_auth_with_token_endpoint_publishes_smart_discovery(engine, jwks_file):
    app = _app(engine, auth=True, audience="https://cart.example.org", jwks=jwks_file, issuers="https://as.example",
               smart_token_endpoint="https://as.example/token")
    client = app.test_client()
    security = client.get("/fhir/metadata").get_json(force=True)["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    (uris,) = [e for e in security["extension"] if e["url"].endswith("/oauth-uris")]
    assert uris["extension"] == [{"url": "token", "valueUri": "https://as.example/token"}]
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        conf = client.get(path).get_json()
        assert conf["token_endpoint"] == "https://as.example/token"
        assert {"grant_types_supported", "capabilities", "code_challenge_methods_supported"} <= set(conf)
        assert "client-confidential-asymmetric" in conf["capabilities"]


# ---- site ConceptMaps ----------------------------------------------------------------------------

def test_site_concept_map_grades_the_same_through_the_service_as_through_the_cli(engine, tmp_path):
    from test_ingest import SITE_MAP, site_patient
    from test_service_operations import graded

    cm = tmp_path / "site-map.json"
    cm.write_bytes(orjson.dumps(SITE_MAP))
    bundle = tmp_path / "site.json"
    bundle.write_bytes(orjson.dumps(site_patient().bundle()))
    cli = subprocess.run([sys.executable, "-m", "cart_fhir.cli", "grade", str(bundle), "--concept-map", str(cm),
                          "-q"], capture_output=True, check=True, timeout=120)
    expected = graded(orjson.loads(cli.stdout))
    assert any(v[0] == "Observation" and v[1] for v in expected.values())  # the site codes set a grade

    def through(app: Any) -> dict[str, Any]:
        resp = app.test_client().post("/fhir/$grade-toxicity?skipInvalid=true", data=bundle.read_bytes(),
                                      headers={"Content-Type": FHIR})
        assert resp.status_code == 200
        return graded(resp.get_json(force=True))

    assert through(_app(engine, concept_maps=str(cm))) == expected
    assert through(_app(engine)) != expected  # without the map the service does not understand them


def test_bad_concept_map_stops_start_up_naming_the_file(engine, tmp_path):
    bad = tmp_path / "bad-map.json"
    bad.write_text('{"resourceType": "ConceptMap"}')
    with pytest.raises(ConfigError, match="bad-map.json"):
        _app(engine, concept_maps=str(bad))
    with pytest.raises(ConfigError, match="CART_FHIR_CONCEPT_MAPS.*nope.json"):
        _app(engine, concept_maps=str(tmp_path / "nope.json"))


# ---- what `cart-fhir serve` assumes ---------------------------------------------------------------

@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                           ("127.0.0.2", True), ("0.0.0.0", False), ("10.1.2.3", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_serve_defaults():
    assert serve_defaults("127.0.0.1", {})[0] == {"upstream": False, "auth": False}
    assert serve_defaults("0.0.0.0", {})[0] == {"upstream": False}  # auth stays on: start-up asks for it
    assert serve_defaults("127.0.0.1", {"CART_FHIR_SERVER": "https://x/fhir", "CART_FHIR_AUDIENCE": "a"})[0] == {}
    assert serve_defaults("127.0.0.1", {"CART_FHIR_AUTH": "on"})[0] == {"upstream": False}


# ---- one schema: what /openapi.json says of a CDS call is what the handler accepts -------------------

CDS_CALLS = [
    pytest.param({"fhirServer": "https://ehr.example.org/fhir"}, id="https"),
    pytest.param({"fhirServer": "http://127.0.0.1:8081/fhir"}, id="http-loopback"),
    pytest.param({"fhirServer": "http://localhost/fhir"}, id="http-localhost"),
    pytest.param({"fhirServer": "http://ehr.example.org/fhir"}, id="http-elsewhere"),
    pytest.param({"fhirServer": "ftp://ehr.example.org"}, id="ftp"),
    pytest.param({"fhirServer": 7}, id="not-a-string"),
    pytest.param({"hookInstance": ""}, id="empty-hookInstance"),
    pytest.param({"context": {"patientId": "Patient/p1"}}, id="patient-reference"),
    pytest.param({"context": {"patientId": "p 1"}}, id="bad-patient-id"),
    pytest.param({"fhirAuthorization": {"access_token": "t", "token_type": "Bearer"}}, id="auth-without-server"),
    pytest.param({"fhirServer": "https://e/fhir", "fhirAuthorization": {"access_token": "t", "token_type": "MAC"}},
                 id="not-bearer"),
    pytest.param({"fhirServer": "https://e/fhir",
                  "fhirAuthorization": {"access_token": "t", "token_type": "bearer", "expires_in": True}},
                 id="expires-in-bool"),
    pytest.param({"prefetch": {"patient": "Patient/p1"}}, id="prefetch-string"),
]


@pytest.mark.parametrize("change", CDS_CALLS)
def test_cds_request_schema_in_openapi_is_what_the_handler_enforces(engine, change):
    import jsonschema_rs

    app = _app(engine, deadline=1.0)
    client = app.test_client()
    schema = client.get("/openapi.json").get_json()["paths"]["/cds-services/cart-toxicity"]["post"][
        "requestBody"]["content"]["application/json"]["schema"]
    from cart_fhir.service.cdshooks import PREFETCH

    # Complete prefetch (null: the search found nothing): nothing is fetched from fhirServer, nothing leaves.
    prefetch = {**dict.fromkeys(PREFETCH), "patient": {"resourceType": "Patient", "id": "p1"}}
    call = {"hook": "patient-view", "hookInstance": "d1577c69", "context": {"patientId": "p1"},
            "prefetch": prefetch, **change}
    valid = jsonschema_rs.Draft202012Validator(schema).is_valid(call)
    resp = client.post("/cds-services/cart-toxicity", data=orjson.dumps(call),
                       headers={"Content-Type": "application/json"})
    assert (resp.status_code != 400) == valid, resp.get_json(force=True)


PARAMETER_PARTS = [
    pytest.param([{"name": "bundle", "resource": "EXAMPLE"}], id="bundle"),
    pytest.param([{"name": "bundle", "resource": "EXAMPLE"}, {"name": "bundleType", "valueCode": "transaction"}],
                 id="bundle-transaction"),
    pytest.param([{"name": "bundle", "resource": "EXAMPLE"}, {"name": "skipInvalid", "valueBoolean": True}],
                 id="skip-invalid"),
    pytest.param([{"name": "bundle", "resource": {"resourceType": "Patient"}}], id="bundle-not-a-bundle"),
    pytest.param([{"name": "bundle"}], id="bundle-without-resource"),
    pytest.param([{"name": "bundle", "resource": "EXAMPLE"}, {"name": "skipInvalid", "valueString": "yes"}],
                 id="flag-not-boolean"),
    pytest.param([{"name": "bundle", "resource": "EXAMPLE"}, {"name": "bundleType", "valueCode": "batch"}],
                 id="bundle-type-batch"),
    pytest.param([{"name": "bundle", "resource": "EXAMPLE"}, {"name": "colour", "valueString": "red"}],
                 id="unknown-name"),
    pytest.param([{"resource": "EXAMPLE"}], id="no-name"),
]


@pytest.mark.parametrize("parts", PARAMETER_PARTS)
def test_parameters_schema_in_openapi_is_what_the_operation_enforces(engine, parts):
    import jsonschema_rs

    client = _app(engine).test_client()
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]["Parameters"]
    example = orjson.loads(EXAMPLE.read_bytes())
    body = {"resourceType": "Parameters",
            "parameter": [{**p, "resource": example} if p.get("resource") == "EXAMPLE" else p for p in parts]}
    valid = jsonschema_rs.Draft202012Validator(schema).is_valid(body)
    resp = client.post("/fhir/$grade-toxicity", data=orjson.dumps(body), headers={"Content-Type": FHIR})
    assert (resp.status_code == 200) == valid and resp.status_code in (200, 400), resp.get_json(force=True)
