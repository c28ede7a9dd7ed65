"""Registry follow-up CSV (issue 16): one row per infusion and follow-up period (day 100, 6 months, 1 year,
then yearly) with the long-term effects of each period; the per-infusion registry CSV is unchanged."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from fhirbuild import PatientBuilder
from helpers import run

from cart_fhir.follow_up import Period, columns, csv_text, follow_up_rows, periods
from cart_fhir.grading.registry import load_all
from cart_fhir.registry import columns as course_columns
from cart_fhir.tables import mappings_dir, read_yaml

ICD = "http://hl7.org/fhir/sid/icd-10-cm"


@pytest.mark.parametrize(("until", "names"), [
    pytest.param(0, ["day-100"], id="no-follow-up-day-100-row-only"),
    pytest.param(100, ["day-100"], id="day-100"),
    pytest.param(101, ["day-100", "month-6"], id="day-101-opens-month-6"),
    pytest.param(183, ["day-100", "month-6", "year-1"], id="day-183-opens-year-1"),
    pytest.param(365, ["day-100", "month-6", "year-1"], id="day-365-still-year-1"),
    pytest.param(366, ["day-100", "month-6", "year-1", "year-2"], id="day-366-opens-year-2"),
    pytest.param(731, ["day-100", "month-6", "year-1", "year-2", "year-3"], id="day-731-opens-year-3"),
])
def test_periods(until: int, names: list[str]) -> None:
    assert [p.name for p in periods(until)] == names


def test_period_bounds() -> None:
    assert list(periods(800)) == [Period("day-100", 0, 100), Period("month-6", 101, 182), Period("year-1", 183, 365),
                                  Period("year-2", 366, 730), Period("year-3", 731, 1095)]


def test_rows_per_period_with_the_effects_of_each(engine) -> None:
    b = PatientBuilder()
    b.lab("igg", 60, "08:00", 350, "mg/dL")  # type: ignore[attr-defined]
    b.medication("IVIG", 62, "10:00")  # type: ignore[attr-defined]
    b.lab("igg", 150, "08:00", 650, "mg/dL")  # type: ignore[attr-defined]
    b.lab("anc", 150, "08:00", 400, "/uL")  # type: ignore[attr-defined]
    b.lab("cd19-b-cells", 90, "08:00", 2, "/uL")  # type: ignore[attr-defined]
    b.coded_condition(ICD, "C84.40", 730, "09:00", display="Peripheral T-cell lymphoma")  # type: ignore[attr-defined]
    res = run(engine, b.bundle())
    rows = {r["period"]: r for r in follow_up_rows(res.patients[0], res.tables)}
    assert list(rows) == ["day-100", "month-6", "year-1", "year-2"]
    d100, m6, y1, y2 = rows["day-100"], rows["month-6"], rows["year-1"], rows["year-2"]
    assert (d100["hypogammaglobulinemia"], d100["igg_nadir_mg_dl"], d100["ig_replacement"]) == ("yes", "350", "yes")
    # low from day 60 until the IgG of day 150 (no replacement in the 28 days before it): still in month-6
    assert (m6["hypogammaglobulinemia"], m6["igg_nadir_mg_dl"], m6["ig_replacement"]) == ("yes", "650", "no")
    assert (y1["hypogammaglobulinemia"], y1["igg_nadir_mg_dl"]) == ("unknown", "unknown")
    assert d100["b_cell_aplasia"] == "yes" and m6["b_cell_aplasia"] == "yes"  # no recovery count: still low
    assert (d100["prolonged_cytopenia"], m6["prolonged_cytopenia"], m6["prolonged_cytopenia_max_grade"]) == \
        ("not applicable", "yes", "4")
    assert (y2["second_malignancy"], y2["second_malignancy_lineage"]) == ("yes", "t-cell")
    assert (y1["second_malignancy"], y1["second_malignancy_lineage"]) == ("not recorded", "not applicable")
    assert d100["period_end_date"] == "2024-08-09" and y2["period_first_day"] == "366"
    assert all(v for r in rows.values() for v in r.values())  # never a blank cell


def test_csv_header_and_columns(engine) -> None:
    res = run(engine, PatientBuilder().bundle())
    text = csv_text((r for pr in res.patients for r in follow_up_rows(pr, res.tables)), res.tables)
    (row,) = list(csv.DictReader(io.StringIO(text)))
    assert list(row) == columns(res.tables) and row["period"] == "day-100"


def test_every_follow_up_column_cites_a_question_or_says_it_was_not_read() -> None:
    rows = read_yaml(mappings_dir() / "registry-columns.yaml")["follow_up"]
    assert [r["column"] for r in rows] == columns(load_all())
    for r in rows:
        assert r["verified"] is False or (r["question"] and r["url"]), r["column"]


def test_per_infusion_csv_is_unchanged_by_the_follow_up_columns() -> None:
    assert "period" not in course_columns(load_all())


def test_cli_writes_the_follow_up_csv(tmp_path: Path) -> None:
    import orjson

    from cart_fhir.cli import main

    b = PatientBuilder()
    b.lab("igg", 60, "08:00", 350, "mg/dL")  # type: ignore[attr-defined]
    src = tmp_path / "in.json"
    src.write_bytes(orjson.dumps(b.bundle()))
    out = tmp_path / "follow.csv"
    assert main(["grade", str(src), "-o", str(tmp_path / "out.json"), "--registry-follow-up-csv", str(out)]) == 0
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["period"] for r in rows] == ["day-100"] and rows[0]["hypogammaglobulinemia"] == "yes"
