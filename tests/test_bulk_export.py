"""Bulk Data $export: kick-off fallback, polling, token rules, resumed downloads, error manifests; then end to end."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import responses
import urllib3
from fhirbuild import PatientBuilder, bundle_of

from cart_fhir.cli_bulk import bulk_export_command
from cart_fhir.errors import BadInput
from cart_fhir.ingest.read import read_paths
from cart_fhir.pipeline import Engine
from cart_fhir.remote.auth import BearerToken
from cart_fhir.remote.bulk import BulkExport, PollPolicy
from cart_fhir.remote.errors import ServerError
from cart_fhir.remote.http import FhirHttp, RetryPolicy

BASE = "https://fhir.example.org/fhir"
KICK = f"{BASE}/Patient/$export"
STATUS = f"{BASE}/$export-status/job1"
FILE = f"{BASE}/files/Patient.ndjson"
NDJSON = b'{"resourceType":"Patient","id":"p1"}\n{"resourceType":"Patient","id":"p2"}\n'


def manifest(*, token: bool = False, output: list[dict[str, str]] | None = None,
             error: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"transactionTime": "2026-01-01T00:00:00Z", "request": KICK, "requiresAccessToken": token,
            "output": [{"type": "Patient", "url": FILE}] if output is None else output, "error": error or []}


class Broken(io.RawIOBase):
    """A body that sends `data`, then the connection drops (urllib3 raises as it would on a reset)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.sent = data, False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.sent:
            raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
        b[: len(self.data)] = self.data
        self.sent = True
        return len(self.data)


def no_range(request: Any) -> tuple[bool, str]:
    return "Range" not in request.headers, "a Range header was sent"


@pytest.fixture()
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


@pytest.fixture()
def sleeps() -> list[float]:
    return []


def exporter(sleeps: list[float], token: str | None = None, **kw: Any) -> BulkExport:
    http = FhirHttp(BASE, auth=BearerToken(token) if token else None, sleep=sleeps.append,
                    retry=RetryPolicy(attempts=3))
    return BulkExport(http, **kw)


def kicked_off(mock: responses.RequestsMock) -> None:
    """The working default: POST kick-off accepted, manifest at once, file served."""
    mock.add(responses.POST, KICK, status=202, headers={"Content-Location": STATUS})


def test_post_405_falls_back_to_get_and_polls_honouring_retry_after(mock, sleeps, tmp_path):
    mock.add(responses.POST, KICK, status=405, json={"resourceType": "OperationOutcome", "issue": []})
    mock.add(responses.GET, KICK, status=202, headers={"Content-Location": STATUS},
             match=[responses.matchers.query_param_matcher({"_type": "Patient", "_since": "2026-01-01T00:00:00Z"}),
                    responses.matchers.header_matcher({"Prefer": "respond-async", "Accept": "application/fhir+json"})])
    mock.add(responses.GET, STATUS, status=202, headers={"Retry-After": "7", "X-Progress": "10%"})
    mock.add(responses.GET, STATUS, status=202)  # no Retry-After: our own backoff
    mock.add(responses.GET, STATUS, json=manifest())
    mock.add(responses.GET, FILE, body=NDJSON, content_type="application/fhir+ndjson")
    paths = exporter(sleeps).run(tmp_path, types="Patient", since="2026-01-01T00:00:00Z")
    assert [p.name for p in paths] == ["Patient.000.ndjson"] and paths[0].read_bytes() == NDJSON
    assert sleeps == [7.0, 2.0]  # Retry-After, then the doubling backoff (first=1 s, second poll)
    post = orjson.loads(mock.calls[0].request.body)
    assert {p["name"] for p in post["parameter"]} == {"_type", "_since"}


def test_group_kick_off_by_post(mock, sleeps, tmp_path):
    mock.add(responses.POST, f"{BASE}/Group/g1/$export", status=202, headers={"Content-Location": STATUS})
    mock.add(responses.GET, STATUS, json=manifest())
    mock.add(responses.GET, FILE, body=NDJSON)
    assert len(exporter(sleeps).run(tmp_path, group="g1")) == 1


@pytest.mark.parametrize("requires", [pytest.param(True, id="requiresAccessToken-true-sends-token"),
                                      pytest.param(False, id="requiresAccessToken-false-no-token")])
