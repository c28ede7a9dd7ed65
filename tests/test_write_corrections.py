"""Issue 14 against the real FHIR test server: idempotent transaction files, no-op writes, corrections,
clinician authority, server limits, failure isolation. Each test reproduces a finding of the issue first."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import requests
from fhirbuild import PatientBuilder
from test_remote_integration import counts, crs_patient, grade, seed
from test_service_operations import _seed

from cart_fhir.cli import main


def _post(fhir: Any, bundle: dict[str, Any]) -> requests.Response:
    return requests.post(fhir.base_url, json=bundle, timeout=60, headers={"Content-Type": "application/fhir+json"})


def test_transaction_file_posted_twice_creates_nothing_the_second_time(fhir, tmp_path):
    """Seen: AdverseEvent entries were `PUT AdverseEvent?identifier=`, a search R4 does not define: the strict
    server answered 400 (a lenient one created them again on every post, 5 -> 10)."""
    b = crs_patient("p1")
    src = tmp_path / "in.json"
    src.write_bytes(orjson.dumps(b.bundle()))
    out = tmp_path / "out.json"
    assert main(["grade", str(src), "-o", str(out), "--bundle-type", "transaction", "-q"]) == 0
    bundle = orjson.loads(out.read_bytes())
    urls = [e["request"]["url"] for e in bundle["entry"]]
    assert not any(u.startswith("AdverseEvent?") for u in urls)
    assert all(e["resource"]["id"] == e["request"]["url"].split("/")[1]
               for e in bundle["entry"] if e["resource"]["resourceType"] == "AdverseEvent")
    seed(fhir, b)
    first = _post(fhir, bundle)
    assert first.status_code == 200, first.text[:500]
    after_one = counts(fhir)
    assert after_one["AdverseEvent"] >= 1
    second = _post(fhir, bundle)
    assert second.status_code == 200, second.text[:500]
    assert counts(fhir) == after_one
    assert {e["response"]["status"] for e in second.json()["entry"]} == {"200"}


def _history(fhir: Any, ref: str) -> int:
    reply = requests.get(f"{fhir.base_url}/{ref}/_history", headers={"Accept": "application/fhir+json"}, timeout=30)
    reply.raise_for_status()
    return len(reply.json().get("entry", []))


def _all(fhir: Any, rtype: str) -> list[dict[str, Any]]:
    reply = requests.get(f"{fhir.base_url}/{rtype}", params={"_count": 1000},
                         headers={"Accept": "application/fhir+json"}, timeout=30)
    reply.raise_for_status()
    return [e["resource"] for e in reply.json().get("entry", [])]


def _written_line(err: str) -> str:
    return next(line for line in err.splitlines() if "write-back to" in line)


def test_five_identical_reruns_leave_one_version_per_resource(fhir, capsys):
    """Seen: every write stored a new version (5 versions after 5 identical writes)."""
    seed(fhir, crs_patient("p1"))
    for _ in range(5):
        assert main(["grade", "--server", fhir.base_url, "--patient", "p1", "--write-back"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "write-back to" in line]
    ours = [r for t in ("Observation", "Condition", "AdverseEvent", "Provenance", "Device") for r in _all(fhir, t)
            if t != "Observation" or r.get("code", {}).get("coding", [{}])[0].get("system", "").startswith(
                "https://cart-fhir.org")]
    n = len(ours) - 1  # the Device is not a patient's resource
    assert f"({n} created, 0 updated, 0 unchanged, 0 retracted" in lines[0]
    assert all(f"(0 created, 0 updated, {n} unchanged, 0 retracted, 0 kept as edited on the server, 0 failed)"
               in line for line in lines[1:]), lines
    assert {_history(fhir, f"{r['resourceType']}/{r['id']}") for r in ours} == {1}
    # honest run report on --server runs (issue 13 item 3: it said "0 daily grades, 0 resources")
    assert "written: 4 daily grades" in err and f"{n + 1} resources in all" in err


def _live(fhir: Any, rtype: str) -> list[dict[str, Any]]:
    """Our results not retracted: Observation/Condition not entered-in-error (AdverseEvents are deleted)."""
    out = []
    for r in _all(fhir, rtype):
        if rtype == "Observation" and (r.get("status") == "entered-in-error" or not any(
                i.get("system", "").startswith("https://cart-fhir.org") for i in r.get("identifier", []))):
            continue
        if rtype == "Condition" and r["verificationStatus"]["coding"][0]["code"] == "entered-in-error":
            continue
        out.append(r)
    return out


def test_a_moved_infusion_leaves_one_episode_per_toxicity(fhir, capsys):
    """Seen: moving the infusion by one day left the old CRS Condition and AdverseEvent beside the new ones."""
    b = crs_patient("p1")
    seed(fhir, b)
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    assert len(_live(fhir, "Condition")) == 1 and fhir.count("AdverseEvent") == 1
    infusion = next(r for r in b.resources if r["resourceType"] == "MedicationAdministration")
    moved = {**infusion, "id": f"p1-{infusion['id']}", "effectiveDateTime": b.at(-1, "10:00")}
    fhir.load({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": moved, "request": {"method": "PUT", "url": f"MedicationAdministration/{moved['id']}"}}]})
    capsys.readouterr()
    assert main(["grade", "--server", fhir.base_url, "--patient", "p1", "--write-back"]) == 0
    line = _written_line(capsys.readouterr().err)
    assert " retracted" in line and ", 0 retracted" not in line, line
    conditions = _live(fhir, "Condition")
    assert len(conditions) == 1 and fhir.count("AdverseEvent") == 1
    gone = [c for c in _all(fhir, "Condition") if c not in conditions]
    assert gone and all("Retracted by cart-fhir grading run" in c["note"][-1]["text"] and "clinicalStatus" not in c
                        for c in gone)
    # the daily grades of the old day numbering are entered-in-error, the new ones are live
    daily = [r for r in _all(fhir, "Observation") if r.get("identifier", [{}])[0].get("system", "").endswith(
        "grade-assessment")]
    assert {r["status"] for r in daily} == {"preliminary", "entered-in-error"}
    # and a re-run changes nothing more
    assert main(["grade", "--server", fhir.base_url, "--patient", "p1", "--write-back"]) == 0
    assert "(0 created, 0 updated" in _written_line(capsys.readouterr().err)


def test_an_episode_disappearing_is_retracted(fhir):
    """New data that remove an episode: its Condition is entered-in-error, its AdverseEvent deleted."""
    seed(fhir, crs_patient("p1"))
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    assert len(_live(fhir, "Condition")) == 1
    # the fevers were mis-entered: corrected to normal temperatures (same resource ids)
    fixed = crs_patient("p1", fever=36.9)
    for r in fixed.resources:
        if r["resourceType"] == "Observation" and r.get("valueQuantity", {}).get("value", 0) >= 38:
            r["valueQuantity"]["value"] = 36.9
    seed(fhir, fixed)
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    assert _live(fhir, "Condition") == [] and fhir.count("AdverseEvent") == 0


def test_a_lowered_daily_grade_updates_in_place_and_keeps_one_episode(fhir):
    b = crs_patient("p1")
    seed(fhir, b)
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    before = {r["id"]: r.get("valueInteger", -1) for r in _live(fhir, "Observation")}
    lowered = crs_patient("p1")
    for r in lowered.resources:  # day 2's hypotension was a typo: 85 -> 125 mmHg
        for c in r.get("component", []):
            if c.get("valueQuantity", {}).get("value") == 85:
                c["valueQuantity"]["value"] = 125
    seed(fhir, lowered)
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    after = {r["id"]: r.get("valueInteger", -1) for r in _live(fhir, "Observation")}
    assert after.keys() == before.keys() and after != before and max(after.values()) < max(before.values())
    assert len(_live(fhir, "Condition")) == 1 and fhir.count("AdverseEvent") == 1


def test_medplum_strict_isolation_limit_is_learnt_at_default_settings(fhir, capsys):
    """Seen: Medplum refuses transactions of more than 8 entries when one is conditional (400 invalid
    "Transaction requires strict isolation but has too many entries"): default settings wrote nothing."""
    seed(fhir, crs_patient("p1", extra_days=10), crs_patient("p2", extra_days=10))
    fhir.configure(medplum_limits=True)
    assert main(["grade", "--server", fhir.base_url, "--patient", "p1", "--patient", "p2", "--write-back",
                 "-v"]) == 0
    capsys.readouterr()
    assert fhir.count("Provenance") == 2
    # first patient's transaction (~20 entries) refused, then 10 refused, then 5 works; the second patient
    # starts at 5: the working size is remembered for the run
    assert fhir.stats()["by_status"].get("400", 0) == 2
    assert main(["grade", "--server", fhir.base_url, "--patient", "p1", "--patient", "p2", "--write-back"]) == 0
    assert "0 created, 0 updated" in _written_line(capsys.readouterr().err)


def test_chunk_size_from_the_environment(fhir, monkeypatch):
    seed(fhir, crs_patient("p1"))
    fhir.configure(medplum_limits=True)
    monkeypatch.setenv("CART_FHIR_CHUNK_SIZE", "8")
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    assert fhir.stats()["by_status"].get("400", 0) == 0  # never refused: 8 entries from the start


def test_a_clinician_edit_survives_a_rerun(fhir, capsys):
    """A Condition a clinician confirmed and regraded is never overwritten; the run report shows ours beside."""
    b = crs_patient("p1")
    seed(fhir, b)
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    cond = _live(fhir, "Condition")[0]
    cond["verificationStatus"]["coding"][0]["code"] = "confirmed"
    cond["stage"][0]["summary"]["coding"] = [{"system": "https://cart-fhir.org/fhir/CodeSystem/toxicity-grade",
                                              "code": "3"}]
    reply = requests.put(f"{fhir.base_url}/Condition/{cond['id']}", json=cond, timeout=30,
                         headers={"Content-Type": "application/fhir+json"})
    assert reply.status_code == 200, reply.text
    b2 = PatientBuilder("p1")
    b2._n = iter(range(900, 1000))
    b2.resources = []
    b2.pressor("norepinephrine", 2, "09:30", 2, "20:00")  # new data: cart-fhir now computes grade 3
    seed(fhir, b2)
    capsys.readouterr()
    assert main(["grade", "--server", fhir.base_url, "--patient", "p1", "--write-back"]) == 0
    err = capsys.readouterr().err
    assert f"Condition/{cond['id']}: changed on the server by someone else, kept" in err
    after = requests.get(f"{fhir.base_url}/Condition/{cond['id']}", timeout=30).json()
    assert after["verificationStatus"]["coding"][0]["code"] == "confirmed"
    assert after["meta"]["versionId"] == reply.json()["meta"]["versionId"]


def test_an_edit_that_drops_our_content_hash_tag_is_kept_not_overwritten(fhir, capsys):
    """Seen: an EHR edit that also removed our content-hash `meta.tag` was read as a result written before
    content hashes and overwritten by the next write-back ("2 updated, 0 kept"). Every writer of ours tags
    what it writes, so an untagged result of ours that differs from what we compute is someone else's."""
    seed(fhir, crs_patient("p1"))
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    cond = next(c for c in _live(fhir, "Condition") if c["code"]["coding"][0]["code"] == "crs")
    edited = {k: v for k, v in cond.items() if k != "meta"}  # the edit drops meta (and our tag) entirely
    edited["stage"][0]["summary"]["coding"] = [{"system": "https://cart-fhir.org/fhir/CodeSystem/toxicity-grade",
                                                "code": "3"}]
    reply = requests.put(f"{fhir.base_url}/Condition/{cond['id']}", json=edited, timeout=30,
                         headers={"Content-Type": "application/fhir+json"})
    assert reply.status_code == 200, reply.text[:300]
    assert "tag" not in reply.json().get("meta", {}), "the server kept the tag: the test no longer drops it"
    capsys.readouterr()
    assert main(["grade", "--server", fhir.base_url, "--patient", "p1", "--write-back"]) == 0
    err = capsys.readouterr().err
    assert f"Condition/{cond['id']}: changed on the server by someone else, kept (grade 3)" in err
    after = requests.get(f"{fhir.base_url}/Condition/{cond['id']}", timeout=30).json()
    assert after["meta"]["versionId"] == reply.json()["meta"]["versionId"]
    assert after["stage"][0]["summary"]["coding"][0]["code"] == "3"


