"""Streamed, parallel grading (cart_fhir/stream): same results as the in-memory path, deterministic, all or nothing."""

from __future__ import annotations

import csv
import json
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from cart_fhir.cli import main
from cart_fhir.ingest.read import expand_paths, read_paths
from cart_fhir.pipeline import Engine
from cart_fhir.stream.partition import bucket_of, partition, route
from cart_fhir.stream.run import StreamJob, run_stream
from cart_fhir.synth.generate import Format, write_cohort

RECORDED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
TYPES = ("Device", "Observation", "Condition", "AdverseEvent", "Provenance")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cohort")
    write_cohort(d, 6, 11, days=12, fmt=Format.NDJSON)
    return d / "fhir"


def _canonical(resources: Any) -> list[bytes]:
    """Output resources as a sorted list of canonical JSON: the order differs between paths, nothing else may."""
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in resources)


def _in_memory(engine: Engine, inputs: list[Path]) -> tuple[list[bytes], Any]:
    result = engine.grade(read_paths(inputs))
    written = engine.resources(result, RECORDED)
    return _canonical(w.resource for w in written), result.report


def _streamed(out: Path) -> list[bytes]:
    found = []
    for f in sorted(out.glob("*.ndjson")):
        for line in f.read_bytes().splitlines():
            res = orjson.loads(line)
            assert res["resourceType"] == f.stem
            found.append(res)
    return _canonical(found)


def _run(inputs: list[Path], out: Path, **kw: Any) -> Any:
    return run_stream(StreamJob(inputs=[str(p) for p in inputs], out_dir=out, **kw), recorded=RECORDED)


def test_streamed_equals_in_memory(engine: Engine, cohort: Path, tmp_path: Path) -> None:
    expected, report = _in_memory(engine, [cohort])
    t = _run([cohort], tmp_path / "out", buckets=3)
    assert _streamed(tmp_path / "out") == expected
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted([f"{rtype}.ndjson" for rtype in TYPES] + ["report.json"])
    assert (t.report.patients, t.report.patients_graded, t.report.resources_read, t.report.resources_used,
            t.report.resources_written, dict(t.report.ignored)) == (
        report.patients, report.patients_graded, report.resources_read, report.resources_used,
        report.resources_written, dict(report.ignored))
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["patients"] == {"read": 6, "graded": report.patients_graded} and rep["buckets"] == 3


