"""Issue 14 item 3: the clinician's grade is what summaries, registry rows, the terminal table and CDS cards
show, with cart-fhir's differing computation beside it (reviews.py).

The inputs are built from a real graded run: grade an example, give our results server ids and the
content-hash tag write-back puts on them, change one like a clinician would (refute, confirm, edit the grade),
and feed them back with the original input. Then the same against the real FHIR test server.
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from helpers import run
from test_remote_integration import crs_patient, grade, seed
from test_write_corrections import _all

from cart_fhir.constants import COND_VERIFICATION, CS_GRADE
from cart_fhir.ours import content_hash, is_ours
from cart_fhir.pipeline import Engine, RunResult
from cart_fhir.registry import registry_rows
from cart_fhir.remote.changes import with_hash
from cart_fhir.service.cards import criteria_of, toxicity_cards
from cart_fhir.summary import cohort_totals, episode_rows, table_rows

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "crs-grade2-tocilizumab.json"
RECORDED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
Edit = Callable[[dict[str, Any]], None]


def _crs_condition(r: dict[str, Any]) -> bool:
    return r["resourceType"] == "Condition" and r["code"]["coding"][0]["code"] == "crs"


def refute(cond: dict[str, Any]) -> None:
    cond["verificationStatus"] = {"coding": [{"system": COND_VERIFICATION, "code": "refuted", "display": "Refuted"}]}


def confirm(cond: dict[str, Any]) -> None:
    cond["verificationStatus"] = {"coding": [{"system": COND_VERIFICATION, "code": "confirmed",
                                              "display": "Confirmed"}]}


def grade_3(cond: dict[str, Any]) -> None:
    for c in cond["stage"][0]["summary"]["coding"]:
        if c["system"] == CS_GRADE:
            c.update(code="3", display="Grade 3")


def _written_back(engine: Engine, source: dict[str, Any], edit: Edit | None,
                  target: Callable[[dict[str, Any]], bool] = _crs_condition) -> dict[str, Any]:
    """The input plus our results as a server holds them after write-back (ids, content-hash tags), the CRS
    Condition (or what `target` picks) changed by `edit`."""
    result = engine.grade(_items(source))
    bundle = engine.bundle(engine.resources(result, RECORDED))
    entries = []
    for i, e in enumerate(bundle["entry"]):
        res = copy.deepcopy(e["resource"])
        if res["resourceType"] == "Device":
            continue
        res["id"] = f"ours-{i}"
        res = with_hash(res, content_hash(res))
        if edit is not None and target(res):
            edit(res)
        entries.append({"fullUrl": e["fullUrl"], "resource": res})
    return {**source, "entry": [*source["entry"], *entries]}


def _items(bundle: dict[str, Any]) -> Any:
    from cart_fhir.ingest.read import read_bytes

    return read_bytes(orjson.dumps(bundle), "in.json")


@pytest.fixture(scope="module")
def source() -> dict[str, Any]:
    return orjson.loads(EXAMPLE.read_bytes())


def _crs_rows(result: RunResult) -> list[dict[str, Any]]:
    return [r for r in episode_rows(result) if r["toxicity"] == "crs"]


def _registry(result: RunResult) -> dict[str, str]:
    [row] = registry_rows(result.patients[0], result.tables, result.reviews)
    return row


def _crs_table(result: RunResult) -> list[str]:
    return [cells[3] for cells in table_rows(result) if cells[2] == "crs"]


def test_our_results_in_the_input_change_nothing_until_a_clinician_changes_them(engine, source):
    """Untouched results of ours read back (as from $everything): same grades, rows, table and registry; they
    are neither input findings nor a clinician's attribution (our Condition lists evidence.detail)."""
    plain = run(engine, source)
    again = engine.grade(_items(_written_back(engine, source, None)))
    assert again.reviews == {}
    assert episode_rows(again) == episode_rows(plain)
    assert table_rows(again) == table_rows(plain)
    assert _registry(again) == _registry(plain)
    assert again.patients[0].patient.attributions == {}
    assert again.report.resources_used == plain.report.resources_used
    assert again.report.ignored["Condition of cart-fhir's own (a result, not input)"] == 1
    assert engine.bundle(engine.resources(again, RECORDED)) == engine.bundle(engine.resources(plain, RECORDED))


