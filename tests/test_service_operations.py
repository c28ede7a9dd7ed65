"""The Flask service's FHIR operations through Flask's test client (auth off here; see test_service_auth)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhirbuild import PatientBuilder, bundle_of
from helpers import RECORDED

from cart_fhir.ingest.read import read_paths
from cart_fhir.service import create_app

EXAMPLE = Path("examples/crs-grade2-tocilizumab.json")
FHIR = "application/fhir+json"


@pytest.fixture(scope="module")
def app(engine):
    return create_app({"testing": True, "auth": False, "upstream": False, "tables": engine.tables,
                       "max_body_bytes": 2 * 1024 * 1024})


@pytest.fixture()
def client(app):
    return app.test_client()


def post(client: Any, path: str, body: Any, content_type: str = FHIR) -> Any:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(path, data=data, headers={"Content-Type": content_type})


def outcome_texts(resp: Any) -> list[str]:
    body = resp.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome", body
    return [i["details"]["text"] for i in body["issue"]]


def graded(bundle: dict[str, Any]) -> dict[str, Any]:
    """identifier/tag -> value of each graded resource (what a clinician reads), run report set aside."""
    out = {}
    for e in bundle["entry"]:
        r = e["resource"]
        if r["resourceType"] in ("OperationOutcome", "Device", "Provenance"):
            continue
        ident = r["identifier"][0] if isinstance(r["identifier"], list) else r["identifier"]
        out[ident["value"]] = (r["resourceType"], r.get("valueInteger"), r.get("code"), r.get("stage"),
                               r.get("extension"))
    return out


def test_grade_a_bundle_same_grades_as_the_cli(client, engine):
    resp = post(client, "/fhir/$grade-toxicity", orjson.loads(EXAMPLE.read_bytes()))
    assert resp.status_code == 200 and resp.mimetype == FHIR
    body = resp.get_json(force=True)
    assert body["resourceType"] == "Bundle" and body["type"] == "collection"
    cli = engine.bundle(engine.resources(engine.grade(read_paths([EXAMPLE])), RECORDED))
    assert graded(body) == graded(cli) and graded(body)
    report = [e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == "OperationOutcome"]
    assert len(report) == 1 and any("patients: 1 read" in i["details"]["text"] for i in report[0]["issue"])


def test_grade_parameters_with_a_bundle_part_and_transaction_output(client):
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "bundle", "resource": orjson.loads(EXAMPLE.read_bytes())},
        {"name": "bundleType", "valueCode": "transaction"}]}
    body = post(client, "/fhir/$grade-toxicity", params).get_json(force=True)
    assert body["type"] == "transaction"
    assert all(e["request"]["method"] == "PUT" and ("?" in e["request"]["url"]) ==
               (e["resource"]["resourceType"] != "AdverseEvent") for e in body["entry"])  # R4: no AE identifier search


@pytest.mark.parametrize("body,content_type,status,text", [
    pytest.param(b'{"resourceType": "Bundle", ', FHIR, 400, "not valid JSON", id="broken-json"),
    pytest.param(b"", FHIR, 400, "empty", id="empty-body"),
    pytest.param({"resourceType": "Patient", "id": "x"}, FHIR, 400, "expected a Bundle or a Parameters",
                 id="wrong-resource-type"),
    pytest.param([1, 2], FHIR, 400, "JSON object", id="json-array"),
    pytest.param({"resourceType": "Parameters", "parameter": [{"name": "colour", "valueString": "red"}]}, FHIR,
                 400, "Parameters.parameter[0].name: \"colour\" is not one of", id="unknown-parameter"),
    pytest.param({"resourceType": "Parameters", "parameter": []}, FHIR, 400, "no 'bundle' part", id="no-bundle"),
    pytest.param({"resourceType": "Bundle", "type": "nonsense"}, FHIR, 400, "not a FHIR R4 Bundle type",
                 id="bad-bundle-type"),
    pytest.param({"resourceType": "Bundle", "type": {}}, FHIR, 400, "not a FHIR R4 Bundle type",
                 id="bundle-type-object-found-by-fuzzing"),
    pytest.param(b"<Bundle/>", "application/fhir+xml", 415, "Content-Type", id="xml"),
    pytest.param(b"hello", "text/plain", 415, "Content-Type", id="text"),
    pytest.param(b"{" + b" " * (3 * 1024 * 1024) + b"}", FHIR, 413, "larger than", id="too-large"),
])
def test_malformed_requests_get_an_operation_outcome(client, body, content_type, status, text):
    resp = post(client, "/fhir/$grade-toxicity", body, content_type)
    assert resp.status_code == status and resp.mimetype == FHIR
    assert any(text in t for t in outcome_texts(resp)), outcome_texts(resp)
    assert client.get("/health").status_code == 200  # and the service is fine afterwards


def test_invalid_resources_are_named_or_skipped_on_request(client):
    b = PatientBuilder("p1")
    b.temp(1, "08:00", 39.0)
    b.temp_raw(1, "09:00", {"value": 39.1, "unit": "xyz", "system": "http://unitsofmeasure.org", "code": "xyz"})
    resp = post(client, "/fhir/$grade-toxicity", b.bundle())
    assert resp.status_code == 400
    issues = resp.get_json(force=True)["issue"]
    assert "unit 'xyz'" in issues[0]["details"]["text"] and "Observation/temp-" in issues[0]["expression"][0]
    ok = post(client, "/fhir/$grade-toxicity?skipInvalid=true", b.bundle())
    assert ok.status_code == 200
    report = ok.get_json(force=True)["entry"][-1]["resource"]
    assert any(i["severity"] == "error" and "unit 'xyz'" in i["details"]["text"] for i in report["issue"])


def test_metadata_and_operation_definitions(client):
    cs = client.get("/fhir/metadata").get_json(force=True)
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    urls = [op["definition"] for op in cs["rest"][0]["operation"]]
    urls += [op["definition"] for r in cs["rest"][0]["resource"] for op in r.get("operation", [])]
    for url in urls:
        od = client.get("/fhir/OperationDefinition/" + url.rsplit("/", 1)[1]).get_json(force=True)
        assert od["resourceType"] == "OperationDefinition" and od["url"] == url and od["code"] == "grade-toxicity"
    published = [r["type"] for r in cs["rest"][0]["resource"] if r.get("interaction")]
    assert {"StructureDefinition", "CodeSystem", "ValueSet", "ConceptMap"} <= set(published)
    for path, rtype in (("StructureDefinition/cart-toxicity-grade", "StructureDefinition"),
                        ("CodeSystem/cart-toxicity", "CodeSystem"), ("ValueSet/toxicity-grade", "ValueSet"),
                        ("ConceptMap/avpu-to-consciousness-level", "ConceptMap"),
                        ("CapabilityStatement/cart-fhir-service", "CapabilityStatement")):
        got = client.get(f"/fhir/{path}")
        assert got.status_code == 200 and got.get_json(force=True)["resourceType"] == rtype, path
    sd = client.get("/fhir/StructureDefinition/cart-toxicity-grade").get_json(force=True)
    assert sd["url"] == "https://cart-fhir.org/fhir/StructureDefinition/cart-toxicity-grade" and sd["snapshot"]
    missing = client.get("/fhir/OperationDefinition/nope")
    assert missing.status_code == 404 and missing.mimetype == FHIR


@pytest.mark.parametrize("method,path,status", [
    pytest.param("get", "/fhir/nothing-here", 404, id="unknown-path"),
    pytest.param("get", "/fhir/$grade-toxicity", 405, id="wrong-method"),
    pytest.param("post", "/fhir/Patient/p1/$grade-toxicity", 501, id="no-upstream"),
    pytest.param("post", "/fhir/Patient/bad id!/$grade-toxicity", 400, id="bad-patient-id"),
])
def test_errors_are_operation_outcomes_not_html(client, method, path, status):
    resp = getattr(client, method)(path)
    assert resp.status_code == status and resp.mimetype == FHIR
    assert b"<html" not in resp.data.lower()
    if status == 405:
        assert "POST" in resp.headers["Allow"]


def test_an_internal_error_has_no_stack_trace(app, client, monkeypatch, caplog):
    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("secret internals")
    monkeypatch.setattr(app.extensions["cart_fhir"].engine, "grade", boom)
    with caplog.at_level(logging.ERROR, logger="cart_fhir.service"):
        resp = post(client, "/fhir/$grade-toxicity", orjson.loads(EXAMPLE.read_bytes()))
    assert resp.status_code == 500
    text = " ".join(outcome_texts(resp))
    assert "secret internals" not in text and "Traceback" not in text and resp.headers["X-Request-Id"] in text
    assert "secret internals" in caplog.text  # the log has it, for the operator


def test_one_structured_log_line_per_request_without_patient_data(client, caplog):
    b = PatientBuilder("p1", birth="1970-03-15")
    b.temp(1, "08:00", 39.0)
    with caplog.at_level(logging.INFO, logger="cart_fhir.access"):
        resp = client.post("/fhir/$grade-toxicity", data=orjson.dumps(b.bundle()),
                           headers={"Content-Type": FHIR, "X-Request-Id": "abc-123"})
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "cart_fhir.access"]
    assert len(lines) == 1 and resp.headers["X-Request-Id"] == "abc-123"
    line = lines[0]
    assert {k: line[k] for k in ("method", "route", "status", "request_id")} == {
        "method": "POST", "route": "/fhir/$grade-toxicity", "status": 200, "request_id": "abc-123"}
    assert "1970" not in caplog.text and "MRN" not in caplog.text


def test_health_ready_and_openapi(client):
    assert client.get("/health").get_json() == {"status": "ok"}
    ready = client.get("/ready").get_json()
    assert ready["status"] == "ok" and ready["upstream"] is None
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.1")
    assert {"/fhir/$grade-toxicity", "/fhir/Patient/{patient_id}/$grade-toxicity", "/fhir/metadata", "/health",
            "/ready", "/cds-services", "/cds-services/cart-toxicity"} <= set(spec["paths"])


# ---- against the real FHIR test server ----------------------------------------------------------

@pytest.fixture()
def upstream_app(engine, fhir):
    from cart_fhir.remote.settings import load_settings

    server = load_settings({"base_url": fhir.base_url, "retries": 2}, None, {})
    return create_app({"testing": True, "auth": False, "server": server, "tables": engine.tables})


def _seed(fhir: Any) -> None:
    b = PatientBuilder("p1")
    b.temp(1, "08:00", 39.4)
    b.temp(2, "08:00", 39.0)
    b.bp(2, "09:00", 85, 50)
    fhir.load(bundle_of(b.resources, "transaction"))


def test_patient_operation_reads_grades_and_writes_back_idempotently(upstream_app, fhir):
    _seed(fhir)
    client = upstream_app.test_client()
    resp = client.post("/fhir/Patient/p1/$grade-toxicity")
    assert resp.status_code == 200 and graded(resp.get_json(force=True))
    assert fhir.count("Condition") == 0  # no writeBack: nothing written
    first = client.post("/fhir/Patient/p1/$grade-toxicity?writeBack=true")
    assert first.status_code == 200
    counts = {t: fhir.count(t) for t in ("Observation", "Condition", "AdverseEvent", "Provenance")}
    report = first.get_json(force=True)["entry"][-1]["resource"]["issue"]
    assert any("written back" in i["details"]["text"] and "created" in i["details"]["text"] for i in report)
    params = {"resourceType": "Parameters", "parameter": [{"name": "writeBack", "valueBoolean": True}]}
    again = client.post("/fhir/Patient/p1/$grade-toxicity", data=orjson.dumps(params),
                        headers={"Content-Type": FHIR})
    assert again.status_code == 200
    assert {t: fhir.count(t) for t in counts} == counts
    assert client.get("/ready").get_json()["upstream"] == "ok"


def test_patient_operation_upstream_errors(upstream_app, fhir, engine):
    client = upstream_app.test_client()
    missing = client.post("/fhir/Patient/nobody/$grade-toxicity")
    assert missing.status_code == 404 and "not found" in outcome_texts(missing)[0]
    _seed(fhir)
    fhir.fault(status=503, times=10)
    busy = client.post("/fhir/Patient/p1/$grade-toxicity")
    assert busy.status_code == 502 and "HTTP 503" in outcome_texts(busy)[0]
    from cart_fhir.remote.settings import load_settings

    down = create_app({"testing": True, "auth": False, "tables": engine.tables,
                       "server": load_settings({"base_url": "http://127.0.0.1:9/fhir", "retries": 1}, None, {})})
    gone = down.test_client().post("/fhir/Patient/p1/$grade-toxicity")
    assert gone.status_code == 504 and "127.0.0.1:9" in outcome_texts(gone)[0]
    assert down.test_client().get("/ready").status_code == 503


def test_behind_a_proxy_the_public_url_comes_from_forwarded_headers(engine):
    app = create_app({"testing": True, "auth": False, "upstream": False, "tables": engine.tables, "proxy_hops": 1})
    cs = app.test_client().get("/fhir/metadata", headers={"X-Forwarded-Proto": "https",
                                                          "X-Forwarded-Host": "cart-fhir.example.org"})
    assert cs.get_json(force=True)["implementation"]["url"] == "https://cart-fhir.example.org/fhir"
