"""Issue 13 item 6: bad input reported in one pass; output paths, signals and empty results handled.

Each test reproduces a finding: three bad files reported only the first; --skip-invalid failed on an entry
without resourceType and printed `error:` for what it skipped; bundles in subfolders were not read; `-o` into
an unwritable place gave a traceback; SIGTERM left a hidden staging folder; `--patient nope -o nope.json`
wrote an empty Bundle.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fhirbuild import PatientBuilder
from test_cli import ENTRY_POINT, cli, write

from cart_fhir.cli import MAX_ERROR_LINES, main


def _patient(pid: str = "p1") -> dict:
    b = PatientBuilder(pid=pid)
    b.temp(1, "06:00", 38.6)
    return b.bundle()


def test_every_bad_file_is_reported_in_one_pass(tmp_path: Path) -> None:
    write(tmp_path / "a.json", '{"resourceType": "Bundle", "type": "collection", "entry": [')
    write(tmp_path / "b.json", {"resourceType": "Bundle", "type": "nope"})
    write(tmp_path / "c.json", [1, 2])
    write(tmp_path / "good.json", _patient())
    p = cli("grade", str(tmp_path), "-o", str(tmp_path / "out.json"))
    assert p.returncode == 2
    lines = p.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("cart-fhir: error: ") for line in lines), p.stderr
    assert "a.json: not valid JSON" in lines[0] and "b.json: Bundle.type" in lines[1] and "c.json" in lines[2]
    assert not (tmp_path / "out.json").exists()


def test_streamed_run_reports_every_bad_file_and_line_too(tmp_path: Path) -> None:
    write(tmp_path / "a.json", '{"resourceType": "Bundle", "type": "collection", "entry": [')
    write(tmp_path / "b.json", {"resourceType": "Bundle", "type": "nope"})
    (tmp_path / "c.ndjson").write_text('{"resourceType": "Patient", "id": "p2"}\nnot json\n{"id": "y"}\n')
    write(tmp_path / "good.json", _patient())
    p = cli("grade", str(tmp_path), "--out-dir", str(tmp_path / "out"), "-q")
    assert p.returncode == 2
    assert [line.split(": ", 3)[2].rsplit("/", 1)[-1] for line in p.stderr.splitlines()] == [
        "c.ndjson", "c.ndjson", "a.json", "b.json"], p.stderr
    assert not (tmp_path / "out").exists()
    p = cli("grade", str(tmp_path), "--out-dir", str(tmp_path / "out"), "--skip-invalid")
    assert p.returncode == 0 and p.stderr.count("warning: skipped: ") == 4, p.stderr
    assert "4 invalid (skipped)" in p.stderr


def test_errors_are_capped_with_the_total(tmp_path: Path) -> None:
    for i in range(MAX_ERROR_LINES + 5):
        write(tmp_path / f"bad{i:02d}.json", "[]")
    p = cli("grade", str(tmp_path), "-o", str(tmp_path / "out.json"))
    assert p.returncode == 2
    lines = p.stderr.splitlines()
    assert len(lines) == MAX_ERROR_LINES + 1 and lines[-1] == "cart-fhir: ... and 5 more errors"


def test_skip_invalid_skips_an_entry_without_resource_type_as_a_warning(tmp_path: Path) -> None:
    bundle = _patient()
    bundle["entry"].append({"resource": {"id": "x"}})
    ndjson = tmp_path / "more.ndjson"
    ndjson.write_text('{"resourceType": "Patient", "id": "p2"}\nnot json\n{"id": "y"}\n')
    inp = write(tmp_path / "bad.json", bundle)
    out = tmp_path / "out.json"
    p = cli("grade", str(inp), str(ndjson), "-o", str(out), "--skip-invalid")
    assert p.returncode == 0, p.stderr
    assert "warning: skipped: " + str(inp) + ": entry[3]: resource has no resourceType" in p.stderr
    assert "more.ndjson: line 2: not valid JSON" in p.stderr and "more.ndjson: line 3" in p.stderr
    assert "\nerror:" not in "\n" + p.stderr and "cart-fhir: error" not in p.stderr
    assert json.loads(out.read_text())["entry"]  # the rest was graded


def test_folders_are_read_recursively_but_not_hidden_ones(tmp_path: Path) -> None:
    (tmp_path / "site" / "ward").mkdir(parents=True)
    write(tmp_path / "site" / "ward" / "p1.json", _patient())
    (tmp_path / "site" / ".staging").mkdir()
    write(tmp_path / "site" / ".staging" / "junk.json", "[]")
    summary = tmp_path / "s.json"
    p = cli("grade", str(tmp_path / "site"), "-o", str(tmp_path / "o.json"), "--summary-json", str(summary), "-q")
    assert p.returncode == 0, p.stderr
    assert any(r["toxicity"] == "crs" for r in json.loads(summary.read_text()))
    (tmp_path / "empty").mkdir()
    p = cli("grade", str(tmp_path / "empty"), "-q")
    assert p.returncode == 2 and "no .ndjson or .json files (subfolders searched too)" in p.stderr


@pytest.mark.parametrize("target", [
    pytest.param("/proc/x", id="proc"),
    pytest.param("{tmp}/folder", id="existing-folder"),
    pytest.param("{tmp}/file.json/out.json", id="under-a-file"),
])
@pytest.mark.parametrize("streamed", [pytest.param(False, id="in-memory"), pytest.param(True, id="streamed")])
def test_unwritable_output_is_one_error_line(tmp_path: Path, target: str, streamed: bool) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.json").write_text("")
    inp = write(tmp_path / "in.json", _patient())
    path = target.format(tmp=tmp_path)
    p = cli("grade", str(inp), "-o", path, "-q", *(["--workers", "1"] if streamed else []))
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("cart-fhir: error: ") and len(p.stderr.splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr and ("cannot write" in p.stderr or "is a folder" in p.stderr)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["file.json", "folder", "in.json"]
    assert not list((tmp_path / "folder").iterdir())


def test_an_output_failure_leaves_no_other_output(tmp_path: Path) -> None:
    inp = write(tmp_path / "in.json", _patient())
    summary = tmp_path / "s.json"
    p = cli("grade", str(inp), "--summary-json", str(summary), "-o", "/proc/x", "-q")
    assert p.returncode == 2 and not summary.exists()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["in.json"]


def test_nothing_graded_says_so(tmp_path: Path) -> None:
    inp = write(tmp_path / "in.json", {"resourceType": "Bundle", "type": "collection", "entry": []})
    p = cli("grade", str(inp), "-o", str(tmp_path / "o.json"))
    assert p.returncode == 0 and "warning: nothing graded" in p.stderr
    assert json.loads((tmp_path / "o.json").read_text())["entry"] == []


def _big_ndjson(path: Path, patients: int = 80, days: int = 30) -> None:
    """Enough input that a streamed run with two workers is still going after its staging folder appears."""
    lines = []
    for n in range(patients):
        b = PatientBuilder(pid=f"p{n}")
        for d in range(days):
            for h in range(0, 24, 1):
                b.temp(d, f"{h:02d}:00", 37.0)
        lines.extend(json.dumps(r) for r in b.resources)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, id="sigterm"),
                                 pytest.param(signal.SIGINT, id="sigint")])
def test_signal_during_a_streamed_run_removes_the_staging_folder(tmp_path: Path, sig: int) -> None:
    inp = tmp_path / "in.ndjson"
    _big_ndjson(inp)
    out = tmp_path / "out"
    cmd = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "cart_fhir.cli"]
    # A test run in the background inherits SIGINT ignored (as a shell sets it for background jobs): give the
    # child the default disposition, as an interactive run has.
    proc = subprocess.Popen([*cmd, "grade", str(inp), "--out-dir", str(out), "--workers", "2", "-q"],
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509
    deadline = time.monotonic() + 60
    while not any(q.name.startswith(".out.") for q in tmp_path.iterdir()):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.05)  # into the partition step (the fast reader grades 80 patients in about a second)
    if proc.poll() is not None:
        proc.communicate()  # close the stderr pipe: left open, its ResourceWarning fails a later test
        pytest.skip("the run finished before the signal")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, 143), err
    # Our one line; a worker process still starting up when the pool is torn down may print its own EOFError.
    assert any(line.startswith("cart-fhir: error: ") and line.endswith("nothing written")
               for line in err.splitlines()), err
    assert sorted(q.name for q in tmp_path.iterdir()) == ["in.ndjson"]  # no staging folder, no output


def test_unknown_patient_on_a_server_writes_nothing(fhir, tmp_path: Path, capsys) -> None:
    out, summary = tmp_path / "nope.json", tmp_path / "s.json"
    code = main(["grade", "--server", fhir.base_url, "--patient", "nope", "-o", str(out), "--summary-json",
                 str(summary), "-q", "--retries", "4"])
    assert code == 2 and "Patient/nope was not found" in capsys.readouterr().err
    assert not out.exists() and not summary.exists()
    assert not os.listdir(tmp_path)