def test_results_posted_from_the_transaction_file_are_known_unchanged_by_write_back(fhir, tmp_path, capsys):
    """The transaction file tags its entries with their content hash, as write-back does: writing back the
    same results afterwards changes nothing (and a clinician's later edit is recognised, not guessed)."""
    seed(fhir, crs_patient("p1"))
    out = tmp_path / "tx.json"
    assert grade(fhir, "--patient", "p1", "-o", str(out), "--bundle-type", "transaction") == 0
    bundle = orjson.loads(out.read_bytes())
    assert all(any(t["system"] == "https://cart-fhir.org/fhir/CodeSystem/content-hash"
                   for t in e["resource"]["meta"]["tag"]) for e in bundle["entry"])
    assert _post(fhir, bundle).status_code == 200
    before = counts(fhir)
    capsys.readouterr()
    assert main(["grade", "--server", fhir.base_url, "--patient", "p1", "--write-back"]) == 0
    line = _written_line(capsys.readouterr().err)
    assert "0 created, 0 updated" in line and "0 kept" in line, line
    assert counts(fhir) == before


def test_locks_are_keyed_by_the_normalised_server_url(tmp_path):
    """Seen: a trailing slash or upper case in the URL gave a second lock for the same server."""
    from cart_fhir.remote.locks import PatientLocks

    names = {PatientLocks(u, tmp_path)._name("Patient/p1") for u in (
        "https://FHIR.example.org/r4", "https://fhir.example.org/r4/", "https://fhir.example.org:443/r4",
        "HTTPS://fhir.example.org/r4")}
    assert len(names) == 1
    assert PatientLocks("https://fhir.example.org/R5", tmp_path)._name("Patient/p1") not in names


