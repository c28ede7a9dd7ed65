"""Checks of the FHIR test server wrapper itself (tests/fhirserver/server.js), through plain requests."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fhir_server_fixture import FhirTestServer
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

# Also registered from conftest.py; listing it here lets this file run on its own (pytest ignores the
# second registration of the same plugin).
pytest_plugins = ["fhir_server_fixture"]

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
SYS = "urn:cart-fhir:test"


@pytest.fixture(autouse=True)
def _bundled_server_only(fhir_server: FhirTestServer) -> None:
    if not fhir_server.controllable:
        pytest.skip("checks of the bundled test server itself; FHIR_BASE_URL points elsewhere")


def _get(server: FhirTestServer, path: str, **kwargs: Any) -> requests.Response:
    return requests.get(f"{server.base_url}/{path}", timeout=30, **kwargs)


def _post(server: FhirTestServer, path: str, body: Any, **kwargs: Any) -> requests.Response:
    url = f"{server.base_url}/{path}" if path else server.base_url
    return requests.post(url, json=body, headers=FHIR_JSON, timeout=30, **kwargs)


def _obs(patient_ref: str, value: str | None = None, *, valid: bool = True) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation", "status": "final", "subject": {"reference": patient_ref},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
    }
    if value:
        resource["identifier"] = [{"system": SYS, "value": value}]
    if not valid:
        del resource["code"]  # Observation.code is 1..1
    return resource


def _put_entry(resource: dict[str, Any], condition: str) -> dict[str, Any]:
    url = f"{resource['resourceType']}?{condition}"
    return {"resource": resource, "request": {"method": "PUT", "url": url}}


def _transaction(entries: list[dict[str, Any]], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def _issue_text(reply: requests.Response) -> str:
    return " ".join(i.get("details", {}).get("text", "") for i in reply.json()["issue"])


def _patient(server: FhirTestServer) -> str:
    reply = _post(server, "Patient", {"resourceType": "Patient"})
    assert reply.status_code == 201
    return f"Patient/{reply.json()['id']}"


# --- metadata ------------------------------------------------------------------------------------

def test_metadata_is_r4_with_transaction_batch_and_everything(fhir: FhirTestServer) -> None:
    cs = _get(fhir, "metadata").json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    rest = cs["rest"][0]
    assert {"transaction", "batch"} <= {i["code"] for i in rest["interaction"]}
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert patient["operation"][0]["name"] == "everything"


@pytest.mark.parametrize(("resource_type", "param", "searchable"), [
    pytest.param("Observation", "identifier", True, id="observation-identifier"),
    pytest.param("Condition", "identifier", True, id="condition-identifier"),
    pytest.param("Device", "identifier", True, id="device-identifier"),
    pytest.param("AdverseEvent", "identifier", False, id="adverseevent-no-identifier-in-r4"),
    pytest.param("Provenance", "identifier", False, id="provenance-no-identifier-in-r4"),
    pytest.param("Provenance", "_tag", True, id="provenance-tag"),
    pytest.param("Observation", "value-quantity", False, id="quantity-type-not-supported"),
])
def test_metadata_lists_searchable_params(fhir: FhirTestServer, resource_type: str, param: str,
                                          searchable: bool) -> None:
    cs = _get(fhir, "metadata").json()
    entry = next(r for r in cs["rest"][0]["resource"] if r["type"] == resource_type)
    assert (param in {p["name"] for p in entry["searchParam"]}) is searchable
    reply = _get(fhir, resource_type, params={param: f"{SYS}|x"})
    assert reply.status_code == (200 if searchable else 400)


# --- CRUD ----------------------------------------------------------------------------------------

def test_create_read_delete_gone(fhir: FhirTestServer) -> None:
    reply = _post(fhir, "Patient", {"resourceType": "Patient", "id": "client-id", "gender": "female"})
    assert reply.status_code == 201
    created = reply.json()
    assert created["id"] != "client-id"  # R4 create: server-assigned id
    assert reply.headers["Location"].startswith(f"{fhir.base_url}/Patient/{created['id']}/_history/")
    assert _get(fhir, f"Patient/{created['id']}").json()["gender"] == "female"
    assert requests.delete(f"{fhir.base_url}/Patient/{created['id']}", timeout=30).status_code == 200
    assert _get(fhir, f"Patient/{created['id']}").status_code == 410
    assert _get(fhir, "Patient/never-existed").status_code == 404


def test_invalid_resource_is_rejected(fhir: FhirTestServer) -> None:
    reply = _post(fhir, "Observation", _obs("Patient/x", valid=False))
    assert reply.status_code == 400
    assert "Observation.code" in reply.json()["issue"][0]["expression"]
    assert fhir.count("Observation") == 0


def test_unknown_search_param_is_400_unless_lenient(fhir: FhirTestServer) -> None:
    assert _get(fhir, "Observation", params={"not-a-param": "1"}).status_code == 400
    lenient = _get(fhir, "Observation", params={"not-a-param": "1"}, headers={"Prefer": "handling=lenient"})
    assert lenient.status_code == 200


def test_subject_type_modifier_is_rewritten(fhir: FhirTestServer) -> None:
    patient = _patient(fhir)
    _post(fhir, "Observation", _obs(patient))
    reply = _get(fhir, "Observation", params={"subject:Patient": patient.split("/")[1]})
    assert reply.json()["total"] == 1


# --- transactions --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [
    pytest.param(3, id="engine-transaction"),
    pytest.param(12, id="over-8-conditional-entries-batch-fallback"),
])
def test_transaction_is_all_or_nothing(fhir: FhirTestServer, size: int) -> None:
    entries = [_put_entry(_obs("Patient/p", f"o{i}"), f"identifier={SYS}|o{i}") for i in range(size)]
    entries[-1]["resource"] = _obs("Patient/p", f"o{size - 1}", valid=False)
    reply = _post(fhir, "", _transaction(entries))
    assert reply.status_code == 400
    assert fhir.count("Observation") == 0
    entries[-1]["resource"] = _obs("Patient/p", f"o{size - 1}")
    reply = _post(fhir, "", _transaction(entries))
    assert reply.status_code == 200 and reply.json()["type"] == "transaction-response"
    assert fhir.count("Observation") == size


def test_transaction_over_50_updates_runs(fhir: FhirTestServer) -> None:
    entries = [{"resource": {**_obs("Patient/p"), "id": f"o{i}"},
                "request": {"method": "PUT", "url": f"Observation/o{i}"}} for i in range(60)]
    assert _post(fhir, "", _transaction(entries)).status_code == 200
    assert fhir.count("Observation") == 60


@pytest.mark.parametrize(("resource_type", "condition", "extra"), [
    pytest.param("Observation", f"identifier={SYS}|k1", {"status": "final", "code": {"text": "x"}},
                 id="observation"),
    pytest.param("Condition", f"identifier={SYS}|k1", {"subject": {"reference": "Patient/p"}},
                 id="condition"),
    pytest.param("Device", f"identifier={SYS}|k1", {}, id="device"),
    pytest.param("Provenance", f"_tag={SYS}|k1",
                 {"target": [{"reference": "Patient/p"}], "recorded": "2024-01-01T00:00:00Z",
                  "agent": [{"who": {"display": "cart-fhir"}}]}, id="provenance-by-tag"),
])
def test_conditional_update_twice_keeps_one_resource(fhir: FhirTestServer, resource_type: str, condition: str,
                                                     extra: dict[str, Any]) -> None:
    resource: dict[str, Any] = {"resourceType": resource_type, **extra}
    if resource_type == "Provenance":
        resource["meta"] = {"tag": [{"system": SYS, "code": "k1"}]}
    else:
        resource["identifier"] = [{"system": SYS, "value": "k1"}]
    bundle = _transaction([_put_entry(resource, condition)])
    statuses = [_post(fhir, "", bundle).json()["entry"][0]["response"]["status"] for _ in range(2)]
    assert statuses == ["201", "200"]
    assert fhir.count(resource_type) == 1


def test_conditional_update_adverse_event_by_identifier_is_refused(fhir: FhirTestServer) -> None:
    event = {"resourceType": "AdverseEvent", "actuality": "actual", "subject": {"reference": "Patient/p"},
             "identifier": {"system": SYS, "value": "ae1"}}
    reply = _post(fhir, "", _transaction([_put_entry(event, f"identifier={SYS}|ae1")]))
    assert reply.status_code == 400
    assert 'Unknown search parameter "identifier" for AdverseEvent' in _issue_text(reply)
    assert fhir.count("AdverseEvent") == 0


def test_max_transaction_entries(fhir: FhirTestServer) -> None:
    fhir.configure(max_transaction_entries=2)
    entries = [{"resource": _obs("Patient/p"), "request": {"method": "POST", "url": "Observation"}}] * 3
    reply = _post(fhir, "", _transaction(entries))
    assert reply.status_code == 400
    assert reply.json()["issue"][0]["code"] == "too-costly"
    assert "has 3 entries, this server accepts at most 2" in _issue_text(reply)
    assert _post(fhir, "", _transaction(entries[:2])).status_code == 200


def test_transactions_disabled(fhir: FhirTestServer) -> None:
    fhir.configure(transactions=False)
    entries = [{"resource": _obs("Patient/p"), "request": {"method": "POST", "url": "Observation"}}]
    reply = _post(fhir, "", _transaction(entries))
    assert reply.status_code == 400 and reply.json()["issue"][0]["code"] == "not-supported"
    codes = {i["code"] for i in _get(fhir, "metadata").json()["rest"][0]["interaction"]}
    assert "transaction" not in codes and "batch" in codes
    assert _post(fhir, "", _transaction(entries, "batch")).status_code == 200


# --- paging and $everything ----------------------------------------------------------------------

def _follow(server: FhirTestServer, url: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    pages = []
    reply = requests.get(url, params=params, timeout=30)
    while True:
        bundle = reply.json()
        pages.append(bundle)
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            return pages
        assert nxt[0].startswith(server.base_url)
        reply = requests.get(nxt[0], timeout=30)


def test_paging_follows_next_links(fhir: FhirTestServer) -> None:
    create = {"resource": _obs("Patient/p"), "request": {"method": "POST", "url": "Observation"}}
    fhir.load(_transaction([create] * 45))
    pages = _follow(fhir, f"{fhir.base_url}/Observation", {"subject": "Patient/p"})
    assert [len(p.get("entry", [])) for p in pages] == [20, 20, 5]  # default _count 20
    ids = {e["resource"]["id"] for p in pages for e in p["entry"]}
    assert len(ids) == 45 and pages[0]["total"] == 45
    assert all(e["fullUrl"].startswith(f"{fhir.base_url}/Observation/") for e in pages[0]["entry"])


def test_everything_returns_compartment_paged(fhir: FhirTestServer) -> None:
    patient, other = _patient(fhir), _patient(fhir)
    for ref in (patient, patient, patient, other):
        _post(fhir, "Observation", _obs(ref))
    _post(fhir, "Condition", {"resourceType": "Condition", "subject": {"reference": patient}})
    pages = _follow(fhir, f"{fhir.base_url}/{patient}/$everything", {"_count": 2})
    types = [e["resource"]["resourceType"] for p in pages for e in p["entry"]]
    assert len(pages) == 3
    assert sorted(types) == ["Condition", "Observation", "Observation", "Observation", "Patient"]


def test_everything_disabled(fhir: FhirTestServer) -> None:
    patient = _patient(fhir)
    fhir.configure(everything=False)
    assert _get(fhir, f"{patient}/$everything").status_code == 400
    resources = _get(fhir, "metadata").json()["rest"][0]["resource"]
    patient_cs = next(r for r in resources if r["type"] == "Patient")
    assert "operation" not in patient_cs


# --- faults and stats ----------------------------------------------------------------------------

def test_fault_status_with_retry_after(fhir: FhirTestServer) -> None:
    fhir.fault(status=429, times=1, retry_after=2, after=1, method="GET", path="Patient")
    assert _get(fhir, "metadata").status_code == 200  # path does not match
    assert _get(fhir, "Patient").status_code == 200  # skipped by after=1
    faulted = _get(fhir, "Patient")
    assert faulted.status_code == 429 and faulted.headers["Retry-After"] == "2"
    assert _get(fhir, "Patient").status_code == 200  # times=1 used up


@pytest.mark.parametrize(("drop_after_apply", "stored"), [
    pytest.param(False, 0, id="dropped-before-apply"),
    pytest.param(True, 1, id="dropped-after-apply"),
])
def test_fault_drop(fhir: FhirTestServer, drop_after_apply: bool, stored: int) -> None:
    fhir.fault(times=1, drop=not drop_after_apply, drop_after_apply=drop_after_apply, method="POST")
    with pytest.raises(requests.ConnectionError):
        _post(fhir, "Patient", {"resourceType": "Patient"})
    assert fhir.count("Patient") == stored


def test_stats_count_requests_not_controls(fhir: FhirTestServer) -> None:
    _get(fhir, "metadata")
    _post(fhir, "Patient", {"resourceType": "Patient"})
    _get(fhir, "Patient")
    fhir.count("Patient")
    stats = fhir.stats()
    assert stats["requests"] == 3
    assert stats["by_method"] == {"GET": 2, "POST": 1}
    assert stats["by_kind"] == {"metadata": 1, "create": 1, "search": 1}


# --- SMART Backend Services ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[Any, dict[str, Any]]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    return {
        "RS384": (rsa_key, {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True),
                            "kid": "rsa-1", "alg": "RS384"}),
        "ES384": (ec_key, {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True),
                           "kid": "ec-1", "alg": "ES384"}),
    }


def _assertion(private_key: Any, alg: str, kid: str, aud: str, *, lifetime: int = 240) -> str:
    now = int(time.time())
    claims = {"iss": "cart-client", "sub": "cart-client", "aud": aud, "iat": now, "exp": now + lifetime,
              "jti": str(uuid.uuid4())}
    return jwt.encode(claims, private_key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def _token(token_url: str, assertion: str) -> requests.Response:
    return requests.post(token_url, timeout=30, data={
        "grant_type": "client_credentials", "scope": "system/*.read",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    })


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_smart_backend_token_flow(fhir: FhirTestServer, keys: dict[str, Any], alg: str) -> None:
    private_key, jwk = keys[alg]
    fhir.configure(smart={"client_id": "cart-client", "jwks": {"keys": [jwk]}, "token_lifetime": 300})
    config = _get(fhir, ".well-known/smart-configuration").json()
    assert config["token_endpoint"] == fhir.token_url
    assert alg in config["token_endpoint_auth_signing_alg_values_supported"]
    assert _get(fhir, "metadata").status_code == 200  # open without a token

    denied = _get(fhir, "Patient")
    assert denied.status_code == 401 and denied.headers["WWW-Authenticate"].startswith("Bearer")
    assert denied.json()["issue"][0]["code"] == "login"

    assertion = _assertion(private_key, alg, jwk["kid"], fhir.token_url)
    granted = _token(fhir.token_url, assertion)
    assert granted.status_code == 200, granted.text
    token = granted.json()
    assert (token["token_type"], token["expires_in"], token["scope"]) == ("bearer", 300, "system/*.read")
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    assert _get(fhir, "Patient", headers=auth).status_code == 200

    replay = _token(fhir.token_url, assertion)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_client"

    fhir.expire_tokens()
    assert _get(fhir, "Patient", headers=auth).status_code == 401
    stats = fhir.stats()
    assert stats["token_requests"] == 2 and stats["tokens_issued"] == 1


@pytest.mark.parametrize(("case", "expected"), [
    pytest.param("wrong-aud", "aud must be the token endpoint", id="wrong-aud"),
    pytest.param("too-long", "more than five minutes", id="exp-over-5-min"),
    pytest.param("unknown-kid", "no key with kid", id="unknown-kid"),
    pytest.param("bad-signature", "signature does not verify", id="bad-signature"),
])
def test_smart_rejects_bad_assertions(fhir: FhirTestServer, keys: dict[str, Any], case: str,
                                      expected: str) -> None:
    private_key, jwk = keys["RS384"]
    fhir.configure(smart={"client_id": "cart-client", "jwks": {"keys": [jwk]}})
    aud = "http://elsewhere/token" if case == "wrong-aud" else fhir.token_url
    signer = keys["ES384"][0] if case == "bad-signature" else private_key
    alg = "ES384" if case == "bad-signature" else "RS384"
    kid = "nope" if case == "unknown-kid" else jwk["kid"]
    assertion = _assertion(signer, alg, kid, aud, lifetime=900 if case == "too-long" else 240)
    reply = _token(fhir.token_url, assertion)
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_client"
    assert expected in reply.json()["error_description"]


def test_smart_expired_token_is_401(fhir: FhirTestServer, keys: dict[str, Any]) -> None:
    private_key, jwk = keys["ES384"]
    fhir.configure(smart={"client_id": "cart-client", "jwks": {"keys": [jwk]}, "token_lifetime": 0})
    granted = _token(fhir.token_url, _assertion(private_key, "ES384", jwk["kid"], fhir.token_url))
    assert granted.status_code == 200 and granted.json()["expires_in"] == 0
    reply = _get(fhir, "Patient", headers={"Authorization": f"Bearer {granted.json()['access_token']}"})
    assert reply.status_code == 401 and "expired" in _issue_text(reply)
