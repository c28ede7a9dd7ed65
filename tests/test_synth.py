"""Issue 7 item 1: `cart-fhir synth` is seeded (same seed, same bytes) and its expected grades are what the
engine grades from its output, for every patient and for every grade the builder can realise."""

from __future__ import annotations

import json
import random
from datetime import date
from pathlib import Path

import pytest
from fhirbuild import bundle_of
from helpers import run

from adapter.cli_synth import synth_command
from adapter.errors import ConfigError
from adapter.grading.result import Toxicity
from adapter.ingest.read import read_paths
from adapter.pipeline import Engine, RunResult
from adapter.synth.builder import build
from adapter.synth.generate import Format, write_cohort
from adapter.synth.scenario import Episode, Scenario
from adapter.synth.table import load_synth_table


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _graded(result: RunResult) -> dict[str, dict[str, list[tuple[int, int]]]]:
    """{patient: {"crs"|"icans": [(max_grade, onset_day), ...]}} of each patient's one course."""
    out = {}
    for pr in result.patients:
        (cr,) = pr.courses
        out[pr.patient.id] = {t.value: [(e.max_grade, e.onset_day) for e in cr.episodes[t]]
                              for t in (Toxicity.CRS, Toxicity.ICANS)}
    return out


def _expected(row: dict) -> dict[str, list[tuple[int, int]]]:
    return {t: [] if row[t]["max_grade"] == 0 else [(row[t]["max_grade"], row[t]["onset_day"])]
            for t in ("crs", "icans")}


@pytest.mark.parametrize("fmt", [Format.BUNDLE, Format.NDJSON], ids=["bundle", "ndjson"])
def test_same_seed_same_bytes(tmp_path: Path, fmt: Format) -> None:
    for name in ("a", "b"):
        write_cohort(tmp_path / name, patients=5, seed=7, days=30, fmt=fmt)
    write_cohort(tmp_path / "c", patients=5, seed=8, days=30, fmt=fmt)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_adding_patients_keeps_the_first_ones(tmp_path: Path) -> None:
    write_cohort(tmp_path / "small", patients=2, seed=3, days=30)
    write_cohort(tmp_path / "big", patients=4, seed=3, days=30)
    small, big = _files(tmp_path / "small" / "fhir"), _files(tmp_path / "big" / "fhir")
    assert small.items() <= big.items()


@pytest.mark.parametrize("fmt,patients", [(Format.BUNDLE, 20), (Format.NDJSON, 8)],
                         ids=["bundle-20", "ndjson-8"])
def test_engine_grades_what_the_scenarios_say(engine: Engine, tmp_path: Path, fmt: Format,
                                              patients: int) -> None:
    write_cohort(tmp_path, patients=patients, seed=7, days=30, fmt=fmt)
    expected = json.loads((tmp_path / "expected.json").read_text())["expected"]
    result = engine.grade(read_paths([tmp_path / "fhir"]))
    assert not result.report.errors
    got = _graded(result)
    assert len(got) == patients
    for row in expected:
        assert got[row["patient"]] == _expected(row), row["patient"]


def _scenario(age: int, crs: int, icans: int, route: str) -> Scenario:
    product = next(p for p in load_synth_table().products if p.age[0] <= age <= p.age[1])
    return Scenario(pid="case", product=product, age=age, day0=date(2024, 3, 30), tz="-05:00",
                    crs=Episode(crs, 2, 4, 3) if crs else None,
                    icans=Episode(icans, 4, 3, 5) if icans else None,
                    crs_route=route)


CASES = [pytest.param(age, crs, icans, route, id=f"{who}-crs{crs}-{route}-icans{icans}")
         for who, age in (("adult", 55), ("child", 6))
         for crs, icans in ((0, 0), (1, 1), (2, 2), (3, 3), (4, 4))
         for route in ("hypotension", "hypoxia")]


@pytest.mark.parametrize("age,crs,icans,route", CASES)
def test_every_grade_the_builder_realises(engine: Engine, age: int, crs: int, icans: int, route: str) -> None:
    """Each CRS grade by each route (hypotension/vasopressors, oxygen), each ICANS grade by ICE (adult) and
    CAPD (child under 12), crossing a day boundary in a non-UTC offset and a month end."""
    s = _scenario(age, crs, icans, route)
    result = run(engine, bundle_of(build(s, random.Random(1), 12)))
    want = {"crs": [(crs, 2)] if crs else [], "icans": [(icans, 4)] if icans else []}
    assert _graded(result)["case"] == want


def test_a_bad_distribution_row_stops_start_up(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "mappings" / "synth-cohort.yaml").read_text()
    bad = text.replace("grade_pct: [50, 30, 9, 4]", "grade_pct: [90, 30, 9, 4]")
    (tmp_path / "synth-cohort.yaml").write_text(bad)
    with pytest.raises(ConfigError, match="grade_pct"):
        load_synth_table(str(tmp_path))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert synth_command(2, 1, str(tmp_path), "ndjson", 10) == 0
    assert (tmp_path / "fhir" / "Patient.ndjson").read_text().count("\n") == 2
    assert "wrote 2 patients" in capsys.readouterr().err
    assert synth_command(2, 1, str(tmp_path), "xml", 10) == 2
    assert synth_command(0, 1, str(tmp_path), "bundle", 10) == 2