def test_a_patient_whose_write_fails_is_skipped_and_the_cohort_goes_on(fhir, capsys):
    """Seen: pausing the server mid-run stopped the whole cohort at one error."""
    seed(fhir, crs_patient("p1"), crs_patient("p2"), crs_patient("p3"))
    # POSTs: Device, p1 read, p1 transaction, p2 read (fails on both attempts), p3 read, p3 transaction
    fhir.fault(status=503, times=2, method="POST", path="", after=3)
    assert grade(fhir, "--patient", "p1", "--patient", "p2", "--patient", "p3", "--write-back",
                 "--retries", "2") == 1
    err = capsys.readouterr().err
    assert "re-run to repair: Patient/p2" in err and "Patient/p1" not in err.split("re-run to repair")[1]
    assert fhir.count("Provenance") == 2
    assert grade(fhir, "--patient", "p1", "--patient", "p2", "--patient", "p3", "--write-back") == 0
    assert fhir.count("Provenance") == 3


def test_a_patient_whose_read_fails_is_skipped_and_the_cohort_goes_on(fhir, capsys):
    seed(fhir, crs_patient("p1"), crs_patient("p2"), crs_patient("p3"))
    fhir.fault(status=503, times=2, method="GET", path="Patient", after=1)  # p2's $everything, both attempts
    assert grade(fhir, "--patient", "p1", "--patient", "p2", "--patient", "p3", "--write-back",
                 "--retries", "2") == 1
    err = capsys.readouterr().err
    assert "patients not graded (the server failed after the retries), re-run: Patient/p2" in err
    assert fhir.count("Provenance") == 2