def test_a_confirmed_condition_of_ours_is_not_read_as_an_attribution(engine, source):
    """A Condition coded as a CAR-T toxicity with evidence.detail is how a clinician attributes findings
    (ingest/extract.py _attribution); ours must never count as one, confirmed or not."""
    again = engine.grade(_items(_written_back(engine, source, confirm)))
    assert again.patients[0].patient.attributions == {}
    assert list(again.reviews.values())[0].verdict == "confirmed"


@pytest.mark.parametrize(("edit", "shown", "verdict", "table", "registry"), [
    pytest.param(refute, None, "refuted", "refuted by a clinician (cart-fhir computes grade 2)",
                 {"f4100_q80_crs": "no", "crs_max_grade": "0", "crs_max_grade_computed": "2", "crs_review": "refuted",
                  "f4100_q82_crs_diagnosis_date": "not applicable",
                  "clinician_reviews": "crs day 2: refuted by a clinician (cart-fhir computes grade 2)"},
                 id="refuted-not-an-active-toxicity"),
    pytest.param(confirm, 2, "confirmed", "grade 2 (confirmed by a clinician; cart-fhir computes grade 2)",
                 {"f4100_q80_crs": "yes", "crs_max_grade": "2", "crs_max_grade_computed": "2",
                  "crs_review": "confirmed",
                  "clinician_reviews": "crs day 2: grade 2 (confirmed by a clinician; cart-fhir computes grade 2)"},
                 id="confirmed"),
    pytest.param(grade_3, 3, "edited", "grade 3 (edited by a clinician; cart-fhir computes grade 2)",
                 {"f4100_q80_crs": "yes", "crs_max_grade": "3", "crs_max_grade_computed": "2", "crs_review": "edited",
                  "clinician_reviews": "crs day 2: grade 3 (edited by a clinician; cart-fhir computes grade 2)"},
                 id="grade-edited"),
])
def test_the_clinicians_grade_is_shown_with_ours_beside_it(engine, source, edit, shown, verdict, table, registry):
    result = engine.grade(_items(_written_back(engine, source, edit)))
    [row] = _crs_rows(result)
    assert (row["max_grade"], row["computed_max_grade"], row["review"]) == (shown, 2, verdict)
    assert row["reviewed_result"].startswith("Condition/ours-") and row["max_grade_is_lower_bound"] is False
    assert _crs_table(result) == [table]
    reg = _registry(result)
    assert {k: reg[k] for k in registry} == registry
    assert reg["icans_review"] == "not reviewed"
    totals = "\n".join(cohort_totals(result))
    assert ("crs: 0 episodes; refuted by a clinician 1" in totals) if verdict == "refuted" else \
        (f"crs: 1 episode (grade {shown}: 1)" in totals)
    # what is written back is unchanged: the resources built are cart-fhir's own computation
    assert engine.bundle(engine.resources(result, RECORDED)) == \
        engine.bundle(engine.resources(run(engine, source), RECORDED))


def test_a_reviewed_result_no_longer_computed_keeps_its_row(engine, source):
    """The data changed since the clinician's review (here: the Condition's key no longer matches an episode):
    the clinician's word is still shown, with what cart-fhir computes now."""
    def moved(cond: dict[str, Any]) -> None:
        confirm(cond)
        grade_3(cond)
        cond["identifier"][0]["value"] = "0" * 32

    result = engine.grade(_items(_written_back(engine, source, moved)))
    rows = _crs_rows(result)
    assert [(r["max_grade"], r.get("review")) for r in rows] == [(2, None), (3, "confirmed")]
    gone = rows[1]
    assert gone["computed"] == "cart-fhir no longer computes it from the current data"
    assert gone["infusion_number"] == 1 and gone["onset_day"] == 2
    assert _crs_table(result) == [
        "grade 2", "grade 3 (confirmed by a clinician; cart-fhir no longer computes it from the current data)"]
    reg = _registry(result)
    assert reg["crs_max_grade"] == "2" and reg["crs_review"] == "not reviewed"  # the computed episode stands
    assert reg["clinician_reviews"] == ("crs day 2: grade 3 (confirmed by a clinician; cart-fhir no longer "
                                        "computes it from the current data)")


def _crs_event(r: dict[str, Any]) -> bool:
    return r["resourceType"] == "AdverseEvent" and r["event"]["coding"][0]["code"] == "crs"


def ae_grade_3(event: dict[str, Any]) -> None:
    for ext in event["extension"]:
        for c in ext.get("valueCodeableConcept", {}).get("coding", []):
            if c["system"] == CS_GRADE:
                c.update(code="3", display="Grade 3")


