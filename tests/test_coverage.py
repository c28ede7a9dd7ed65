"""Issue 13 item 1: a run says which inputs the graders need had no usable reading in days 0-14.

Seen before: a cohort whose temperatures carried site codes, graded without --concept-map, exited 0 with CRS
`n/a` everywhere; the only trace was "Observation (code not used) 18007" in the run report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fhirbuild import PatientBuilder
from helpers import run
from test_cli import cli, write

from cart_fhir.coverage import CoverageGate
from cart_fhir.errors import ConfigError
from cart_fhir.grading.registry import GRADERS, GraderSpec, OutputKind
from cart_fhir.grading.result import Toxicity
from cart_fhir.pipeline import Engine
from cart_fhir.summary import episode_rows

SITE = "https://hospital.example/flowsheet"


def site_temperatures(pid: str = "p1") -> PatientBuilder:
    """Temperatures under a site code (unmapped without a ConceptMap); blood pressure, SpO2 and ICE standard."""
    b = PatientBuilder(pid=pid)
    for day in range(10):
        b.obs({"system": SITE, "code": "TEMP-CORE"}, day, "06:00", "temp",
              valueQuantity={"value": 38.9, "unit": "Cel", "system": "http://unitsofmeasure.org", "code": "Cel"})
        b.bp(day, "07:00", 120, 70)
        b.ice(day, "09:00", 10)
        b.lab("anc", day, "05:00", 1.2, "10*3/uL")
        b.lab("platelets", day, "05:00", 150, "10*3/uL")
    b.obs({"system": "http://loinc.org", "code": "59408-5"}, 1, "07:00", "spo2",
          valueQuantity={"value": 97, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"})
    return b


def site_map() -> dict:
    return {"resourceType": "ConceptMap", "status": "active", "group": [
        {"source": SITE, "target": "http://loinc.org",
         "element": [{"code": "TEMP-CORE", "target": [{"code": "8310-5", "equivalence": "equivalent"}]}]}]}


def test_unmapped_temperature_is_reported_per_infusion_and_in_the_run_report(engine: Engine) -> None:
    res = run(engine, site_temperatures().bundle())
    assert res.patients[0].missing == [("body-temperature", "hemoglobin", "crp", "ferritin", "fibrinogen",
                                        "transaminases")]
    report = res.report
    assert report.infusions_graded == 1 and report.missing_inputs["body-temperature"] == 1
    lines = "\n".join(report.summary_lines())
    assert "inputs without a usable reading in days 0-14" in lines and "body-temperature 1" in lines
    assert f"{SITE}|TEMP-CORE 10" in lines and "--concept-map" in lines  # the unmapped codes, most common first
    assert "Patient/p1 infusion 1: body-temperature" in lines  # per infusion (routinely charted inputs)
    (warning,) = report.coverage_warnings()  # labs ordered when indicated are reported, not warned about
    assert warning.startswith("no usable reading in days 0-14 for most graded infusions of: body-temperature (1 of 1);")
    assert "--concept-map" in warning
    rows = episode_rows(res)
    assert rows and all("body-temperature" in r["missing_inputs"] for r in rows)


def test_mapped_temperature_closes_the_gap(engine: Engine) -> None:
    mapped = Engine(tables=engine.tables, concept_maps=[("map.json", site_map())])
    res = run(mapped, site_temperatures().bundle())
    assert "body-temperature" not in res.patients[0].missing[0]
    assert not res.report.coverage_warnings()
    assert "Observation codes not used" not in "\n".join(res.report.summary_lines())


@pytest.mark.parametrize(("day", "missing"), [
    pytest.param(14, False, id="day-14-inside-the-window"),
    pytest.param(15, True, id="day-15-outside-the-window"),
])
def test_window_is_days_0_to_14(engine: Engine, day: int, missing: bool) -> None:
    b = PatientBuilder()
    b.bp(1, "07:00", 120, 70)
    b.temp(day, "06:00", 37.0)
    res = run(engine, b.bundle())
    assert ("body-temperature" in res.patients[0].missing[0]) is missing


def test_infusion_without_any_reading_in_the_window_is_counted_apart(engine: Engine) -> None:
    b = PatientBuilder()
    b.temp(20, "06:00", 37.0)
    res = run(engine, b.bundle())
    assert res.patients[0].missing == [None] and res.report.infusions_without_data == 1
    assert res.report.infusions_missing("anc", group=True) == 1
    assert any("no reading at all" in w for w in res.report.coverage_warnings())
    assert episode_rows(res)[0]["missing_inputs"] == ["no reading in the window"]


def test_gate_reads_the_registry_not_a_list(engine: Engine) -> None:
    crs_only = [s for s in GRADERS if s.name == "crs"]
    gate = CoverageGate(engine.tables, crs_only)
    assert [n.name for n in gate.needs] == ["body-temperature", "blood-pressure", "oxygenation"]
    assert gate.needs[0].graders == ("crs",)
    with pytest.raises(ConfigError, match="ferritin"):
        gate.resolve(["ferritin"])  # no registered grader reads it: nothing to require


def test_a_grader_reading_an_unplaced_concept_stops_start_up(engine: Engine) -> None:
    spec = GraderSpec("extra", OutputKind.SCORE, (Toxicity.CAR_HEMATOTOX,), build=lambda t: None,
                      run=lambda g, c, cr: None, concepts=("il6",))
    with pytest.raises(ConfigError, match=r"il6.*no group"):
        CoverageGate(engine.tables, [*GRADERS, spec])


@pytest.mark.parametrize(("name", "expected"), [
    pytest.param("temperature", "body-temperature", id="alias-temperature"),
    pytest.param("body-temperature", "body-temperature", id="group-id"),
    pytest.param("ICE", "neuro-assessment", id="alias-case-insensitive"),
    pytest.param("spo2", "spo2", id="concept-name"),
])
def test_require_names(engine: Engine, name: str, expected: str) -> None:
    (need,) = engine.coverage.resolve([name])
    assert need.name == expected


def test_cli_warns_and_require_exits_2_writing_nothing(tmp_path: Path) -> None:
    inp = write(tmp_path / "site.json", site_temperatures().bundle())
    out, summary = tmp_path / "out.json", tmp_path / "summary.json"
    p = cli("grade", str(inp), "-o", str(out))
    assert p.returncode == 0
    assert "warning: no usable reading in days 0-14 for most graded infusions of: body-temperature (1 of 1)" in p.stderr
    assert "--concept-map" in p.stderr
    out.unlink()
    p = cli("grade", str(inp), "-o", str(out), "--summary-json", str(summary), "--require", "temperature,anc")
    assert p.returncode == 2, p.stderr
    assert "Patient/p1 infusion 1: no usable reading of body-temperature in days 0-14 (--require)" in p.stderr
    assert "body-temperature missing for 1 of 1" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists() and not summary.exists()
    cm = write(tmp_path / "map.json", site_map())
    p = cli("grade", str(inp), "-o", str(out), "--summary-json", str(summary), "--require", "temperature",
            "--require", "anc", "--concept-map", str(cm))
    assert p.returncode == 0, p.stderr
    assert "warning: no usable reading" not in p.stderr
    assert json.loads(summary.read_text())[0]["missing_inputs"] == ["hemoglobin", "crp", "ferritin", "fibrinogen",
                                                                    "transaminases"]


def test_cli_require_unknown_name_is_a_usage_error(tmp_path: Path) -> None:
    inp = write(tmp_path / "site.json", site_temperatures().bundle())
    p = cli("grade", str(inp), "-o", str(tmp_path / "out.json"), "--require", "temprature")
    assert p.returncode == 2 and "unknown input 'temprature'" in p.stderr and "body-temperature" in p.stderr


def test_streamed_run_requires_too_and_writes_nothing(tmp_path: Path) -> None:
    inp = write(tmp_path / "site.json", site_temperatures().bundle())
    p = cli("grade", str(inp), "--out-dir", str(tmp_path / "out"), "--require", "body-temperature")
    assert p.returncode == 2 and "body-temperature" in p.stderr and "--require" in p.stderr
    assert not (tmp_path / "out").exists()  # checked before anything is assembled or published
    assert [f.name for f in tmp_path.iterdir()] == ["site.json"]  # no staging folder left either