def test_verify_lists_incomplete_and_stale_patients_and_a_rerun_repairs_them(fhir, capsys):
    seed(fhir, crs_patient("p1"), crs_patient("p2"))
    both = ("--patient", "p1", "--patient", "p2")
    assert grade(fhir, *both, "--verify") == 1  # nothing written yet: both incomplete
    assert "verify: 0 of 2 patients complete and current" in capsys.readouterr().err
    assert grade(fhir, *both, "--write-back") == 0
    writes = fhir.stats()["by_method"].get("POST", 0)
    assert main(["grade", "--server", fhir.base_url, *both, "--verify"]) == 0
    assert "verify: 2 of 2 patients complete and current" in capsys.readouterr().err
    prov = _all(fhir, "Provenance")
    requests.delete(f"{fhir.base_url}/Provenance/{prov[0]['id']}", timeout=30).raise_for_status()
    b2 = PatientBuilder("p2")
    b2._n = iter(range(900, 1000))
    b2.resources = []
    b2.pressor("norepinephrine", 2, "09:30", 2, "20:00")
    seed(fhir, b2)  # new data for p2: its results are stale
    before = fhir.stats()["by_method"].get("POST", 0)
    assert grade(fhir, *both, "--verify") == 1
    err = capsys.readouterr().err
    assert "incomplete: no Provenance of this run" in err and "Patient/p2: stale" in err
    assert fhir.stats()["by_method"].get("POST", 0) - before == 2 > 0 < writes  # reads only (batch searches)
    assert grade(fhir, *both, "--write-back") == 0
    assert grade(fhir, *both, "--verify") == 0


