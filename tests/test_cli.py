"""`cart-fhir grade` end to end, as a user runs it: exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fhirbuild import PatientBuilder

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples").glob("*.json"))


ENTRY_POINT = Path(sys.executable).parent / "cart-fhir"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `cart-fhir` console script, from a folder outside the source tree."""
    cmd = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "cart_fhir.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=Path(__file__).parent / "data",
                          timeout=120)


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_grades_the_shipped_examples(tmp_path: Path) -> None:
    out, summary = tmp_path / "out.json", tmp_path / "summary.json"
    p = cli("grade", *map(str, EXAMPLES), "-o", str(out), "--summary-json", str(summary))
    assert p.returncode == 0, p.stderr
    bundle = json.loads(out.read_text())
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    rows = json.loads(summary.read_text())
    episodes = [r for r in rows if r["toxicity"] != "car-hematotox"]
    assert episodes and all(set(r) >= {"patient", "toxicity", "max_grade", "onset_day", "onset", "resolved"}
                            for r in episodes)
    scores = [r for r in rows if r["toxicity"] == "car-hematotox"]
    assert len(scores) == 3 and all(set(r) >= {"patient", "score", "risk"} for r in scores)
    assert "result" in p.stderr and "onset day" in p.stderr and "cohort: 3 patients" in p.stderr  # the table


def test_stdout_when_no_output_file(tmp_path: Path) -> None:
    p = cli("grade", str(EXAMPLES[0]), "-q")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["resourceType"] == "Bundle"
    assert p.stderr == ""


def test_transaction_bundle_type(tmp_path: Path) -> None:
    out = tmp_path / "tx.json"
    assert cli("grade", str(EXAMPLES[0]), "-o", str(out), "--bundle-type", "transaction", "-q").returncode == 0
    bundle = json.loads(out.read_text())
    assert bundle["type"] == "transaction"
    # conditional on a search parameter R4 defines; AdverseEvent (no R4 `identifier` search) by stable id
    assert all(e["request"]["method"] == "PUT" and ("?" in e["request"]["url"]) ==
               (e["resource"]["resourceType"] != "AdverseEvent") for e in bundle["entry"])


def test_validate_flag(tmp_path: Path) -> None:
    assert cli("grade", *map(str, EXAMPLES), "-o", str(tmp_path / "o.json"), "--validate", "-q").returncode == 0


def _bad_unit() -> dict:
    b = PatientBuilder()
    b.temp_raw(1, "08:00", {"value": 38.5, "unit": "degrees", "system": "http://unitsofmeasure.org",
                            "code": "xyz"})
    return b.bundle()


def _wrong_type() -> dict:
    b = PatientBuilder()
    b.temp_raw(1, "08:00", {"value": "hot", "unit": "Cel", "code": "Cel"})
    return b.bundle()


def _missing_patient() -> dict:
    b = PatientBuilder()
    obs = b.temp(1, "08:00", 38.5)
    obs["subject"] = {"reference": "Patient/nobody"}
    return b.bundle()


@pytest.mark.parametrize(("content", "expected"), [
    pytest.param('{"resourceType": "Bundle", "type": "collection", "entry": [', ["bad.json", "not valid JSON"],
                 id="broken-json"),
    pytest.param({"resourceType": "Patient", "id": "x"}, ["bad.json", "expected resourceType 'Bundle'"],
                 id="not-a-bundle"),
    pytest.param(_wrong_type(), ["bad.json", "Observation/temp-", "must be a number, got a string"], id="wrong-type"),
    pytest.param(_bad_unit(), ["bad.json", "Observation/temp-", "unit 'xyz'"], id="unknown-unit"),
    pytest.param(_missing_patient(), ["bad.json", "Observation/temp-", "Patient/nobody", "not in the input"],
                 id="missing-patient"),
])
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(tmp_path: Path, content, expected) -> None:
    bad = write(tmp_path / "bad.json", content)
    out, summary = tmp_path / "out.json", tmp_path / "summary.json"
    p = cli("grade", str(bad), "-o", str(out), "--summary-json", str(summary))
    assert p.returncode == 2
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("cart-fhir: error: ")
    for fragment in expected:
        assert fragment in lines[0]
    assert "Traceback" not in p.stderr
    assert not out.exists() and not summary.exists()
    assert list(tmp_path.iterdir()) == [bad]  # no temporary files left behind either


