"""End to end against a real FHIR server (Medplum's engine, tests/fhirserver): read, grade, write back, twice.

The server is installed and started by the `fhir_server` fixture on 127.0.0.1; `fhir` resets it per test.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import requests
from fhirbuild import PatientBuilder, bundle_of

from cart_fhir.cli import main
from cart_fhir.constants import ID_EPISODE, ID_GRADE
from cart_fhir.remote.client import FhirClient
from cart_fhir.remote.http import FhirHttp

OUR_TYPES = ("Observation", "Condition", "AdverseEvent", "Provenance", "Device")
FAST = ["--retries", "4"]


def crs_patient(pid: str, *, fever: float = 39.4, extra_days: int = 0) -> PatientBuilder:
    """Fever days 1-3 with hypotension on day 2 (CRS grade 2 with fluids only is graded from pressors: none)."""
    b = PatientBuilder(pid)
    b.temp(1, "08:00", fever)
    b.temp(2, "08:00", 39.0)
    b.bp(2, "09:00", 85, 50)
    b.temp(3, "08:00", 38.2)
    b.temp(4, "08:00", 36.8)
    for d in range(extra_days):
        b.temp(5 + d, "08:00", 36.9)
    return b


def seed(fhir: Any, *builders: PatientBuilder) -> None:
    """PUT every resource by id; ids made unique per patient (the builders number from 1 each)."""
    fhir.load(bundle_of([_own_ids(r, b.pid) for b in builders for r in b.resources], "transaction"))


def _own_ids(res: dict[str, Any], pid: str) -> dict[str, Any]:
    res = orjson.loads(orjson.dumps(res))
    if res["resourceType"] != "Patient":
        res["id"] = f"{pid}-{res['id']}"
    return res


def counts(fhir: Any) -> dict[str, int]:
    return {t: fhir.count(t) for t in OUR_TYPES}


def ours(fhir: Any, rtype: str, system: str) -> list[dict[str, Any]]:
    reply = requests.get(f"{fhir.base_url}/{rtype}", params={"identifier": f"{system}|", "_count": 1000},
                         headers={"Accept": "application/fhir+json"}, timeout=30)
    reply.raise_for_status()
    return [e["resource"] for e in reply.json().get("entry", [])]


def grade(fhir: Any, *args: str) -> int:
    return main(["grade", "--server", fhir.base_url, "-q", *FAST, *args])


def test_write_back_twice_creates_nothing_new(fhir, tmp_path):
    seed(fhir, crs_patient("p1"), crs_patient("p2", fever=38.5))
    before = counts(fhir)
    assert grade(fhir, "--patient", "p1", "--patient", "p2", "--write-back") == 0
    first = counts(fhir)
    assert first["Observation"] > before["Observation"] and first["Condition"] >= 2 and first["Provenance"] == 2
    assert first["Device"] == 1
    assert grade(fhir, "--patient", "p1", "--patient", "p2", "--write-back") == 0
    assert counts(fhir) == first
    grades = ours(fhir, "Observation", ID_GRADE)
    assert grades and all(r["meta"]["profile"] and r["identifier"][0]["system"] == ID_GRADE for r in grades)
    episodes = ours(fhir, "Condition", ID_EPISODE)
    assert {c["subject"]["reference"] for c in episodes} == {"Patient/p1", "Patient/p2"}
    # references between our resources point at the server's ids, never at urn:uuid
    assert all(not str(ev.get("reference", "")).startswith("urn:") for c in episodes for ev in c.get("evidence", [])
               for ev in ev.get("detail", []))


def test_a_changed_grade_updates_in_place(fhir):
    b = crs_patient("p1")
    seed(fhir, b)
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    first = counts(fhir)
    before = _daily_crs(fhir)
    # New data: a vasopressor on day 2 makes that day grade 3 (ASTCT 2019 CRS, hypotension needing one pressor)
    b2 = PatientBuilder("p1")
    b2._n = iter(range(900, 1000))  # ids apart from the first seed
    b2.resources = []
    b2.pressor("norepinephrine", 2, "09:30", 2, "20:00")
    seed(fhir, b2)
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    assert counts(fhir) == first, "the changed grade is an update of the same resources"
    after = _daily_crs(fhir)
    assert after.keys() == before.keys()
    changed = [k for k in after if after[k] != before[k]]
    assert len(changed) == 1, (before, after)
    key = changed[0]
    assert after[key][0] == before[key][0] and before[key][1] < after[key][1] == 3  # same server id, higher grade


def _daily_crs(fhir: Any) -> dict[str, tuple[str, int]]:
    """identifier value -> (server id, grade) of the daily CRS grade Observations."""
    return {r["identifier"][0]["value"]: (r["id"], r.get("valueInteger", -1))
            for r in ours(fhir, "Observation", ID_GRADE) if r["code"]["coding"][0]["code"] == "crs-grade-astct"}


def test_everything_and_the_search_fallback_read_the_same(fhir, engine):
    seed(fhir, crs_patient("p1", extra_days=30))
    from cart_fhir.remote.read import PatientReader

    def read(page_size: int) -> tuple[list[str], dict[str, int]]:
        client = FhirClient(FhirHttp(fhir.base_url), page_size=page_size)
        reader = PatientReader(client, engine.terminology)
        items = reader.patient("p1")
        return sorted(f"{i.resource['resourceType']}/{i.resource['id']}" for i in items), reader.stats.per_patient

    everything, trips = read(1000)
    assert trips == {"Patient/p1": 2}  # metadata + one $everything page
    paged, trips_paged = read(10)
    assert paged == everything and trips_paged["Patient/p1"] == 1 + -(-len(everything) // 10)
    fhir.configure(everything=False)
    fallback, trips_fallback = read(1000)
    assert fallback == everything
    assert trips_fallback == {"Patient/p1": 3}  # metadata, one batch of searches, the Observation window


def test_round_trips_per_patient(fhir, capsys):
    seed(fhir, crs_patient("p1"), crs_patient("p2"))
    seeded = fhir.stats()["by_method"]
    assert main(["grade", "--server", fhir.base_url, "--patient", "p1", "--patient", "p2", "--write-back",
                 "-v"]) == 0
    stats = fhir.stats()["by_method"]
    used = {m: stats.get(m, 0) - seeded.get(m, 0) for m in ("GET", "POST", "PUT")}
    # metadata and the Device's search once; per patient one $everything page, one batch of searches for our
    # results already there (no-op writes, corrections) and one transaction; one Device transaction per run
    assert used == {"GET": 4, "POST": 5, "PUT": 0}, stats


def test_chunking_when_the_server_limits_transaction_size(fhir):
    seed(fhir, crs_patient("p1", extra_days=10))
    fhir.configure(max_transaction_entries=5)
    assert grade(fhir, "--patient", "p1", "--write-back") == 0  # adaptive: halves from 100 down to 4
    first = counts(fhir)
    assert grade(fhir, "--patient", "p1", "--write-back", "--chunk-size", "5") == 0
    assert counts(fhir) == first


def test_batches_when_the_server_refuses_transactions(fhir):
    seed(fhir, crs_patient("p1"))
    fhir.configure(transactions=False)
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    first = counts(fhir)
    assert first["Provenance"] == 1 and first["Condition"] >= 1
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    assert counts(fhir) == first


@pytest.mark.parametrize("fault", [
    pytest.param({"status": 503, "times": 2, "retry_after": 0}, id="503-burst"),
    pytest.param({"status": 429, "times": 1, "retry_after": 1}, id="429-retry-after"),
    pytest.param({"drop": True, "times": 1, "method": "POST"}, id="drop-before-apply"),
    pytest.param({"drop": True, "drop_after_apply": True, "times": 1, "method": "POST", "after": 1},
                 id="drop-after-apply-mid-transaction"),
])
def test_faults_are_retried_and_nothing_is_duplicated(fhir, fault):
    seed(fhir, crs_patient("p1"))
    fhir.fault(**fault)
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    first = counts(fhir)
    assert first["Provenance"] == 1
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    assert counts(fhir) == first


def test_a_persistent_failure_leaves_all_or_nothing(fhir, capsys):
    seed(fhir, crs_patient("p1"))
    fhir.fault(status=503, times=50, method="POST", path="", after=1)  # the Device goes, the patient never does
    assert grade(fhir, "--patient", "p1", "--write-back", "--retries", "2") == 1
    err = capsys.readouterr().err
    assert "HTTP 503" in err and "Patient/p1" in err
    assert counts(fhir)["Observation"] == len(crs_patient("p1").resources) - 2  # only the seeded input
    assert fhir.count("Condition") == 0 and fhir.count("Provenance") == 0


def test_412_names_the_duplicates_and_writes_nothing_for_that_patient(fhir, tmp_path, capsys):
    seed(fhir, crs_patient("p1"))
    out = tmp_path / "out.json"
    assert grade(fhir, "--patient", "p1", "-o", str(out)) == 0  # no write-back: nothing on the server yet
    assert fhir.count("Condition") == 0
    bundle = orjson.loads(out.read_bytes())
    obs = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    dup = {k: v for k, v in obs.items() if k in ("resourceType", "status", "code", "subject", "identifier",
                                                   "effectiveDateTime", "effectivePeriod")}
    fhir.load({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": dup, "request": {"method": "POST", "url": "Observation"}}] * 2})
    assert grade(fhir, "--patient", "p1", "--write-back") == 1
    err = capsys.readouterr().err
    assert "duplicate on the server" in err and obs["identifier"][0]["value"] in err
    assert fhir.count("Condition") == 0 and fhir.count("Provenance") == 0


def test_push_writes_a_graded_bundle_idempotently(fhir, tmp_path):
    seed(fhir, crs_patient("p1"))
    out = tmp_path / "out.json"
    assert grade(fhir, "--patient", "p1", "-o", str(out), "--bundle-type", "transaction") == 0
    assert main(["push", str(out), "--server", fhir.base_url]) == 0
    first = counts(fhir)
    assert first["Provenance"] == 1
    assert main(["push", str(out), "--server", fhir.base_url]) == 0
    assert counts(fhir) == first
    # and a write-back of the same grading updates the pushed resources
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    assert counts(fhir) == first


def test_all_infused_and_group_cohorts(fhir, capsys):
    no_cart = PatientBuilder("p3", infusion="none")
    seed(fhir, crs_patient("p1"), PatientBuilder("p2", infusion="procedure"), no_cart)
    fhir.load({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {
        "resourceType": "Group", "id": "g1", "type": "person", "actual": True,
        "member": [{"entity": {"reference": "Patient/p1"}}, {"entity": {"reference": "Patient/p3"}}]},
        "request": {"method": "PUT", "url": "Group/g1"}}]})
    assert main(["grade", "--server", fhir.base_url, "--all-infused", "--summary-json", "/dev/null"]) == 0
    err = capsys.readouterr().err
    assert "patients: 2 read" in err
    assert main(["grade", "--server", fhir.base_url, "--group", "g1", "-o", "/dev/null"]) == 0
    err = capsys.readouterr().err
    assert "patients: 2 read, 1 with a CAR-T infusion graded" in err


def test_bad_patient_data_is_reported_and_the_others_are_written(fhir, capsys):
    good, bad = crs_patient("p1"), crs_patient("p2")
    bad.temp_raw(2, "10:00", {"value": 39.0, "unit": "xyz", "system": "http://unitsofmeasure.org", "code": "xyz"})
    seed(fhir, good, bad)
    assert grade(fhir, "--patient", "p1", "--patient", "p2", "--write-back") == 2
    err = capsys.readouterr().err
    assert "unit 'xyz'" in err and "Patient/p2" in err
    assert fhir.count("Provenance") == 1  # p1 written, p2 not


def test_missing_patient_and_unreachable_server(fhir, capsys):
    assert grade(fhir, "--patient", "nobody") == 2
    assert "Patient/nobody was not found" in capsys.readouterr().err
    assert main(["grade", "--server", "http://127.0.0.1:9/fhir", "--patient", "p1", "--retries", "1", "-q"]) == 1
    assert "127.0.0.1:9" in capsys.readouterr().err


# ---- SMART Backend Services against the test server's token endpoint ------------------------------

def _key(tmp_path: Any, kind: str) -> tuple[str, dict[str, Any]]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from cart_fhir.remote.auth import load_private_key, public_jwks

    key = rsa.generate_private_key(65537, 2048) if kind == "RS384" else ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / f"{kind}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    loaded, kid, alg = load_private_key(str(path))
    assert alg == kind
    return str(path), public_jwks(loaded, kid, alg)


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_smart_backend_services_grade_and_write_back(fhir, tmp_path, alg):
    seed(fhir, crs_patient("p1"))
    key, jwks = _key(tmp_path, alg)
    fhir.configure(smart={"client_id": "cart-fhir", "jwks": jwks, "token_lifetime": 300})
    anonymous = requests.get(f"{fhir.base_url}/Patient/p1", headers={"Accept": "application/fhir+json"}, timeout=10)
    assert anonymous.status_code == 401
    args = ["--patient", "p1", "--write-back", "--client-id", "cart-fhir", "--private-key", key]
    assert grade(fhir, *args) == 0
    assert fhir.count("Provenance") == 1
    assert fhir.stats()["token_requests"] == 1  # one token for the whole run (cached)


def test_smart_reauthenticates_once_after_the_token_expires(fhir, tmp_path, engine):
    from cart_fhir.remote.connect import connect
    from cart_fhir.remote.read import PatientReader
    from cart_fhir.remote.settings import load_settings

    seed(fhir, crs_patient("p1"))
    key, jwks = _key(tmp_path, "ES384")
    fhir.configure(smart={"client_id": "cart-fhir", "jwks": jwks, "token_lifetime": 300})
    client = connect(load_settings({"base_url": fhir.base_url, "client_id": "cart-fhir", "private_key": key},
                                   None, {}))
    reader = PatientReader(client, engine.terminology)
    first = reader.patient("p1")
    fhir.expire_tokens()
    again = reader.patient("p1")  # 401, a new token, the same request again
    assert len(again) == len(first)
    stats = fhir.stats()
    assert (stats["token_requests"], stats["discovery_requests"]) == (2, 1)  # discovery is read once
    assert client.http.token_requests == 3
    client.close()


def test_smart_with_an_unregistered_key_fails_cleanly(fhir, tmp_path, capsys):
    seed(fhir, crs_patient("p1"))
    _, jwks = _key(tmp_path, "RS384")
    other, _ = _key(tmp_path, "ES384")  # a key the server does not know
    fhir.configure(smart={"client_id": "cart-fhir", "jwks": jwks, "token_lifetime": 300})
    assert grade(fhir, "--patient", "p1", "--client-id", "cart-fhir", "--private-key", other) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "token" in err[0].lower() and "BEGIN" not in err[0]