def test_workers_do_not_change_the_bytes_and_the_parent_never_grades(cohort: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers are spawned (fresh interpreters): with the parent's Engine broken the run still succeeds, so all
    grading happens in the workers, one bucket per task, and the parent never holds the resources."""
    _run([cohort], tmp_path / "w1", workers=1, buckets=4)

    def refuse(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the parent process graded")

    monkeypatch.setattr(Engine, "grade", refuse)
    monkeypatch.setattr(Engine, "__init__", refuse)
    t = _run([cohort], tmp_path / "w2", workers=2, buckets=4)
    assert t.report.patients == 6
    for rtype in TYPES:
        assert (tmp_path / "w1" / f"{rtype}.ndjson").read_bytes() == (tmp_path / "w2" / f"{rtype}.ndjson").read_bytes()


@pytest.mark.parametrize("scheduler", ["synchronous", "processes"])
def test_dask_local_mode_gives_the_same_bytes_as_the_local_run(cohort: Path, tmp_path: Path, scheduler: str) -> None:
    """The registry-scale path (cart_fhir/stream/dask.py) maps the same bucket tasks over Dask: same files and bytes."""
    local = _run([cohort], tmp_path / "local", workers=1, buckets=3)
    on_dask = _run([cohort], tmp_path / "dask", workers=1, buckets=3, dask=scheduler)
    assert on_dask.report.patients == local.report.patients == 6
    for rtype in TYPES:
        assert (tmp_path / "dask" / f"{rtype}.ndjson").read_bytes() == \
            (tmp_path / "local" / f"{rtype}.ndjson").read_bytes()


def test_dask_refuses_an_unknown_scheduler_and_leaves_nothing(cohort: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["grade", str(cohort), "--out-dir", str(tmp_path / "o"), "--dask", "yarn", "-q"])
    assert code == 2
    assert "--dask 'yarn'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_partition_puts_each_patient_in_one_bucket(cohort: Path, tmp_path: Path) -> None:
    part = partition(expand_paths([cohort]), tmp_path, 4, lambda n: None)
    assert len(part.buckets) == 4 and part.bytes_read == sum(p.stat().st_size for p in expand_paths([cohort]))
    for b, path in enumerate(part.buckets):
        for raw in path.read_bytes().splitlines():
            key = route(orjson.loads(raw.split(b"\t", 2)[2]), "unused")
            assert key is not None and bucket_of(key, 4) == b


@pytest.mark.parametrize(("line", "message"), [
    pytest.param(b"{not json", "not valid JSON", id="not-json"),
    pytest.param(b"[1, 2]", "expected a FHIR resource", id="not-an-object"),
    pytest.param(b'{"id": "x"}', "resource has no resourceType", id="no-resourceType"),
    pytest.param(b'{"resourceType": "Observation", "id": "o", "subject": "Patient/p"}', "must be a Reference",
                 id="subject-not-a-reference"),
])
def test_bad_line_exits_2_naming_file_line_and_leaves_nothing(cohort: Path, tmp_path: Path, line: bytes,
                                                              message: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "in" / "Observation.ndjson"
    bad.parent.mkdir()
    bad.write_bytes((cohort / "Observation.ndjson").read_bytes() + line + b"\n")
    n = bad.read_bytes().count(b"\n")
    out = tmp_path / "out"
    code = main(["grade", str(cohort / "Patient.ndjson"), str(bad), "--out-dir", str(out), "--workers", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and f"{bad}: line {n}" in err and message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == [bad.parent]


def _medications_by_reference(cohort: Path, dest: Path) -> None:
    """The cohort with every administration naming its drug through a shared Medication, plus one unused."""
    dest.mkdir()
    meds: dict[str, Any] = {"unused": {"resourceType": "Medication", "id": "unused", "code": {"text": "saline"}}}
    lines = []
    for raw in (cohort / "MedicationAdministration.ndjson").read_bytes().splitlines():
        res = orjson.loads(raw)
        cc = res.pop("medicationCodeableConcept")
        mid = f"m-{zlib.crc32(orjson.dumps(cc, option=orjson.OPT_SORT_KEYS))}"  # one Medication per distinct code
        meds[mid] = {"resourceType": "Medication", "id": mid, "code": cc}
        res["medicationReference"] = {"reference": f"Medication/{mid}"}
        lines.append(orjson.dumps(res))
    (dest / "MedicationAdministration.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    (dest / "Medication.ndjson").write_bytes(b"\n".join(orjson.dumps(m) for m in meds.values()) + b"\n")
    for name in ("Patient.ndjson", "Observation.ndjson"):
        (dest / name).write_bytes((cohort / name).read_bytes())


def test_shared_medications_resolved_and_counted_once(engine: Engine, cohort: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    _medications_by_reference(cohort, src)
    expected, report = _in_memory(engine, [src])
    t = _run([src], tmp_path / "out", buckets=3)
    assert _streamed(tmp_path / "out") == expected
    assert report.ignored["Medication (not referenced)"] == 1
    assert (t.report.resources_read, t.report.resources_used, dict(t.report.ignored)) == (
        report.resources_read, report.resources_used, dict(report.ignored))


def test_bundle_files_are_graded_whole(engine: Engine, tmp_path: Path) -> None:
    write_cohort(tmp_path / "b", 3, 5, days=8, fmt=Format.BUNDLE)
    expected, _ = _in_memory(engine, [tmp_path / "b" / "fhir"])
    t = _run([tmp_path / "b" / "fhir"], tmp_path / "out", buckets=2)
    assert _streamed(tmp_path / "out") == expected and t.report.patients == 3


def test_bundle_and_summary_from_parts(engine: Engine, cohort: Path, tmp_path: Path) -> None:
    """-o with --workers: the single Bundle is assembled from the parts, entry for entry."""
    expected, _ = _in_memory(engine, [cohort])
    job = StreamJob(inputs=[str(cohort)], bundle_out=tmp_path / "out.json", summary_json=tmp_path / "s.json",
                    workers=1, buckets=3)
    run_stream(job, recorded=RECORDED)
    bundle = json.loads((tmp_path / "out.json").read_text())
    got = _canonical(e["resource"] for e in bundle["entry"])
    assert bundle["type"] == "collection" and got == expected
    assert all(e["fullUrl"] for e in bundle["entry"])
    assert isinstance(json.loads((tmp_path / "s.json").read_text()), list)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "s.json"]


def test_registry_csv_streamed_equals_in_memory(engine: Engine, cohort: Path, tmp_path: Path) -> None:
    from cart_fhir import registry

    code = main(["grade", str(cohort), "--out-dir", str(tmp_path / "o"), "--workers", "1",
                 "--registry-csv", str(tmp_path / "r.csv"), "-q"])
    assert code == 0
    assert main(["grade", str(cohort), "-o", str(tmp_path / "m.json"), "--registry-csv", str(tmp_path / "m.csv"),
                 "-q"]) == 0
    with (tmp_path / "r.csv").open(newline="") as fh:
        streamed = list(csv.reader(fh))
    with (tmp_path / "m.csv").open(newline="") as fh:
        in_memory = list(csv.reader(fh))
    assert streamed[0] == in_memory[0] == registry.columns(engine.tables)
    assert len(streamed) > 1 and sorted(streamed[1:]) == sorted(in_memory[1:])


def _stderr_of_cli(args: list[str], tty: bool) -> str:
    """Run the installed CLI with stderr on a pseudo-terminal (as a person at a terminal sees it) or a pipe."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    cli = [sys.executable, "-m", "cart_fhir.cli"]
    if not tty:
        return subprocess.run([*cli, *args], capture_output=True, check=True, timeout=120).stderr.decode()
    leader, follower = pty.openpty()
    # a terminal of 24 x 120 (a pty starts at 0 x 0, where tqdm draws nothing)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([*cli, *args], stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_and_a_final_report_always(cohort: Path, tmp_path: Path) -> None:
    on_tty = _stderr_of_cli(["grade", str(cohort), "--out-dir", str(tmp_path / "a"), "--workers", "1"], tty=True)
    assert "partition" in on_tty and "grade" in on_tty and "bucket" in on_tty  # tqdm's bars, by stage
    assert "patients/s" in on_tty  # the final report
    piped = _stderr_of_cli(["grade", str(cohort), "--out-dir", str(tmp_path / "b"), "--workers", "1"], tty=False)
    assert "partition" not in piped and "\r" not in piped  # no bar in a log file
    assert "patients/s" in piped
    quiet = _stderr_of_cli(["grade", str(cohort), "--out-dir", str(tmp_path / "c"), "--workers", "1", "-q"], tty=True)
    assert quiet.strip() == ""
