"""Write-back logic with HTTP mocked by `responses`: chunking, reference rewriting, batch fallback, 412."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
import responses
from helpers import RECORDED

from cart_fhir.cli_remote import written_from_bundle
from cart_fhir.ingest.read import read_paths
from cart_fhir.output.resources import PatientResources
from cart_fhir.pipeline import Engine
from cart_fhir.remote.client import FhirClient
from cart_fhir.remote.http import FhirHttp, RetryPolicy
from cart_fhir.remote.locks import PatientLocks
from cart_fhir.remote.plan import levels as _levels
from cart_fhir.remote.write import ResultWriter

BASE = "https://fhir.example.org/r4"
FHIR = {"Content-Type": "application/fhir+json"}
CAPS = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [{
    "mode": "server", "interaction": [{"code": "transaction"}, {"code": "batch"}],
    "resource": [{"type": t, "searchParam": [{"name": "identifier"}, {"name": "_tag"}]}
                 for t in ("Observation", "Condition", "AdverseEvent", "Provenance", "Device")]}]}


@pytest.fixture(scope="module")
def graded(engine: Engine) -> tuple[Any, list[PatientResources]]:
    result = engine.grade(read_paths(["examples/crs-grade2-tocilizumab.json"]))
    return engine.resources_by_patient(result, RECORDED)


class FakeServer:
    """Answers transaction/batch Bundles the way a FHIR server does: an id per conditional URL, 201 then 200."""

    def __init__(self, max_entries: int | None = None, transactions: bool = True) -> None:
        self.ids: dict[str, str] = {}
        self.versions: dict[str, int] = {}
        self.searches = 0
        self.posted: list[dict[str, Any]] = []
        self.max_entries = max_entries
        self.transactions = transactions
        self._n = itertools.count(1)

    def __call__(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        bundle = orjson.loads(request.body)
        if all(e["request"]["method"] == "GET" for e in bundle["entry"]):  # the writer's read: nothing of ours
            self.searches += 1
            return 200, FHIR, orjson.dumps({"resourceType": "Bundle", "type": "batch-response", "entry": [
                {"response": {"status": "200"}, "resource": {"resourceType": "Bundle", "type": "searchset"}}
                for _ in bundle["entry"]]})
        self.posted.append(bundle)
        if bundle["type"] == "transaction" and not self.transactions:
            return 400, FHIR, orjson.dumps(_oo("not-supported", "transactions are not supported"))
        if self.max_entries is not None and len(bundle["entry"]) > self.max_entries:
            return 400, FHIR, orjson.dumps(_oo("too-costly", f"at most {self.max_entries} entries"))
        out = []
        for e in bundle["entry"]:
            url = e["request"]["url"]
            for ref in _refs(e["resource"]):
                assert ref.startswith("urn:uuid:") and bundle["type"] == "transaction" or "/" in ref, ref
            created = url not in self.ids
            if created:
                self.ids[url] = f"{url.split('?')[0].split('/')[0]}/{next(self._n)}"
            self.versions[url] = self.versions.get(url, 0) + 1
            out.append({"response": {"status": "201 Created" if created else "200 OK",
                                     "location": f"{BASE}/{self.ids[url]}/_history/{self.versions[url]}"}})
        return 200, FHIR, orjson.dumps({"resourceType": "Bundle", "type": f"{bundle['type']}-response", "entry": out})


def _oo(code: str, text: str) -> dict[str, Any]:
    issue = {"severity": "error", "code": code, "details": {"text": text}}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _refs(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k == "reference" and isinstance(v, str)] + \
            [r for v in obj.values() for r in _refs(v)]
    if isinstance(obj, list):
        return [r for v in obj for r in _refs(v)]
    return []


def _writer(tmp_path: Any, server: FakeServer, chunk_size: int = 100, caps: dict[str, Any] = CAPS) -> ResultWriter:
    responses.get(f"{BASE}/metadata", json=caps)
    responses.get(f"{BASE}/Device", json={"resourceType": "Bundle", "type": "searchset"})  # no engine Device yet
    responses.add_callback(responses.POST, BASE, callback=server)
    http = FhirHttp(BASE, retry=RetryPolicy(attempts=2), sleep=lambda s: None)
    return ResultWriter(FhirClient(http), chunk_size=chunk_size, locks=PatientLocks(BASE, tmp_path))


@responses.activate
def test_one_transaction_per_patient_under_the_chunk_size(tmp_path, graded):
    device, groups = graded
    server = FakeServer()
    report = _writer(tmp_path, server).write(device, groups)
    assert [b["type"] for b in server.posted] == ["transaction", "transaction"]  # Device, then the patient
    assert len(server.posted[1]["entry"]) == len(groups[0].resources)
    assert report.patients[0].created == len(groups[0].resources) and report.patients[0].ok
    assert all(e["request"]["method"] == "PUT" and "?identifier=" in e["request"]["url"] or "?_tag=" in
               e["request"]["url"] or e["request"]["url"].startswith("AdverseEvent/cart-")
               for e in server.posted[1]["entry"])
    assert server.searches == 1  # one batch of searches: what of ours the server already holds
    # the Device was written first: the patient's Provenance names it by its server id
    prov = server.posted[1]["entry"][-1]["resource"]
    assert prov["resourceType"] == "Provenance" and prov["agent"][0]["who"]["reference"] == "Device/1"


@responses.activate
def test_second_write_updates_everything_and_creates_nothing(tmp_path, graded):
    device, groups = graded
    server = FakeServer()
    writer = _writer(tmp_path, server)
    writer.write(device, groups)
    again = ResultWriter(writer.client, locks=writer.locks).write(device, groups)
    assert again.patients[0].created == 0 and again.patients[0].updated == len(groups[0].resources)


@responses.activate
def test_chunks_keep_references_resolvable(tmp_path, graded):
    device, groups = graded
    server = FakeServer()
    report = _writer(tmp_path, server, chunk_size=3).write(device, groups)
    n = len(groups[0].resources)
    assert report.patients[0].ok and report.patients[0].requests == -(-n // 3)
    written = {"Device/1"}
    for bundle in server.posted[1:]:
        local = {e["fullUrl"] for e in bundle["entry"]}
        for e in bundle["entry"]:
            for ref in _refs(e["resource"]):
                if ref.startswith("urn:uuid:"):
                    assert ref in local, "a urn:uuid reference must point into its own transaction"
                elif ref in server.ids.values():  # one of ours, rewritten: written by an earlier transaction
                    assert ref in written, ref
        written |= {server.ids[e["request"]["url"]] for e in bundle["entry"]}
    assert server.posted[-1]["entry"][-1]["resource"]["resourceType"] == "Provenance"  # last: marks completion


@responses.activate
def test_a_too_big_answer_halves_the_chunk(tmp_path, graded):
    device, groups = graded
    server = FakeServer(max_entries=4)
    report = _writer(tmp_path, server, chunk_size=16).write(device, groups)
    assert report.patients[0].ok
    sizes = [len(b["entry"]) for b in server.posted[1:]]
    assert sizes[:3] == [16, 8, 4] and max(sizes[3:]) <= 4


@responses.activate
def test_batches_by_reference_level_when_transactions_are_refused(tmp_path, graded):
    device, groups = graded
    server = FakeServer(transactions=False)
    report = _writer(tmp_path, server).write(device, groups)
    assert report.patients[0].ok and report.mode == "batch"
    batches = [b for b in server.posted if b["type"] == "batch"]
    assert len(batches) == len(_levels(groups[0].resources)) + 1  # + the Device
    for b in batches:
        assert not [r for e in b["entry"] for r in _refs(e["resource"]) if r.startswith("urn:uuid:")]


@responses.activate
def test_412_stops_the_patient_and_names_the_duplicates(tmp_path, graded):
    device, groups = graded
    obs = groups[0].resources[0]
    system, value = obs.resource["identifier"][0]["system"], obs.resource["identifier"][0]["value"]
    responses.get(f"{BASE}/metadata", json=CAPS)
    responses.post(BASE, json={"resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"response": {"status": "201", "location": "Device/d1"}}]})
    responses.post(BASE, json={"resourceType": "Bundle", "type": "batch-response", "entry": [  # nothing of ours yet
        {"response": {"status": "200"}, "resource": {"resourceType": "Bundle", "type": "searchset"}}] * 4})
    responses.post(BASE, status=412, json=_oo("multiple-matches", "Multiple resources found matching condition"))
    dup = {"resourceType": "Observation", "identifier": [{"system": system, "value": value}]}
    responses.get(f"{BASE}/Observation", json={"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {**dup, "id": "a"}}, {"resource": {**dup, "id": "b"}}]})
    for rtype in ("Condition", "AdverseEvent", "Provenance", "Device"):
        responses.get(f"{BASE}/{rtype}", json={"resourceType": "Bundle", "type": "searchset"})
    writer = ResultWriter(FhirClient(FhirHttp(BASE, sleep=lambda s: None)), locks=PatientLocks(BASE, tmp_path))
    report = writer.write(device, groups)
    pw = report.patients[0]
    assert not pw.ok and "412" in pw.error and "Multiple resources" in pw.error
    assert pw.duplicates == [f"Observation identifier {system}|{value}: Observation/a, Observation/b"]
    posts = [c for c in responses.calls if c.request.method == "POST"]
    assert len(posts) == 3, "a 412 is never retried (Device, the read, the patient's transaction)"
    assert any("error: Patient/" in line and "duplicate" in line for line in report.lines())


@responses.activate
def test_types_the_server_cannot_search_by_identifier_get_a_stable_id(tmp_path, graded):
    device, groups = graded
    caps = orjson.loads(orjson.dumps(CAPS))
    for res in caps["rest"][0]["resource"]:
        if res["type"] == "AdverseEvent":
            res["searchParam"] = [{"name": "subject"}]  # R4 AdverseEvent has no identifier search parameter
    server = FakeServer()
    _writer(tmp_path, server, caps=caps).write(device, groups)
    urls = [e["request"]["url"] for e in server.posted[1]["entry"] if e["resource"]["resourceType"] == "AdverseEvent"]
    assert urls and all(u.startswith("AdverseEvent/cart-") and "?" not in u for u in urls)


def test_push_rebuilds_groups_from_an_output_bundle(tmp_path, engine, graded):
    device, groups = graded
    bundle = engine.bundle([device, *groups[0].resources], "collection")
    path = tmp_path / "out.json"
    path.write_bytes(orjson.dumps(bundle))
    got_device, got = written_from_bundle(str(path))
    assert got_device is not None and got_device.condition == device.condition
    assert [g.patient_key for g in got] == [groups[0].patient_key]
    assert [w.condition for w in got[0].resources] == [w.condition for w in groups[0].resources]