def test_two_writers_racing_on_one_patient(fhir, engine, tmp_path):
    """Two hosts (separate lock folders) write one patient at once: the second's If-Match fails, it re-reads
    and re-plans; nothing is duplicated or lost."""
    from datetime import UTC, datetime

    from cart_fhir.remote.client import FhirClient
    from cart_fhir.remote.http import FhirHttp
    from cart_fhir.remote.locks import PatientLocks
    from cart_fhir.remote.read import PatientReader
    from cart_fhir.remote.write import ResultWriter

    seed(fhir, crs_patient("p1"))
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    first = counts(fhir)
    b2 = PatientBuilder("p1")
    b2._n = iter(range(900, 1000))
    b2.resources = []
    b2.pressor("norepinephrine", 2, "09:30", 2, "20:00")
    seed(fhir, b2)

    def writer(host: str) -> ResultWriter:
        return ResultWriter(FhirClient(FhirHttp(fhir.base_url)), locks=PatientLocks(fhir.base_url, tmp_path / host))

    a, b = writer("a"), writer("b")
    result = engine.grade(PatientReader(a.client, engine.terminology).patient("p1"))
    device, groups = engine.resources_by_patient(result, datetime.now(UTC).replace(microsecond=0))
    read_once = a._existing

    def read_then_race(group, pw):
        found = read_once(group, pw)
        if not pw.conflicts:
            won = b.write_patient(device, group)  # the other host writes between our read and our write
            assert won.ok and won.updated > 0
        return found

    a._existing = read_then_race  # type: ignore[method-assign]
    lost = a.write_patient(device, groups[0])
    assert lost.ok and lost.conflicts == 1 and lost.updated == 0 and lost.created == 0
    assert lost.unchanged == len(groups[0].resources)
    assert counts(fhir) == first


@pytest.fixture
def service_app(engine, fhir):
    from cart_fhir.remote.settings import load_settings
    from cart_fhir.service import create_app

    server = load_settings({"base_url": fhir.base_url, "retries": 2}, None, {})
    return create_app({"testing": True, "auth": False, "server": server, "tables": engine.tables})


def test_service_write_back_counts_what_happened(service_app, fhir):
    """Seen: the service reported 44 daily grades for a 22-day patient (the resources were built twice)."""
    _seed(fhir)
    client = service_app.test_client()

    def texts() -> list[str]:
        resp = client.post("/fhir/Patient/p1/$grade-toxicity?writeBack=true")
        assert resp.status_code == 200
        return [i["details"]["text"] for i in resp.get_json(force=True)["entry"][-1]["resource"]["issue"]]

    first = texts()
    n = sum(fhir.count(t) for t in ("Observation", "Condition", "AdverseEvent", "Provenance")) - 3  # 3 seeded obs
    assert any(f"{n} created, 0 updated, 0 unchanged, 0 retracted" in t for t in first), first
    assert "written: 2 daily grades, " in " ".join(first)
    again = texts()
    assert any(f"0 created, 0 updated, {n} unchanged, 0 retracted" in t for t in again), again
    assert "written: 2 daily grades, " in " ".join(again)