def test_token_only_when_the_manifest_requires_it(mock, sleeps, tmp_path, requires):
    kicked_off(mock)
    mock.add(responses.GET, STATUS, json=manifest(token=requires))
    mock.add(responses.GET, FILE, body=NDJSON)
    exporter(sleeps, token="s3cret").run(tmp_path)
    file_request = mock.calls[-1].request
    assert file_request.headers.get("Authorization") == ("Bearer s3cret" if requires else None)
    assert mock.calls[0].request.headers["Authorization"] == "Bearer s3cret"  # the FHIR API always gets it


def test_interrupted_download_resumes_with_range(mock, sleeps, tmp_path):
    kicked_off(mock)
    mock.add(responses.GET, STATUS, json=manifest())
    cut = 20
    mock.add(responses.GET, FILE, body=io.BufferedReader(Broken(NDJSON[:cut]), 1),
             headers={"Content-Length": str(len(NDJSON))}, match=[no_range])
    mock.add(responses.GET, FILE, status=206, body=NDJSON[cut:],
             headers={"Content-Range": f"bytes {cut}-{len(NDJSON) - 1}/{len(NDJSON)}"},
             match=[responses.matchers.header_matcher({"Range": f"bytes={cut}-"})])
    paths = exporter(sleeps).run(tmp_path)
    assert paths[0].read_bytes() == NDJSON
    assert not list(tmp_path.glob("*.part"))


def test_server_ignoring_range_restarts_the_file(mock, sleeps, tmp_path):
    kicked_off(mock)
    mock.add(responses.GET, STATUS, json=manifest())
    mock.add(responses.GET, FILE, body=io.BufferedReader(Broken(NDJSON[:20]), 1),
             headers={"Content-Length": str(len(NDJSON))}, match=[no_range])
    mock.add(responses.GET, FILE, status=200, body=NDJSON)  # whole file again, not 206
    assert exporter(sleeps).run(tmp_path)[0].read_bytes() == NDJSON


def test_error_manifest_raises_with_the_outcome_text(mock, sleeps, tmp_path):
    err_url = f"{BASE}/files/errors.ndjson"
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing",
                                                              "diagnostics": "export of Observation failed"}]}
    kicked_off(mock)
    mock.add(responses.GET, STATUS, json=manifest(output=[], error=[{"type": "OperationOutcome", "url": err_url}]))
    mock.add(responses.GET, err_url, body=orjson.dumps(outcome) + b"\n")
    with pytest.raises(ServerError, match="export of Observation failed"):
        exporter(sleeps).run(tmp_path)


def test_status_error_is_a_server_error(mock, sleeps, tmp_path):
    kicked_off(mock)
    mock.add(responses.GET, STATUS, status=500, json={"resourceType": "OperationOutcome", "issue": [
        {"severity": "fatal", "code": "exception", "details": {"text": "job crashed"}}]})
    with pytest.raises(ServerError, match="job crashed"):
        exporter(sleeps).run(tmp_path)


def test_output_on_another_host_is_refused_unless_allowed(mock, sleeps, tmp_path):
    foreign = "https://bucket.example.net/Patient.ndjson"
    kicked_off(mock)
    mock.add(responses.GET, STATUS, json=manifest(output=[{"type": "Patient", "url": foreign}]))
    with pytest.raises(ServerError, match="another host"):
        exporter(sleeps).run(tmp_path)
    # the second run, allowing the bucket, resumes the same export: no second kick-off
    mock.add(responses.GET, STATUS, json=manifest(output=[{"type": "Patient", "url": foreign}], token=True))
    mock.add(responses.GET, foreign, body=NDJSON)
    assert exporter(sleeps, allowed_origins=("https://bucket.example.net",)).run(tmp_path)[0].read_bytes() == NDJSON


def test_poll_timeout_cancels_the_job(mock, sleeps, tmp_path):
    kicked_off(mock)
    mock.add(responses.GET, STATUS, status=202, headers={"Retry-After": "60"})
    mock.add(responses.DELETE, STATUS, status=202)
    with pytest.raises(ServerError, match="not finished"):
        exporter(sleeps, poll=PollPolicy(timeout=30)).run(tmp_path)


# ---- end to end against the real FHIR test server ----------------------------------------------------------


def _graded(engine: Engine, paths: list[Any]) -> list[dict[str, Any]]:
    written = engine.resources(engine.grade(read_paths(paths)), recorded=_RECORDED)
    return sorted((w.resource for w in written), key=lambda r: (r["resourceType"], orjson.dumps(r.get("identifier"))))


_RECORDED = datetime(2026, 1, 1, tzinfo=UTC)


