"""`cart-fhir report` without a browser: the page's machine-readable cells equal the output Bundle's daily
grades, the files are self-contained, the view layer stays pure, and the command's errors are one line."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from test_cli import EXAMPLES, cli
from timeline_helpers import bundle_daily_grades, crafted_patient, daily_cells, html_cells, render_and_grade, write_json

from cart_fhir.grading.result import State
from cart_fhir.ingest.read import read_paths
from cart_fhir.view.labels import LANES
from cart_fhir.view.render import patient_views, report_html

VIEW = Path(__import__("cart_fhir.view", fromlist=["x"]).__file__).parent


def _report_and_bundle(tmp_path: Path, *inputs: str) -> tuple[str, dict]:
    html, out = tmp_path / "report.html", tmp_path / "out.json"
    p = cli("report", *inputs, "-o", str(html))
    assert p.returncode == 0, p.stderr
    g = cli("grade", *inputs, "-o", str(out), "-q")
    assert g.returncode == 0, g.stderr
    return html.read_text(), json.loads(out.read_text())


def test_examples_cells_equal_daily_grade_observations(tmp_path: Path) -> None:
    html, bundle = _report_and_bundle(tmp_path, *map(str, EXAMPLES))
    expected = bundle_daily_grades(bundle)
    assert len(expected) > 30
    assert daily_cells(html_cells(html)) == expected
    assert html.count('data-patient="') == 3 and html.count('data-index-patient="') == 3  # sections, index rows


def test_crafted_patient_has_every_cell_state(engine, tmp_path: Path) -> None:
    src = write_json(tmp_path / "crafted.json", crafted_patient().bundle())
    html, bundle = render_and_grade(engine, [str(src)])
    cells = daily_cells(html_cells(html))
    assert cells == bundle_daily_grades(bundle)
    assert cells[("crafted-1", "crs", 1)] == ("graded", 1)
    assert cells[("crafted-1", "crs", 2)] == ("not-assessable", None)
    assert cells[("crafted-1", "crs", 3)] == ("at-least", 2)
    assert cells[("crafted-1", "crs", 4)] == ("graded", 0)


def test_every_lane_uses_summary_row_names(engine, tmp_path: Path) -> None:
    result = engine.grade(read_paths([str(p) for p in EXAMPLES]))
    views = patient_views(engine, result)
    names = {c["data-toxicity"] for c in html_cells(report_html(views))}
    assert names <= {t.value for t in LANES}
    assert {"crs", "icans", "iec-hs", "icaht-early"} <= names
    # ICAHT late (days 31-100) lies after these examples' data: listed with what it misses, not drawn.
    assert 'data-toxicity="icaht-late" data-day="31" data-state="not-assessable"' in report_html(views)
    # A not-assessable assessment (ICAHT without ANC) is a cell naming its missing input in its details.
    cr = result.patients[0].courses[0]
    na = [a for a in cr.assessments if a.state == State.NOT_ASSESSABLE]
    assert na and all(m in report_html(views) for a in na for m in a.missing)


def test_self_contained_no_external_references(engine) -> None:
    html, _ = render_and_grade(engine, [str(EXAMPLES[0])])
    # No URL the browser would fetch: no src=, no <link>, no @import or url() in CSS, no fetch().
    assert not re.search(r"\ssrc=|<link\b|@import|url\(|fetch\(|XMLHttpRequest", html)
    assert "<style>" in html and "<script>" in html and "<svg" in html


def test_patient_filter_and_unknown_patient(tmp_path: Path) -> None:
    bundle = json.loads(EXAMPLES[0].read_text())
    pid = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    out = tmp_path / "one.html"
    p = cli("report", *map(str, EXAMPLES), "--patient", pid, "-o", str(out), "-q")
    assert p.returncode == 0, p.stderr
    assert set(re.findall(r'<section class="patient"[^>]*data-patient="([^"]+)"', out.read_text())) == {pid}
    p = cli("report", *map(str, EXAMPLES), "--patient", "nobody", "-o", str(tmp_path / "x.html"))
    assert p.returncode == 2 and "nobody" in p.stderr and not (tmp_path / "x.html").exists()


def test_out_dir_one_file_per_patient_and_index(tmp_path: Path) -> None:
    out = tmp_path / "site"
    p = cli("report", *map(str, EXAMPLES), "--out-dir", str(out))
    assert p.returncode == 0, p.stderr
    files = sorted(f.name for f in out.iterdir())
    assert "index.html" in files and len(files) == 4
    index = (out / "index.html").read_text()
    links = re.findall(r'href="(patient-[^"#]+\.html)#', index)
    assert sorted(set(links)) == sorted(f for f in files if f != "index.html")
    for name in links:
        assert len(html_cells((out / name).read_text())) > 0


@pytest.mark.parametrize("args, message", [
    pytest.param(["examples"], "-o REPORT.html or --out-dir", id="no-output"),
    pytest.param(["-o", "a.html", "--out-dir", "d"], "-o REPORT.html or --out-dir", id="both-outputs"),
    pytest.param(["-o", "a.html"], "nothing to draw", id="no-input"),
])
def test_report_argument_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from cart_fhir.cli import main

    assert main(["report", *args]) == 2
    assert message in capsys.readouterr().err


def test_view_layer_is_pure() -> None:
    """The view builds and renders: no Flask, HTTP, FHIR client or file writes (house style 1)."""
    banned = {"flask", "requests", "fhirpy", "urllib", "socket", "subprocess"}
    for path in VIEW.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"
                assert "remote" not in name and "service" not in name, f"{path.name} imports {name}"


def test_static_assets_ship_in_the_package() -> None:
    assert (VIEW / "static" / "timeline.css").is_file() and (VIEW / "static" / "timeline.js").is_file()


def test_report_from_a_fhir_server(fhir, engine, tmp_path: Path) -> None:
    """`report --server URL --patient ID` reads the patient as `grade --server` does and draws the same grades."""
    from test_app_launch import storable, transaction

    from cart_fhir.cli import main

    bundle = storable(json.loads(EXAMPLES[0].read_text()))
    fhir.load(transaction(bundle))
    stored = write_json(tmp_path / "stored.json", bundle)
    pid = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    out = tmp_path / "server.html"
    assert main(["report", "--server", fhir.base_url, "--patient", pid, "-o", str(out), "-q"]) == 0
    _, graded = render_and_grade(engine, [str(stored)])
    assert daily_cells(html_cells(out.read_text())) == bundle_daily_grades(graded)


def test_browser_set_up_fails_in_ci_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    from browser_fixture import _unavailable

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        _unavailable("no chromium")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _unavailable("no chromium")