def test_an_adverse_event_of_ours_a_clinician_regraded_reviews_its_episode(engine, source):
    """Our AdverseEvents come back in the input too: one regraded (or its outcome or seriousness edited) is a
    review of the episode Condition it results in, shown with our computation beside it."""
    result = engine.grade(_items(_written_back(engine, source, ae_grade_3, _crs_event)))
    [row] = _crs_rows(result)
    assert (row["max_grade"], row["computed_max_grade"], row["review"]) == (3, 2, "edited")
    assert row["reviewed_result"].startswith("AdverseEvent/ours-")
    assert _crs_table(result) == ["grade 3 (edited by a clinician; cart-fhir computes grade 2)"]
    assert result.report.ignored["AdverseEvent of cart-fhir's own (a result, not input)"] == 1
    assert engine.bundle(engine.resources(result, RECORDED)) == \
        engine.bundle(engine.resources(run(engine, source), RECORDED))


def test_the_conditions_own_review_outweighs_an_edited_adverse_event(engine, source):
    def edit(r: dict[str, Any]) -> None:
        (refute if r["resourceType"] == "Condition" else ae_grade_3)(r)

    result = engine.grade(_items(_written_back(engine, source, edit, lambda r: _crs_condition(r) or _crs_event(r))))
    [row] = _crs_rows(result)
    assert (row["max_grade"], row["review"]) == (None, "refuted")
    assert row["reviewed_result"].startswith("Condition/ours-")


def test_an_adverse_event_not_ours_is_still_ignored(engine, source):
    foreign = {"resourceType": "AdverseEvent", "id": "ae1", "actuality": "actual",
               "subject": {"reference": source["entry"][0]["fullUrl"]}}
    bundle = {**source, "entry": [*source["entry"], {"fullUrl": "urn:uuid:ae1", "resource": foreign}]}
    result = engine.grade(_items(bundle))
    assert result.reviews == {} and result.report.ignored["AdverseEvent"] == 1


def _cards(engine: Engine, result: RunResult) -> list[dict[str, Any]]:
    pid = result.patients[0].patient.id
    return toxicity_cards(result, today=date(2024, 3, 20), source_url="https://x.test/cds-services",
                          timeline_url="", patient_id=pid, criteria=criteria_of(engine))


@pytest.mark.parametrize(("edit", "summary", "indicator"), [
    pytest.param(refute, "CRS from day 2 refuted by a clinician (cart-fhir computes grade 2)", "info",
                 id="refuted"),
    pytest.param(grade_3, "CRS grade 3 (edited by a clinician; cart-fhir computes grade 2), day 2, resolved day 5",
                 "info", id="edited"),
])
def test_cds_cards_show_the_clinicians_grade(engine, source, edit, summary, indicator):
    plain = next(c for c in _cards(engine, run(engine, source)) if c["source"]["topic"]["code"] == "crs")
    result = engine.grade(_items(_written_back(engine, source, edit)))
    card = next(c for c in _cards(engine, result) if c["source"]["topic"]["code"] == "crs")
    assert card["uuid"] == plain["uuid"]  # the EHR replaces the card it showed
    assert (card["summary"], card["indicator"]) == (summary, indicator)
    assert "- Clinician review: " in card["detail"] and "cart-fhir computes grade 2" in card["detail"]


@pytest.mark.parametrize(("edit", "verdict", "shown", "max_grade"), [
    pytest.param(refute, "refuted", "refuted by a clinician (cart-fhir computes grade 2)",
                 "refuted (clinician review; computed 2)", id="refuted"),
    pytest.param(grade_3, "edited", "grade 3 (edited by a clinician; cart-fhir computes grade 2)",
                 "3 (clinician review; computed 2)", id="edited"),
])
def test_the_timeline_lists_the_review_and_marks_the_max_grade(engine, source, edit, verdict, shown, max_grade):
    from cart_fhir.view.render import patient_views, report_html

    plain = patient_views(engine, run(engine, source))
    assert plain[0].courses[0].reviews == [] and 'class="card reviews"' not in report_html(plain)
    [view] = patient_views(engine, engine.grade(_items(_written_back(engine, source, edit))))
    [course] = view.courses
    [row] = course.reviews
    assert (row.toxicity, row.onset_day, row.verdict, row.shown) == ("crs", 2, verdict, shown)
    assert course.max_grades["crs"] == max_grade
    assert course.max_grades["icans"] == plain[0].courses[0].max_grades["icans"]
    html = report_html([view])
    assert f'<tr data-review="{verdict}" data-toxicity="crs">' in html and shown in html