def crs_patient(pid: str, fever: float = 39.4) -> PatientBuilder:
    """Fever days 1-3, hypotension on day 2; ids made unique per patient (the builders number from 1 each)."""
    b = PatientBuilder(pid)
    b.temp(1, "08:00", fever)
    b.temp(2, "08:00", 39.0)
    b.bp(2, "09:00", 85, 50)
    b.temp(3, "08:00", 38.2)
    for res in b.resources:
        if res["resourceType"] != "Patient":
            res["id"] = f"{pid}-{res['id']}"
    return b


def test_export_from_the_test_server_grades_like_the_seeded_bundle(fhir, tmp_path):
    builders = [crs_patient("p1"), crs_patient("p2", fever=38.5)]
    seeded = bundle_of([r for b in builders for r in b.resources], "transaction")
    fhir.load(seeded)
    fhir.configure(export_polls=1, export_retry_after=0, export_truncate=40)  # one 202, one dropped download
    http = FhirHttp(fhir.base_url, retry=RetryPolicy(attempts=4), sleep=lambda s: None)
    with http:
        paths = BulkExport(http).run(tmp_path / "export")
    assert fhir.stats()["by_status"].get("206") == 1  # the dropped download resumed with Range
    exported = [orjson.loads(line) for p in paths for line in p.read_bytes().splitlines()]
    want = {(r["resourceType"], r["id"]) for r in (e["resource"] for e in seeded["entry"])}
    assert {(r["resourceType"], r["id"]) for r in exported} == want
    source = tmp_path / "seeded.json"
    source.write_bytes(orjson.dumps(bundle_of([e["resource"] for e in seeded["entry"]])))
    engine = Engine()
    from_export, from_seed = _graded(engine, paths), _graded(engine, [source])
    assert from_export and from_export == from_seed


def test_bulk_export_command_writes_the_graded_bundle(fhir, tmp_path, monkeypatch):
    fhir.load(crs_patient("p1").bundle("transaction"))
    fhir.configure(export_polls=0)
    for var in ("CART_FHIR_TOKEN", "CART_FHIR_TOKEN_FILE", "CART_FHIR_CLIENT_ID", "CART_FHIR_SERVER_AUTH"):
        monkeypatch.delenv(var, raising=False)
    assert bulk_export_command(fhir.base_url, str(tmp_path), None, None, None) == 0
    bundle = orjson.loads((tmp_path / "graded" / "bundle.json").read_bytes())
    assert bundle["resourceType"] == "Bundle" and bundle.get("entry")
    assert sorted(p.name for p in Path(tmp_path).glob("*.ndjson")) == [
        "MedicationAdministration.000.ndjson", "Observation.001.ndjson", "Patient.002.ndjson"]


def test_test_server_export_levels_since_range_and_cancel(fhir):
    """The wrapper's $export itself: Group and system levels, _type/_since, Range answers, DELETE cancels."""
    fhir.load(bundle_of([*crs_patient("p1").resources, *crs_patient("p2").resources,
                         {"resourceType": "Group", "id": "g1", "type": "person", "actual": True,
                          "member": [{"entity": {"reference": "Patient/p2"}}]}], "transaction"))
    fhir.configure(export_polls=0)
    session = requests.Session()
    prefer = {"Prefer": "respond-async", "Accept": "application/fhir+json"}

    def export(path: str, **params: str) -> dict[str, Any]:
        kick = session.get(f"{fhir.base_url}/{path}", params=params, headers=prefer, timeout=30)
        assert kick.status_code == 202, kick.text
        return session.get(kick.headers["Content-Location"], timeout=30).json()  # type: ignore[no-any-return]

    group = export("Group/g1/$export", _type="Patient")
    lines = session.get(group["output"][0]["url"], timeout=30).text.splitlines()
    assert [orjson.loads(x)["id"] for x in lines] == ["p2"]
    system = export("$export", _type="Group,Patient")
    assert [o["type"] for o in system["output"]] == ["Group", "Patient"]
    assert export("$export", _since="2999-01-01T00:00:00Z")["output"] == []
    url = system["output"][1]["url"]
    whole = session.get(url, timeout=30)
    assert whole.headers["Content-Type"] == "application/fhir+ndjson"
    part = session.get(url, headers={"Range": "bytes=10-"}, timeout=30)
    assert part.status_code == 206 and part.content == whole.content[10:]
    assert session.get(url, headers={"Range": f"bytes={len(whole.content)}-"}, timeout=30).status_code == 416
    kick = session.post(f"{fhir.base_url}/Patient/$export", headers=prefer, timeout=30)
    assert session.delete(kick.headers["Content-Location"], timeout=30).status_code == 202
    assert session.get(kick.headers["Content-Location"], timeout=30).status_code == 404
    assert session.get(f"{fhir.base_url}/Patient/$export", timeout=30).status_code == 400  # no Prefer


