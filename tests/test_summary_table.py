"""Issue 13 item 4: a terminal table that explains itself.

Seen before: five markers in one column (`n/a`, `no data`, `-`, `ongoing`, `score 0 (low)`), no reason for
`n/a`, IEC-HS rows never shown, ICAHT rows missing when grade 0 or not assessable, "days assessed" meaning
something else than in summary.json, patients shown only as UUIDs, no cohort totals.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from fhirbuild import PatientBuilder
from helpers import run
from test_cli import cli, write

from cart_fhir.ingest.read import read_bytes
from cart_fhir.pipeline import Engine
from cart_fhir.summary import cohort_totals, episode_rows, render_table, table_rows

RESULT = re.compile(r"^(grade \d|>= \d|none( \(no .+ in days 0-14\))?|not assessable: .+|score \d+( \(.+ risk\))?)$")


def crs_patient(pid: str = "p1", **kw) -> PatientBuilder:
    b = PatientBuilder(pid=pid, **kw)
    b.temp(1, "06:00", 38.6)
    b.temp(2, "06:00", 39.0)
    b.temp(3, "06:00", 37.0)
    b.temp(4, "06:00", 36.9)
    b.bp(1, "07:00", 120, 70)
    b.ice(1, "09:00", 10)
    b.ice(2, "09:00", 10)
    return b


def test_every_assessed_toxicity_has_a_row_in_one_vocabulary(engine: Engine) -> None:
    res = run(engine, crs_patient().bundle())
    cells = table_rows(res)
    assert [c[2].split(" (")[0] for c in cells] == [t.value for t in res.toxicities]
    assert {"iec-hs", "icaht-early", "icaht-late", "car-hematotox"} <= {c[2] for c in cells}
    assert all(RESULT.match(c[3]) for c in cells), [c[3] for c in cells]
    by_tox = {c[2]: c for c in cells}
    assert by_tox["crs"][3] == "grade 1" and by_tox["icans"][3] == "none"
    assert by_tox["icaht-early"][3].startswith("not assessable: ANC")  # before: no row at all
    assert by_tox["crs"][5] == "3"


def test_not_assessable_names_what_was_missing(engine: Engine) -> None:
    b = PatientBuilder()
    b.bp(1, "07:00", 120, 70)  # blood pressure but no temperature: CRS cannot be graded, not "n/a"
    (crs,) = [c for c in table_rows(run(engine, b.bundle())) if c[2] == "crs"]
    assert crs[3].startswith("not assessable: body temperature")


def test_grade_0_rows_are_shown(engine: Engine) -> None:
    b = crs_patient()
    for day in range(31):
        b.lab("anc", day, "05:00", 2.0, "10*3/uL")
    cells = {c[2]: c for c in table_rows(run(engine, b.bundle()))}
    assert cells["icaht-early"][3] == "none"  # ICAHT grade 0: before, no row


def test_days_assessed_is_the_summary_json_count(engine: Engine) -> None:
    res = run(engine, crs_patient().bundle())
    (row,) = [r for r in episode_rows(res) if r["toxicity"] == "crs"]
    (cell,) = [c for c in table_rows(res) if c[2] == "crs"]
    assert cell[6] == str(row["days_assessed"])
    assert "days assessed:" in cohort_totals(res)[-1]


@pytest.mark.parametrize(("identifier", "name", "label"), [
    pytest.param(True, "p1.json", "MRN-p1", id="identifier"),
    pytest.param(False, "p1.json", "p1.json", id="file-name"),
    pytest.param(False, "all.ndjson", "p1", id="id-when-the-file-is-shared"),
])
def test_patient_label(engine: Engine, identifier: bool, name: str, label: str) -> None:
    b = crs_patient()
    if not identifier:
        del b.resources[0]["identifier"]
    if name.endswith(".ndjson"):
        data = b"\n".join(orjson.dumps(r) for r in b.resources)
    else:
        data = orjson.dumps(b.bundle())
    res = engine.grade(read_bytes(data, name))
    assert {c[0] for c in table_rows(res)} == {label}


def test_mrn_is_preferred_to_other_identifiers(engine: Engine) -> None:
    b = crs_patient()
    b.resources[0]["identifier"].append({"type": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}, "value": "00042"})
    assert {c[0] for c in table_rows(run(engine, b.bundle()))} == {"00042"}


def test_cohort_totals(engine: Engine) -> None:
    bundle = crs_patient("p1").bundle()
    bundle["entry"] += crs_patient("p2").bundle()["entry"]
    for e in bundle["entry"][len(bundle["entry"]) // 2:]:
        res = e["resource"]
        if res["resourceType"] != "Patient":
            res["id"] = "p2-" + res["id"]
    res = run(engine, bundle)
    totals = cohort_totals(res)
    assert totals[0] == "cohort: 2 patients, 2 infusions graded"
    assert "  crs: 2 episodes (grade 1: 2)" in totals and "  icans: 0 episodes; none 2" in totals
    text = render_table(table_rows(res, "brief"), totals)
    assert "icans" not in text.split("cohort:")[0]  # brief: only grades >= 1 and undecided results


def test_cli_table_modes(tmp_path: Path) -> None:
    inp = write(tmp_path / "p1.json", crs_patient().bundle())
    full = cli("grade", str(inp), "-o", str(tmp_path / "o.json"))
    brief = cli("grade", str(inp), "-o", str(tmp_path / "o.json"), "--table", "brief")
    none = cli("grade", str(inp), "-o", str(tmp_path / "o.json"), "--table", "none")
    assert full.returncode == brief.returncode == none.returncode == 0
    assert "neurotoxicity-other" in full.stderr and "neurotoxicity-other  none" not in brief.stderr
    assert "cohort: 1 patient, 1 infusion graded" in brief.stderr
    assert "onset day" not in none.stderr and "cohort:" not in none.stderr and "patients: 1 read" in none.stderr