def test_failed_run_leaves_an_existing_output_untouched(tmp_path: Path) -> None:
    out = write(tmp_path / "out.json", {"previous": "run"})
    bad = write(tmp_path / "bad.json", _bad_unit())
    assert cli("grade", str(bad), "-o", str(out)).returncode == 2
    assert json.loads(out.read_text()) == {"previous": "run"}


def test_missing_file_and_bad_concept_map(tmp_path: Path) -> None:
    p = cli("grade", str(tmp_path / "nope.json"))
    assert p.returncode == 2 and "no such file" in p.stderr
    cm = write(tmp_path / "map.json", {"resourceType": "ConceptMap", "group": [
        {"source": "https://site/x", "target": "http://loinc.org",
         "element": [{"code": "T", "target": [{"code": "0000-0", "equivalence": "equivalent"}]}]}]})
    p = cli("grade", str(EXAMPLES[0]), "--concept-map", str(cm))
    assert p.returncode == 2 and "map.json" in p.stderr and "0000-0" in p.stderr


def test_skip_invalid_reports_and_continues(tmp_path: Path) -> None:
    b = PatientBuilder()
    b.temp(1, "06:00", 38.6)
    b.temp_raw(1, "08:00", {"value": 38.5, "unit": "x", "code": "xyz"})
    bad = write(tmp_path / "bad.json", b.bundle())
    out = tmp_path / "out.json"
    p = cli("grade", str(bad), "-o", str(out), "--skip-invalid")
    assert p.returncode == 0
    assert "error: bad.json" not in p.stderr and "unit 'xyz'" in p.stderr
    assert "warning: skipped: " in p.stderr and "\nerror:" not in p.stderr  # skipped, so a warning
    assert out.exists()


def test_error_lines_carry_no_values_unless_asked(tmp_path: Path) -> None:
    """Issue 13: `Patient.birthDate '1961-07-32'` and `got '39.71'` printed resource contents (PHI)."""
    b = PatientBuilder(birth="1961-07-32")
    b2 = PatientBuilder(pid="p2")
    b2.temp_raw(1, "08:00", {"value": "39.71", "unit": "Cel", "code": "Cel"})
    bad = write(tmp_path / "bad.json", {**b.bundle(), "entry": b.bundle()["entry"] + b2.bundle()["entry"]})
    p = cli("grade", str(bad), "-o", str(tmp_path / "out.json"))
    assert p.returncode == 2 and "Patient.birthDate is not a valid FHIR date" in p.stderr
    assert "must be a number, got a string" in p.stderr
    assert "1961" not in p.stderr and "39.71" not in p.stderr
    p = cli("grade", str(bad), "-o", str(tmp_path / "out.json"), "--show-values")
    assert p.returncode == 2 and "(value: '1961-07-32')" in p.stderr and "(value: '39.71')" in p.stderr


def test_fahrenheit_labelled_celsius_exits_2_naming_the_mixup(tmp_path: Path) -> None:
    b = PatientBuilder()
    b.temp(1, "06:00", 101.1)
    bad = write(tmp_path / "bad.json", b.bundle())
    p = cli("grade", str(bad), "-o", str(tmp_path / "out.json"))
    assert p.returncode == 2 and "plausible range 25-45 Cel" in p.stderr and "Fahrenheit" in p.stderr
    assert "101.1" not in p.stderr and not (tmp_path / "out.json").exists()


def test_ndjson_folder_input(tmp_path: Path) -> None:
    b = PatientBuilder()
    b.temp(1, "06:00", 38.6)
    folder = tmp_path / "export"
    folder.mkdir()
    by_type: dict[str, list[str]] = {}
    for r in b.resources:
        by_type.setdefault(r["resourceType"], []).append(json.dumps(r))
    for rtype, lines in by_type.items():
        (folder / f"{rtype}.ndjson").write_text("\n".join(lines) + "\n")
    summary = tmp_path / "s.json"
    p = cli("grade", str(folder), "-o", str(tmp_path / "o.json"), "--summary-json", str(summary), "-q")
    assert p.returncode == 0, p.stderr
    rows = [r for r in json.loads(summary.read_text()) if r["toxicity"] != "car-hematotox"]
    assert [(r["toxicity"], r["max_grade"], r["onset_day"]) for r in rows] == [("crs", 1, 1)]
