"""Registry summary export: one row per infusion, CIBMTR-named columns, explicit missing values, CSV shape."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fhirbuild import RX, PatientBuilder
from helpers import run

from cart_fhir.grading.registry import load_all
from cart_fhir.ingest.read import read_paths
from cart_fhir.pipeline import Engine
from cart_fhir.registry import (
    NOT_APPLICABLE,
    NOT_ASSESSABLE,
    NOT_RESOLVED,
    NOT_REVIEWED,
    UNKNOWN,
    columns,
    registry_rows,
    write_csv,
)
from cart_fhir.tables import mappings_dir, read_yaml

TABLES = load_all()
COLUMNS = columns(TABLES)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCT = "http://snomed.info/sct"
BACTEREMIA, CMV = "5758002", "28944009"
Build = Callable[[PatientBuilder], Any]


def fever(*days: int, t: float = 38.6) -> Build:
    def build(b: PatientBuilder) -> None:
        for d in days:
            b.temp(d, "08:00", t)
    return build


def normal(*days: int) -> Build:
    return fever(*days, t=36.8)


def ice(day: int, score: int) -> Build:
    return lambda b: b.ice(day, "09:00", score)


def drug(agent: str, day: int, hhmm: str = "12:00", mg: float | None = None) -> Build:
    return lambda b: b.medication(agent, day, hhmm, rxnorm=RX[agent], dose_mg=mg)  # type: ignore[attr-defined]


def infection(code: str, day: int) -> Build:
    return lambda b: b.coded_condition(SCT, code, day, "10:00")  # type: ignore[attr-defined]


def rows_for(engine: Engine, builds: list[Build], **patient: Any) -> list[dict[str, str]]:
    b = PatientBuilder(**patient)
    for build in builds:
        build(b)
    result = run(engine, b.bundle())
    return [r for pr in result.patients for r in registry_rows(pr, engine.tables)]


# (id, builds, patient kwargs, expected subset of the one row). Day 0 = 2024-05-01 unless the case moves it.
CASES = [
    pytest.param([], {}, {"f4100_q80_crs": UNKNOWN, "crs_max_grade": UNKNOWN, "f4100_q82_crs_diagnosis_date": UNKNOWN,
                          "f4100_q83_crs_therapy_tocilizumab": UNKNOWN, "icans": UNKNOWN,
                          "icaht_early_grade": NOT_ASSESSABLE, "car_hematotox_score": NOT_ASSESSABLE,
                          "iec_hs": UNKNOWN, "infections": "0", "infection_worst_grade": NOT_APPLICABLE},
                 id="no-observations-unknown-never-zero"),
    pytest.param([normal(1, 2, 3)], {}, {"f4100_q80_crs": "no", "crs_max_grade": "0",
                                         "f4100_q82_crs_diagnosis_date": NOT_APPLICABLE,
                                         "crs_resolution_date": NOT_APPLICABLE,
                                         "crs_tocilizumab_doses": NOT_APPLICABLE},
                 id="crs-afebrile-grade0-dates-not-applicable"),
    pytest.param([fever(1), normal(2, 3)], {}, {"f4100_q80_crs": "yes", "crs_max_grade": "1",
                                               "f4100_q82_crs_diagnosis_date": "2024-05-02",
                                               "crs_resolution_date": "2024-05-03",
                                               "crs_last_grade1_date": "2024-05-02",
                                               "f4100_q83_crs_therapy_tocilizumab": "no", "crs_tocilizumab_doses": "0",
                                               "f4100_q83_crs_therapy_corticosteroids": "no"},
                 id="crs-grade1-onset-day1-resolved-day2"),
    pytest.param([fever(1, 2)], {}, {"crs_max_grade": "1", "crs_resolution_date": NOT_RESOLVED,
                                     "crs_last_grade1_date": "2024-05-03"},
                 id="crs-open-at-end-of-data-not-resolved-last-positive-day2"),
    pytest.param([fever(1, 2), drug("tocilizumab", 1), drug("tocilizumab", 2), drug("dexamethasone", 2, mg=10),
                  normal(3, 4, 5)], {},
                 {"f4100_q80_crs": "yes", "f4100_q83_crs_therapy_tocilizumab": "yes", "crs_tocilizumab_doses": "2",
                  "f4100_q83_crs_therapy_corticosteroids": "yes"},
                 id="crs-tocilizumab-two-doses-and-dexamethasone"),
    pytest.param([ice(1, 10), ice(3, 2), ice(4, 10), ice(5, 10)], {},
                 {"icans": "yes", "icans_max_grade": "3", "icans_diagnosis_date": "2024-05-04",
                  "icans_resolution_date": "2024-05-05", "icans_last_grade1_date": "2024-05-04",
                  "icans_therapy_corticosteroids": "no"},
                 id="icans-ice2-grade3-day3-resolved-day4"),
    pytest.param([ice(1, 10), ice(2, 10)], {}, {"icans": "no", "icans_max_grade": "0",
                                                "icans_diagnosis_date": NOT_APPLICABLE},
                 id="icans-ice10-grade0"),
    pytest.param([fever(1), normal(2)], {"tz": "-05:00", "infusion_time": "23:30"},
                 {"f4006_q6_infusion_date": "2024-05-01", "f4100_q82_crs_diagnosis_date": "2024-05-02"},
                 id="late-evening-infusion-west-of-utc-local-dates"),
    pytest.param([fever(1), normal(2)], {}, {"iec_hs": NOT_ASSESSABLE, "iec_hs_onset_date": NOT_ASSESSABLE},
                 id="iechs-crs-without-ferritin-not-assessable"),
    pytest.param([normal(1, 2)], {}, {"iec_hs": "no", "iec_hs_max_grade": "0", "iec_hs_onset_date": NOT_APPLICABLE},
                 id="iechs-no-crs-no-screen-expected"),
    pytest.param([infection(BACTEREMIA, 10)], {},
                 {"infections": "1", "infection_worst_grade": "2", "infection_kinds": "bacterial"},
                 id="infection-bacteremia-counted-with-kind"),
    pytest.param([infection(BACTEREMIA, 10), infection(CMV, 20)], {},
                 {"infections": "2", "infection_kinds": "bacterial;viral"},
                 id="infections-two-kinds-sorted"),
    pytest.param([], {"product_code": "1987402"}, {"f4006_q1_product_name": "axicabtagene ciloleucel",
                                                   "product_rxnorm": "1987402;1987407"},
                 id="product-name-and-table-rxnorm"),
]


@pytest.mark.parametrize(("builds", "patient", "expected"), CASES)
def test_registry_row(engine: Engine, builds: list[Build], patient: dict[str, Any], expected: dict[str, str]) -> None:
    [row] = rows_for(engine, builds, **patient)
    assert list(row) == COLUMNS
    assert all(v != "" for v in row.values()), "a blank cell"
    assert {k: row[k] for k in expected} == expected


def test_reinfusion_gives_one_row_per_course(engine: Engine) -> None:
    b = PatientBuilder()
    b.temp(1, "08:00", 38.6)
    b.infusion_medication(40, "10:00")
    b.temp(42, "08:00", 39.0)
    b.temp(43, "08:00", 36.8)
    [pr] = run(engine, b.bundle()).patients
    rows = registry_rows(pr, engine.tables)
    assert [(r["infusion_number"], r["f4006_q6_infusion_date"], r["f4100_q82_crs_diagnosis_date"]) for r in rows] == [
        ("1", "2024-05-01", "2024-05-02"), ("2", "2024-06-10", "2024-06-12")]


def test_patient_without_infusion_gives_no_row(engine: Engine) -> None:
    b = PatientBuilder(infusion="none")
    b.temp(1, "08:00", 38.6)
    assert [r for pr in run(engine, b.bundle()).patients for r in registry_rows(pr, engine.tables)] == []


# ---- the shipped examples, end to end through Engine --------------------------------------------------------

EXPECTED_EXAMPLES = {  # examples/README.md
    "axicabtagene ciloleucel": {"crs_max_grade": "2", "f4100_q82_crs_diagnosis_date": "2024-03-14",
                                "crs_resolution_date": "2024-03-17", "f4100_q83_crs_therapy_tocilizumab": "yes",
                                "crs_tocilizumab_doses": "1", "icans": "no", "f4006_q6_infusion_date": "2024-03-12"},
    "CAR-T cell product": {"crs_max_grade": "1", "crs_resolution_date": "2024-05-10", "icans_max_grade": "3",
                           "icans_diagnosis_date": "2024-05-12", "icans_resolution_date": "2024-05-16",
                           "icans_therapy_corticosteroids": "yes"},
    "tisagenlecleucel": {"crs_max_grade": "2", "f4100_q82_crs_diagnosis_date": "2024-09-19",
                         "crs_resolution_date": "2024-09-22", "icans_max_grade": "3",
                         "icans_diagnosis_date": "2024-09-22", "icans_resolution_date": "2024-09-25"},
}


def test_examples_end_to_end_csv(engine: Engine, tmp_path: Path) -> None:
    result = engine.grade(read_paths([EXAMPLES]))
    rows = [r for pr in result.patients for r in registry_rows(pr, engine.tables)]
    target = tmp_path / "registry.csv"
    write_csv(target, rows, engine.tables)
    with target.open(encoding="utf-8", newline="") as fh:
        back = list(csv.DictReader(fh))
    assert back == rows and len(back) == 3
    got = {r["f4006_q1_product_name"]: r for r in back}
    for product, expected in EXPECTED_EXAMPLES.items():
        assert {k: got[product][k] for k in expected} == expected, product


# ---- CSV shape and the column table ----------------------------------------------------------------------------


def test_header_even_without_rows_and_quoting() -> None:
    empty = io.StringIO()
    write_csv(empty, [], TABLES)
    assert empty.getvalue() == ",".join(COLUMNS) + "\r\n"
    row = {c: "x" for c in COLUMNS} | {"f4006_q1_product_name": 'a, "b"'}
    out = io.StringIO()
    write_csv(out, [row], TABLES)
    assert '"a, ""b"""' in out.getvalue()
    assert next(csv.DictReader(io.StringIO(out.getvalue()))) == row