# ---- resuming an export across runs (the status URL saved in DIR/.bulk-export.json) ----------------------------

STATE = ".bulk-export.json"


class Killed(Exception):
    """Stands for the process dying (Ctrl-C, a lost session) while it waits for the export."""


def killed_while_polling(mock: responses.RequestsMock, sleeps: list[float], folder: Path, **params: str) -> None:
    """A first run: kick-off answers, the job is still running, then the run dies before the manifest."""
    def die(_: float) -> None:
        raise Killed

    mock.add(responses.POST, KICK if "group" not in params else f"{BASE}/Group/{params['group']}/$export",
             status=202, headers={"Content-Location": STATUS})
    mock.add(responses.GET, STATUS, status=202, headers={"Retry-After": "5"})
    with pytest.raises(Killed):
        BulkExport(FhirHttp(BASE, sleep=die)).run(folder, **params)


def test_second_run_resumes_the_saved_status_url_without_a_second_kick_off(mock, sleeps, tmp_path):
    killed_while_polling(mock, sleeps, tmp_path, types="Patient")
    saved = orjson.loads((tmp_path / STATE).read_bytes())
    assert saved["status_url"] == STATUS and saved["params"]["types"] == "Patient"
    mock.add(responses.GET, STATUS, json=manifest())
    mock.add(responses.GET, FILE, body=NDJSON)
    paths = exporter(sleeps).run(tmp_path, types="Patient")
    assert paths[0].read_bytes() == NDJSON
    assert [c.request.method for c in mock.calls] == ["POST", "GET", "GET", "GET"]  # one kick-off only
    assert not (tmp_path / STATE).exists()  # done: nothing left to resume


def test_resumed_run_keeps_finished_files_and_continues_partial_ones(mock, sleeps, tmp_path):
    second = f"{BASE}/files/Observation.ndjson"
    out = [{"type": "Patient", "url": FILE}, {"type": "Observation", "url": second}]
    killed_while_polling(mock, sleeps, tmp_path)
    (tmp_path / "Patient.000.ndjson").write_bytes(NDJSON)  # the first run finished this file...
    (tmp_path / "Observation.001.ndjson.part").write_bytes(NDJSON[:20])  # ...and was cut in this one
    mock.add(responses.GET, STATUS, json=manifest(output=out))
    mock.add(responses.GET, second, status=206, body=NDJSON[20:],
             headers={"Content-Range": f"bytes 20-{len(NDJSON) - 1}/{len(NDJSON)}"},
             match=[responses.matchers.header_matcher({"Range": "bytes=20-"})])
    paths = exporter(sleeps).run(tmp_path)
    assert [p.read_bytes() for p in paths] == [NDJSON, NDJSON]
    assert FILE not in [c.request.url for c in mock.calls]


@pytest.mark.parametrize("second", [
    pytest.param({"types": "Observation"}, id="other-type"),
    pytest.param({"since": "2026-01-01T00:00:00Z"}, id="since-added"),
    pytest.param({"group": "g1"}, id="group-instead-of-all-patients"),
])
def test_other_parameters_are_refused_without_restart(mock, sleeps, tmp_path, second):
    killed_while_polling(mock, sleeps, tmp_path, types="Patient")
    with pytest.raises(BadInput, match="unfinished export of .*--restart"):
        exporter(sleeps).run(tmp_path, **second)
    assert orjson.loads((tmp_path / STATE).read_bytes())["status_url"] == STATUS  # left for a resume


def test_restart_cancels_the_saved_export_and_kicks_off_a_new_one(mock, sleeps, tmp_path):
    killed_while_polling(mock, sleeps, tmp_path, types="Patient")
    (tmp_path / "Observation.000.ndjson.part").write_bytes(b"stale")
    new_status = f"{BASE}/$export-status/job2"
    mock.add(responses.DELETE, STATUS, status=202)
    mock.add(responses.POST, KICK, status=202, headers={"Content-Location": new_status})
    mock.add(responses.GET, new_status, json=manifest(output=[{"type": "Observation", "url": FILE}]))
    mock.add(responses.GET, FILE, body=NDJSON, match=[no_range])  # the stale part is not resumed
    paths = exporter(sleeps).run(tmp_path, types="Observation", restart=True)
    assert paths[0].read_bytes() == NDJSON and not (tmp_path / STATE).exists()


