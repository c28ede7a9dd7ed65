"""`cart-fhir report` pages in headless Chromium: what a person (and a script) sees equals the output Bundle.

For the three examples, a crafted patient with every cell state, and one synthetic patient: every CRS/ICANS
cell read from the DOM by data-day/data-toxicity equals that day's grade Observation; clicking a cell shows
its inputs (a not-assessable one its missing input); keyboard works; axe-core finds no serious or critical
violation; nothing is fetched from the network. Screenshots are saved as artefacts (path printed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from browser_fixture import artefact_dir, axe_violations
from test_cli import EXAMPLES
from timeline_helpers import bundle_daily_grades, crafted_patient, render_and_grade, write_json

from cart_fhir.cli_synth import synth_command

CELLS_JS = """() => Array.from(document.querySelectorAll('section[data-patient] .cell')).map(c => ({
  patient: c.closest('section[data-patient]').dataset.patient, toxicity: c.dataset.toxicity,
  day: +c.dataset.day, state: c.dataset.state || 'graded',
  grade: c.dataset.grade === undefined ? null : +c.dataset.grade}))"""


@pytest.fixture()
def render(engine: Any, tmp_path: Path) -> Any:
    """(name, inputs) -> (the report file, the output Bundle of the same run)."""
    def go(name: str, inputs: list[str]) -> tuple[Path, dict[str, Any]]:
        html, bundle = render_and_grade(engine, inputs)
        path = tmp_path / f"{name}.html"
        path.write_text(html)
        return path, bundle
    return go


def _dom_daily(page: Any) -> dict[tuple[str, str, int], tuple[str, int | None]]:
    out = {}
    for c in page.evaluate(CELLS_JS):
        if c["toxicity"] in ("crs", "icans"):
            key = (c["patient"], c["toxicity"], c["day"])
            assert key not in out, f"two cells for {key}"
            out[key] = (c["state"], c["grade"])
    return out


def _shot(page: Any, name: str) -> Path:
    path = artefact_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def _synthetic(tmp_path: Path) -> list[str]:
    assert synth_command(1, 11, str(tmp_path / "synth"), "bundle", 30) == 0
    return [str(tmp_path / "synth" / "fhir")]


@pytest.mark.parametrize("name", ["examples", "crafted", "synthetic"])
def test_every_cell_equals_the_daily_grade_observation(page: Any, render: Any, tmp_path: Path, name: str) -> None:
    if name == "examples":
        inputs = [str(p) for p in EXAMPLES]
    elif name == "crafted":
        inputs = [str(write_json(tmp_path / "crafted.json", crafted_patient().bundle()))]
    else:
        inputs = _synthetic(tmp_path)
    html, bundle = render(name, inputs)
    page.goto(html.as_uri())
    expected = bundle_daily_grades(bundle)
    assert expected and _dom_daily(page) == expected
    patients = {e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"} or \
        {k[0] for k in expected}
    shown = set(page.eval_on_selector_all("section.patient[data-patient]", "s => s.map(x => x.dataset.patient)"))
    assert {k[0] for k in expected} <= shown
    assert page.blocked_requests == []  # type: ignore[attr-defined]
    assert patients
    _shot(page, f"report-{name}")


def test_evidence_panel_names_inputs_and_missing(page: Any, render: Any, tmp_path: Path) -> None:
    src = write_json(tmp_path / "crafted.json", crafted_patient().bundle())
    html, _ = render("crafted", [str(src)])
    page.goto(html.as_uri())
    panel = page.locator("section.course .panel")
    page.click('[data-toxicity="crs"][data-day="1"]')
    text = panel.inner_text()
    assert "grade 1" in text and "Temperature" in text and "38.5" in text and "\u00b0C" in text
    assert "day 1 06:00" in text  # when, in the infusion's local time
    assert "criteria table astct-crs-2019 v" in text  # traceable to the table version that graded it
    page.click('[data-toxicity="crs"][data-day="2"]')
    text = panel.inner_text()
    assert "not assessable" in text and "Missing input" in text and "temperature" in text.lower()
    page.click('[data-toxicity="crs"][data-day="3"]')
    text = panel.inner_text()
    assert "at least grade 2" in text and "nasal-cannula" in text
    _shot(page, "report-crafted-details")


def test_keyboard_moves_between_cells_and_shows_details(page: Any, render: Any) -> None:
    html, _ = render("one", [str(EXAMPLES[0])])
    page.goto(html.as_uri())
    first = page.locator('[data-toxicity="crs"]').first
    first.focus()
    day = int(first.get_attribute("data-day"))
    page.keyboard.press("ArrowRight")
    focused = page.evaluate("() => [document.activeElement.dataset.toxicity, +document.activeElement.dataset.day]")
    assert focused == ["crs", day + 1]
    assert f"day {day + 1}" in page.locator("section.course .panel").inner_text()
    page.keyboard.press("ArrowDown")
    assert page.evaluate("() => document.activeElement.dataset.toxicity") == "icans"


def test_accessibility_no_serious_violations(page: Any, axe_script: str, render: Any) -> None:
    html, _ = render("examples-a11y", [str(p) for p in EXAMPLES])
    page.goto(html.as_uri())
    page.click('[data-toxicity="crs"] >> nth=2')  # with a details panel open too
    violations = axe_violations(page, axe_script)
    assert violations == [], json.dumps(violations, indent=1)


def test_printed_page_shows_the_grades(page: Any, render: Any) -> None:
    html, _ = render("print", [str(EXAMPLES[0])])
    page.goto(html.as_uri())
    page.emulate_media(media="print")
    assert page.locator(".panel").first.is_hidden()
    assert page.locator('[data-toxicity="crs"]').first.is_visible()
    pdf = artefact_dir() / "report-print.pdf"
    page.pdf(path=str(pdf), format="A4", landscape=True, print_background=True)
    assert pdf.stat().st_size > 10_000
    print(f"print preview: {pdf}")
