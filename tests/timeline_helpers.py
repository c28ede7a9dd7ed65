"""Shared by the timeline tests: expected daily grades from an output Bundle, grade cells from report HTML."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from fhirbuild import PatientBuilder

DAILY_CODES = {"crs-grade-astct": "crs", "icans-grade-astct": "icans"}
RELATIVE = "http://hl7.org/fhir/StructureDefinition/cqf-relativeDateTime"
Key = tuple[str, str, int]  # (patient id, toxicity, day)
Grade = tuple[str, int | None]  # (state, grade or lower bound)


def bundle_daily_grades(bundle: dict[str, Any]) -> dict[Key, Grade]:
    """Every daily grade Observation of an output Bundle: (patient, toxicity, day) -> (state, grade)."""
    out: dict[Key, Grade] = {}
    for e in bundle["entry"]:
        r = e["resource"]
        if r["resourceType"] != "Observation":
            continue
        code = next((c["code"] for c in r["code"]["coding"] if c["code"] in DAILY_CODES), None)
        if code is None:
            continue
        ext = next(x for x in r["effectivePeriod"]["extension"] if x["url"] == RELATIVE)
        day = next(int(x["valueDuration"]["value"]) for x in ext["extension"] if x["url"] == "offset")
        pid = r["subject"]["reference"].split("/")[-1]
        if "dataAbsentReason" in r:
            grade: Grade = ("not-assessable", None)
        elif any(c["code"] == "at-least" for i in r.get("interpretation", []) for c in i["coding"]):
            grade = ("at-least", r["valueInteger"])
        else:
            grade = ("graded", r["valueInteger"])
        key = (pid, DAILY_CODES[code], day)
        assert key not in out, f"two daily grades for {key}"
        out[key] = grade
    return out


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.patient: list[str] = []
        self.depth: list[str] = []
        self.cells: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "section" and "data-patient" in a:
            self.patient.append(a["data-patient"])
        if tag == "button" and "data-toxicity" in a:
            self.cells.append({**a, "patient": self.patient[-1] if self.patient else ""})


def html_cells(html: str) -> list[dict[str, str]]:
    """The grade cells of a report (attributes, plus the patient of the enclosing section)."""
    p = _Cells()
    p.feed(html)
    return p.cells


def cell_grade(attrs: dict[str, str]) -> Grade:
    state = attrs.get("data-state", "graded")
    grade = attrs.get("data-grade")
    return state, (int(grade) if grade not in (None, "") else None)


def daily_cells(cells: list[dict[str, str]]) -> dict[Key, Grade]:
    out: dict[Key, Grade] = {}
    for c in cells:
        if c["data-toxicity"] in ("crs", "icans"):
            key = (c["patient"], c["data-toxicity"], int(c["data-day"]))
            assert key not in out, f"two cells for {key}"
            out[key] = cell_grade(c)
    return out


def crafted_patient() -> PatientBuilder:
    """A patient with every kind of daily cell: CRS graded (day 1), not assessable (day 2: no temperature),
    at least grade 2 (day 3: nasal cannula, no flow recorded), grade 0 (day 4)."""
    b = PatientBuilder(pid="crafted-1")
    b.temp(1, "06:00", 38.5)
    b.bp(1, "06:00", 118, 70)
    b.bp(2, "08:00", 120, 70)  # no temperature on day 2: CRS not assessable
    b.temp(3, "08:00", 38.9)
    b.oxygen(3, "09:00", "nasal-cannula")  # flow unknown: at least grade 2
    b.temp(4, "08:00", 36.8)
    b.oxygen(4, "08:00", "room-air")
    for day in range(0, 5):
        b.ice(day, "10:00", 10)
    return b


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def render_and_grade(engine: Any, inputs: list[str], **kw: Any) -> tuple[str, dict[str, Any]]:
    """In process (the suite's one engine; the CLI itself is tested in test_report.py): the report HTML and
    the output Bundle the same run gives `cart-fhir grade`."""
    from datetime import UTC, datetime

    from cart_fhir.ingest.read import read_paths
    from cart_fhir.view.render import patient_views, report_html

    result = engine.grade(read_paths(inputs))
    html = report_html(patient_views(engine, result), **kw)
    bundle = engine.bundle(engine.resources(result, datetime.now(UTC)), "collection")
    return html, bundle