def test_is_ours_reads_only_our_identifier_systems():
    assert is_ours({"identifier": [{"system": "https://cart-fhir.org/fhir/identifier/toxicity-episode",
                                    "value": "a"}]})
    assert not is_ours({"identifier": [{"system": "https://hospital.example/ids", "value": "a"}]})
    assert not is_ours({"identifier": {"system": 5}}) and not is_ours({})


# ---- against the real FHIR test server ----------------------------------------------------------------


def edit_on_server(fhir: Any, stored: dict[str, Any], edit: Edit) -> requests.Response:
    """A clinician's edit of our result on the server: `edit` on a copy, PUT back. An EHR's edit keeps the
    resource's tags (R4 meta.tag is kept across versions unless removed); one that drops our content-hash tag
    is kept by write-back too (test_write_corrections.py)."""
    edited = copy.deepcopy(stored)
    edit(edited)
    edited["meta"] = {"tag": stored["meta"]["tag"]}
    reply = requests.put(f"{fhir.base_url}/{stored['resourceType']}/{stored['id']}", json=edited, timeout=30,
                         headers={"Content-Type": "application/fhir+json"})
    assert reply.status_code == 200, reply.text[:300]
    return reply


def test_a_clinicians_edit_on_the_server_is_what_the_next_run_shows(fhir, tmp_path, capsys):
    """Write back, a clinician changes the CRS grade on the server, `grade --server` again: summary, table
    and registry show the clinician's grade with cart-fhir's beside it; nothing of theirs is overwritten."""
    seed(fhir, crs_patient("p1"))
    assert grade(fhir, "--patient", "p1", "--write-back") == 0
    [cond] = [c for c in _all(fhir, "Condition") if c["code"]["coding"][0]["code"] == "crs"]
    ours = next(c["code"] for c in cond["stage"][0]["summary"]["coding"] if c["system"] == CS_GRADE)
    edit_on_server(fhir, cond, grade_3)
    capsys.readouterr()
    summary, registry = tmp_path / "s.json", tmp_path / "r.csv"
    assert main_grade(fhir, "--patient", "p1", "--write-back", "--summary-json", str(summary),
                      "--registry-csv", str(registry)) == 0
    err = capsys.readouterr().err
    assert f"Condition/{cond['id']}: changed on the server by someone else, kept (grade 3)" in err
    assert f"grade 3 (edited by a clinician; cart-fhir computes grade {ours})" in err  # the terminal table
    [row] = [r for r in orjson.loads(summary.read_bytes()) if r["toxicity"] == "crs"]
    assert (row["max_grade"], row["computed_max_grade"], row["review"]) == (3, int(ours), "edited")
    assert row["reviewed_result"] == f"Condition/{cond['id']}"
    [reg] = list(csv.DictReader(registry.read_text().splitlines()))
    assert (reg["crs_max_grade"], reg["crs_max_grade_computed"], reg["crs_review"]) == ("3", ours, "edited")
    [kept] = [c for c in _all(fhir, "Condition") if c["id"] == cond["id"]]
    assert kept["meta"]["versionId"] != cond["meta"]["versionId"]  # the clinician's version ...
    assert next(c["code"] for c in kept["stage"][0]["summary"]["coding"] if c["system"] == CS_GRADE) == "3"


def main_grade(fhir: Any, *args: str) -> int:
    from cart_fhir.cli import main

    return main(["grade", "--server", fhir.base_url, *args])


def test_an_adverse_event_regraded_on_the_server_is_what_the_next_run_shows(fhir, tmp_path):
    """The AdverseEvents $everything returns reach the reviews too (remote/read.py keeps our results of types
    the grading does not read otherwise)."""
    seed(fhir, crs_patient("p2"))
    assert grade(fhir, "--patient", "p2", "--write-back") == 0
    [event] = [e for e in _all(fhir, "AdverseEvent") if e["subject"]["reference"] == "Patient/p2"
               and e["event"]["coding"][0]["code"] == "crs"]
    edit_on_server(fhir, event, ae_grade_3)
    summary = tmp_path / "s.json"
    assert main_grade(fhir, "--patient", "p2", "--summary-json", str(summary)) == 0
    [row] = [r for r in orjson.loads(summary.read_bytes()) if r["toxicity"] == "crs"]
    assert (row["max_grade"], row["review"], row["reviewed_result"]) == (3, "edited", f"AdverseEvent/{event['id']}")