def test_push_counts_what_happened(fhir, tmp_path, capsys):
    seed(fhir, crs_patient("p1"))
    out = tmp_path / "out.json"
    assert grade(fhir, "--patient", "p1", "-o", str(out), "--bundle-type", "transaction") == 0
    assert main(["push", str(out), "--server", fhir.base_url]) == 0
    first = _written_line(capsys.readouterr().err)
    assert main(["push", str(out), "--server", fhir.base_url]) == 0
    again = _written_line(capsys.readouterr().err)
    n = int(first.split("(")[1].split(" created")[0])
    assert n > 0 and f"({n} created, 0 updated, 0 unchanged" in first
    assert f"(0 created, 0 updated, {n} unchanged, 0 retracted" in again


def test_cds_hooks_feedback_is_recorded_as_the_clinicians_review(service_app, fhir):
    """An overridden card refutes its episode Condition (reason in a note); a re-run keeps the clinician's."""
    import uuid

    seed(fhir, crs_patient("p1"))
    client = service_app.test_client()
    assert client.post("/fhir/Patient/p1/$grade-toxicity?writeBack=true").status_code == 200
    hook = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": fhir.base_url,
            "context": {"patientId": "p1", "userId": "Practitioner/dr-1"}}
    cards = client.post("/cds-services/cart-toxicity", json=hook).get_json()["cards"]
    crs = next(c for c in cards if c["source"]["topic"]["code"] == "crs")
    reason = {"code": "not-crs", "system": "https://example.org/override", "display": "Fever from infection"}
    sent = client.post("/cds-services/cart-toxicity/feedback", json={"feedback": [
        {"card": crs["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-12-07T10:00:00Z",
         "overrideReason": {"reason": reason, "userComment": "blood cultures positive"}},
        {"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": "2026-12-07T10:00:00Z"}]})
    assert sent.status_code == 200
    cond = _all(fhir, "Condition")[0]
    assert cond["verificationStatus"]["coding"][0]["code"] == "refuted"
    assert "overridden; override reason: Fever from infection" in cond["note"][-1]["text"]
    assert "blood cultures positive" in cond["note"][-1]["text"]
    again = client.post("/fhir/Patient/p1/$grade-toxicity?writeBack=true").get_json(force=True)
    texts = [i["details"]["text"] for i in again["entry"][-1]["resource"]["issue"]]
    assert any(f"Condition/{cond['id']}: changed on the server by someone else, kept" in t for t in texts), texts
    assert _all(fhir, "Condition")[0]["meta"]["versionId"] == cond["meta"]["versionId"]
    bad = client.post("/cds-services/cart-toxicity/feedback", json={"feedback": [{"card": "x", "outcome": "maybe",
                                                                                   "outcomeTimestamp": "t"}]})
    assert bad.status_code == 400


def _counts_line(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("written: "))


def test_every_path_reports_the_same_produced_counts(fhir, tmp_path, capsys):
    """Issue 13 item 3: files, streamed, --server and bulk-export count the same grades and resources."""
    b = crs_patient("p1")
    src = tmp_path / "in.json"
    src.write_bytes(orjson.dumps(b.bundle()))
    out = tmp_path / "out.json"
    assert main(["grade", str(src), "-o", str(out)]) == 0
    n = len(orjson.loads(out.read_bytes())["entry"])
    expected = f"written: 4 daily grades, {n} resources in all"
    assert _counts_line(capsys.readouterr().err) == expected
    assert main(["grade", str(src), "--out-dir", str(tmp_path / "streamed"), "--workers", "1"]) == 0
    assert _counts_line(capsys.readouterr().err) == expected
    seed(fhir, b)
    assert main(["grade", "--server", fhir.base_url, "--patient", "p1", "-o", str(tmp_path / "s.json")]) == 0
    assert _counts_line(capsys.readouterr().err) == expected
    assert main(["bulk-export", "--server", fhir.base_url, "-o", str(tmp_path / "bulk")]) == 0
    assert _counts_line(capsys.readouterr().err) == expected