@pytest.mark.parametrize("gone", [pytest.param(404, id="status-url-404"), pytest.param(410, id="status-url-410")])
def test_expired_status_url_starts_a_new_export(mock, sleeps, tmp_path, caplog, gone):
    killed_while_polling(mock, sleeps, tmp_path)
    new_status = f"{BASE}/$export-status/job2"
    mock.add(responses.GET, STATUS, status=gone)
    mock.add(responses.POST, KICK, status=202, headers={"Content-Location": new_status})
    mock.add(responses.GET, new_status, json=manifest())
    mock.add(responses.GET, FILE, body=NDJSON)
    assert exporter(sleeps).run(tmp_path)[0].read_bytes() == NDJSON
    assert f"expired (HTTP {gone})" in caplog.text


def test_status_error_other_than_expiry_keeps_the_state(mock, sleeps, tmp_path):
    killed_while_polling(mock, sleeps, tmp_path)
    mock.add(responses.GET, STATUS, status=500)
    with pytest.raises(ServerError):
        exporter(sleeps).run(tmp_path)
    assert (tmp_path / STATE).exists()


def test_timeout_cancels_and_forgets_the_export(mock, sleeps, tmp_path):
    kicked_off(mock)
    mock.add(responses.GET, STATUS, status=202, headers={"Retry-After": "60"})
    mock.add(responses.DELETE, STATUS, status=202)
    with pytest.raises(ServerError, match="not finished"):
        exporter(sleeps, poll=PollPolicy(timeout=30)).run(tmp_path)
    assert not (tmp_path / STATE).exists()


@pytest.mark.parametrize("content", [pytest.param(b"{not json", id="not-json"),
                                     pytest.param(b'{"version": 1}', id="no-status-url"),
                                     pytest.param(b'{"version": 9, "params": {"base_url": "x"}, "status_url": "u",'
                                                  b' "kicked_off": "t"}', id="other-version")])
def test_damaged_state_file_is_bad_input(sleeps, tmp_path, content):
    (tmp_path / STATE).write_bytes(content)
    with pytest.raises(BadInput, match=r"\.bulk-export\.json"):
        exporter(sleeps).run(tmp_path)


def test_bulk_export_command_resumes_against_the_test_server(fhir, tmp_path, monkeypatch):
    """A first run dies while the real server's job is still running; the second run finishes the same job."""
    fhir.load(crs_patient("p1").bundle("transaction"))
    fhir.configure(export_polls=1, export_retry_after=0)
    posts = fhir.stats()["by_method"].get("POST", 0)  # the load's transaction
    for var in ("CART_FHIR_TOKEN", "CART_FHIR_TOKEN_FILE", "CART_FHIR_CLIENT_ID", "CART_FHIR_SERVER_AUTH"):
        monkeypatch.delenv(var, raising=False)

    def die(_: float) -> None:
        raise Killed

    with FhirHttp(fhir.base_url, sleep=die) as http, pytest.raises(Killed):
        BulkExport(http).run(tmp_path)
    assert orjson.loads((tmp_path / STATE).read_bytes())["status_url"].startswith(fhir.base_url)
    assert bulk_export_command(fhir.base_url, str(tmp_path), None, None, None) == 0
    assert fhir.stats()["by_method"]["POST"] - posts == 1  # the first run's kick-off only
    assert not (tmp_path / STATE).exists() and (tmp_path / "graded" / "bundle.json").exists()


def test_cli_refuses_other_parameters_in_one_line_and_restart_kicks_off(mock, tmp_path, monkeypatch, capsys):
    from cart_fhir.cli import main

    for var in ("CART_FHIR_TOKEN", "CART_FHIR_TOKEN_FILE", "CART_FHIR_CLIENT_ID", "CART_FHIR_SERVER_AUTH"):
        monkeypatch.delenv(var, raising=False)
    killed_while_polling(mock, [], tmp_path, types="Patient")
    assert main(["bulk-export", "--server", BASE, "-o", str(tmp_path), "--type", "Observation"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--restart" in err[0] and "Traceback" not in err[0]
    mock.add(responses.DELETE, STATUS, status=202)
    mock.add(responses.POST, KICK, status=202, headers={"Content-Location": STATUS})
    mock.add(responses.GET, STATUS, json=manifest(output=[]))
    assert main(["bulk-export", "--server", BASE, "-o", str(tmp_path), "--type", "Observation", "--restart"]) == 0
    assert not (tmp_path / STATE).exists()