def test_unknown_column_is_refused_and_no_file_is_left(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    with pytest.raises(ValueError):
        write_csv(target, [{c: "x" for c in COLUMNS} | {"extra": "y"}], TABLES)
    assert not target.exists()


def test_utf8_on_disk(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    write_csv(target, [{c: "é" for c in COLUMNS}], TABLES)
    assert target.read_bytes().decode("utf-8").splitlines()[1].startswith("é,é")


def test_column_table_rows_are_complete() -> None:
    doc = read_yaml(mappings_dir() / "registry-columns.yaml")
    assert [r["column"] for r in doc["rows"]] == COLUMNS and len(set(COLUMNS)) == len(COLUMNS)
    for r in doc["rows"]:
        assert isinstance(r["verified"], bool) and r["description"], r["column"]
        if r["verified"]:  # a verified column names the form question it fills, and where its text was read
            assert r["form"] in ("4006", "4100") and r["question"].startswith("Q") and r["url"].startswith("https://")
            assert r["column"].startswith(f"f{r['form']}_q"), r["column"]
        else:  # an unverified column must not pretend to a question number
            assert not r["column"].startswith(("f4006_q", "f4100_q")), r["column"]


def test_every_cell_of_a_patient_without_data_says_why(engine: Engine) -> None:
    [row] = rows_for(engine, [])
    assert row["crs_review"] == row["icans_review"] == NOT_REVIEWED and row["clinician_reviews"] == "none"
    assert set(row.values()) - {UNKNOWN, NOT_ASSESSABLE, NOT_APPLICABLE, NOT_REVIEWED, "none", "0", "1"} <= {
        row["patient_id"], row["f4006_q1_product_name"], row["product_rxnorm"], row["f4006_q6_infusion_date"]}
