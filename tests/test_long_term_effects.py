"""IAGO long-term effects (issue 16), case by case: hypogammaglobulinemia, B-cell aplasia, second primary
malignancy, prolonged cytopenia beyond day 100. Both sides of every threshold; each case names the table rows
it covers (mappings/hypogammaglobulinemia.yaml, b-cell-aplasia.yaml, second-malignancy.yaml,
prolonged-cytopenia.yaml) and a meta-test checks every row has a case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fhirbuild import PatientBuilder
from helpers import RECORDED, run

from cart_fhir.grading.bcell_aplasia import AplasiaTable
from cart_fhir.grading.hypogamma import HypogammaTable
from cart_fhir.grading.late_cytopenia import CytopeniaTable
from cart_fhir.grading.registry import load_all
from cart_fhir.grading.result import Toxicity
from cart_fhir.summary import episode_rows
from cart_fhir.validate import validate_resources

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"


def igg(b: PatientBuilder, day: int, value: float, unit: str = "mg/dL", comparator: str | None = None) -> Any:
    return b.lab("igg", day, "08:00", value, unit, comparator=comparator)  # type: ignore[attr-defined]


def cd19(b: PatientBuilder, day: int, value: float) -> Any:
    return b.lab("cd19-b-cells", day, "08:00", value, "/uL")  # type: ignore[attr-defined]


def ivig(b: PatientBuilder, day: int) -> Any:
    return b.medication("Privigen (immune globulin intravenous)", day, "10:00")  # type: ignore[attr-defined]


def malignancy(b: PatientBuilder, day: int, code: str | None, display: str, system: str = ICD) -> Any:
    res: dict[str, Any] = {"resourceType": "Condition", "id": b._id("cancer"), "subject": b.subject(),
                           "code": {"text": display, **({"coding": [{"system": system, "code": code,
                                                                      "display": display}]} if code else {})},
                           "onsetDateTime": b.at(day, "09:00")}
    b.resources.append(res)
    return res


def case(cid: str, covers: list[str], tox: str, build: Callable[[PatientBuilder], Any],
         expected: list[dict[str, Any]]) -> Any:
    return pytest.param(covers, tox, build, expected, id=cid)


def rows_of(res: Any, tox: str) -> list[dict[str, Any]]:
    return [r for r in episode_rows(res) if r["toxicity"] == tox]


H, B, S, P = "hypogammaglobulinemia", "b-cell-aplasia", "second-malignancy", "prolonged-cytopenia"
CASES = [
    # --- hypogammaglobulinemia: IgG <= 400 mg/dL (Hill 2019 via PMC11272770 Table 1), both sides
    case("igg-399-severe", ["igg-severe-le-400", "follow-up"], H, lambda b: igg(b, 60, 399),
         [{"onset_day": 60, "nadir_igg_mg_dl": 399, "replacement": False, "max_grade": None}]),
    case("igg-400-severe-inclusive", ["igg-severe-le-400"], H, lambda b: igg(b, 60, 400),
         [{"onset_day": 60, "nadir_igg_mg_dl": 400, "replacement": False}]),
    case("igg-401-not-severe", ["igg-severe-le-400"], H, lambda b: igg(b, 60, 401), []),
    case("igg-4.0-g-per-l-converted", ["igg-severe-le-400"], H, lambda b: igg(b, 60, 4.0, "g/L"),
         [{"onset_day": 60, "nadir_igg_mg_dl": 400}]),
    case("igg-below-500-bound-straddles-undecided", ["igg-severe-le-400"], H,
         lambda b: igg(b, 60, 500, comparator="<"), []),
    case("igg-day0-is-baseline-not-counted", ["follow-up"], H, lambda b: igg(b, 0, 300), []),
    case("igg-low-with-ivig-replacement", ["igg-severe-le-400", "follow-up"], H,
         lambda b: (igg(b, 60, 350), ivig(b, 62), igg(b, 80, 250)),
         [{"onset_day": 60, "nadir_igg_mg_dl": 250, "replacement": True}]),
    case("igg-recovery-masked-by-ivig-then-real", ["follow-up"], H,
         lambda b: (igg(b, 60, 350), ivig(b, 62), igg(b, 70, 700), igg(b, 120, 650)),
         [{"onset_day": 60, "resolution_day": 120, "replacement": True}]),
    case("igg-recovers-and-drops-again-two-periods", ["igg-severe-le-400"], H,
         lambda b: (igg(b, 30, 380), igg(b, 90, 600), igg(b, 200, 390)),
         [{"onset_day": 30, "resolution_day": 90}, {"onset_day": 200, "resolution_day": None}]),
    # --- B-cell aplasia: CD19+ < 20 /uL (UNVERIFIED row), both sides
    case("cd19-19-aplasia", ["cd19-below-20", "follow-up"], B, lambda b: cd19(b, 30, 19),
         [{"onset_day": 30, "duration_days": 0, "max_grade": None}]),
    case("cd19-20-not-aplasia", ["cd19-below-20"], B, lambda b: cd19(b, 30, 20), []),
    case("cd19-21-not-aplasia", ["cd19-below-20"], B, lambda b: cd19(b, 30, 21), []),
    case("cd19-aplasia-recovers-day-180", ["cd19-below-20", "follow-up"], B,
         lambda b: (cd19(b, 30, 0), cd19(b, 90, 2), cd19(b, 180, 60)),
         [{"onset_day": 30, "duration_days": 150, "resolution_day": 180}]),
    case("cd19-aplasia-persists-one-year", ["follow-up"], B,
         lambda b: (cd19(b, 30, 0), cd19(b, 365, 3)),
         [{"onset_day": 30, "duration_days": 335, "resolution_day": None}]),
    case("cd19-day0-baseline-not-counted", ["follow-up"], B, lambda b: cd19(b, 0, 5), []),
    # --- second primary malignancy
    case("vignette-t-cell-lymphoma-two-years-after", ["icd-c84-t-nk-lymphoma", "t-cell-fda-2024"], S,
         lambda b: malignancy(b, 730, "C84.40", "Peripheral T-cell lymphoma, not classified, unspecified site"),
         [{"onset_day": 730, "lineage": "t-cell", "max_grade": None}]),
    case("other-t-nk-lymphoma-c86", ["icd-c86-other-t-nk-lymphoma", "t-cell-fda-2024"], S,
         lambda b: malignancy(b, 400, "C86.5", "Angioimmunoblastic T-cell lymphoma"), [{"lineage": "t-cell"}]),
    case("atll-c91.5", ["icd-c91-5-atll"], S, lambda b: malignancy(b, 400, "C91.50", "Adult T-cell lymphoma/leukemia"),
         [{"lineage": "t-cell"}]),
    case("t-pll-c91.6", ["icd-c91-6-t-pll"], S,
         lambda b: malignancy(b, 400, "C91.60", "Prolymphocytic leukemia of T-cell type"), [{"lineage": "t-cell"}]),
    case("t-cell-lymphoma-snomed-by-name", ["text-t-cell"], S,
         lambda b: malignancy(b, 500, "1234567", "CAR-positive T-cell lymphoma", system=SCT), [{"lineage": "t-cell"}]),
    case("mds-d46", ["icd-d46-mds", "myeloid-neoplasm"], S,
         lambda b: malignancy(b, 300, "D46.9", "Myelodysplastic syndrome, unspecified"), [{"lineage": "myeloid"}]),
    case("aml-c92.0", ["icd-c92-myeloid-leukemia", "myeloid-neoplasm"], S,
         lambda b: malignancy(b, 300, "C92.00", "Acute myeloblastic leukemia, not having achieved remission"),
         [{"lineage": "myeloid"}]),
    case("monocytic-leukemia-c93", ["icd-c93-monocytic-leukemia"], S,
         lambda b: malignancy(b, 300, "C93.00", "Acute monoblastic/monocytic leukemia"), [{"lineage": "myeloid"}]),
    case("aml-text-only", ["text-myeloid"], S, lambda b: malignancy(b, 300, None, "Acute myeloid leukemia"),
         [{"lineage": "myeloid"}]),
    case("lung-cancer-other", ["icd-c-malignant"], S,
         lambda b: malignancy(b, 600, "C34.90", "Malignant neoplasm of unspecified part of bronchus or lung"),
         [{"lineage": "other", "onset_day": 600}]),
    case("metastasis-c78-not-a-new-primary", ["icd-c-malignant"], S,
         lambda b: malignancy(b, 600, "C78.00", "Secondary malignant neoplasm of lung"), []),
    case("treated-lymphoma-relapse-not-second", ["icd-c-malignant"], S,
         lambda b: (malignancy(b, -200, "C83.30", "Diffuse large B-cell lymphoma"),
                    malignancy(b, 300, "C83.38", "Diffuse large B-cell lymphoma, multiple sites")), []),
    case("malignancy-before-infusion-not-reported", ["icd-c84-t-nk-lymphoma"], S,
         lambda b: malignancy(b, -30, "C84.40", "Peripheral T-cell lymphoma"), []),
    # --- prolonged cytopenia beyond day 100 (CTCAE v5.0 grade 3-4), both sides
    case("anc-900-day-100-not-counted", ["window"], P, lambda b: b.lab("anc", 100, "08:00", 900, "/uL"), []),
    case("anc-900-day-101-grade3", ["window", "anc-grade3"], P, lambda b: b.lab("anc", 101, "08:00", 900, "/uL"),
         [{"onset_day": 101, "lineages": ["neutrophils"], "max_grade": 3}]),
    case("anc-1000-not-below", ["anc-grade3"], P, lambda b: b.lab("anc", 150, "08:00", 1000, "/uL"), []),
    case("vignette-cytopenia-day-150-anc-400-grade4", ["anc-grade4"], P,
         lambda b: b.lab("anc", 150, "08:00", 0.4, "10*3/uL"),
         [{"onset_day": 150, "lineages": ["neutrophils"], "max_grade": 4}]),
    case("anc-500-grade3-not-4", ["anc-grade4", "anc-grade3"], P, lambda b: b.lab("anc", 150, "08:00", 500, "/uL"),
         [{"max_grade": 3}]),
    case("platelets-49999-grade3", ["platelets-grade3"], P,
         lambda b: b.lab("platelets", 150, "08:00", 49999, "/uL"), [{"lineages": ["platelets"], "max_grade": 3}]),
    case("platelets-50000-not-below", ["platelets-grade3"], P,
         lambda b: b.lab("platelets", 150, "08:00", 50, "10*3/uL"), []),
    case("platelets-24999-grade4", ["platelets-grade4"], P,
         lambda b: b.lab("platelets", 150, "08:00", 24999, "/uL"), [{"max_grade": 4}]),
    case("hemoglobin-7.9-grade3", ["hemoglobin-grade3"], P, lambda b: b.lab("hemoglobin", 150, "08:00", 7.9, "g/dL"),
         [{"lineages": ["hemoglobin"], "max_grade": 3}]),
    case("hemoglobin-8.0-not-below", ["hemoglobin-grade3"], P,
         lambda b: b.lab("hemoglobin", 150, "08:00", 80, "g/L"), []),
    case("cytopenia-two-lineages-resolves-with-duration", ["anc-grade3", "platelets-grade4"], P,
         lambda b: (b.lab("anc", 120, "08:00", 800, "/uL"), b.lab("platelets", 130, "08:00", 20000, "/uL"),
                    b.lab("anc", 170, "08:00", 2000, "/uL"), b.lab("platelets", 170, "08:00", 90000, "/uL")),
         [{"onset_day": 120, "lineages": ["neutrophils", "platelets"], "max_grade": 4, "resolution_day": 170}]),
    case("cytopenia-not-resolved-while-a-lineage-unmeasured", ["anc-grade3"], P,
         lambda b: (b.lab("platelets", 120, "08:00", 40000, "/uL"), b.lab("anc", 170, "08:00", 2000, "/uL")),
         [{"onset_day": 120, "resolution_day": None}]),
]


@pytest.mark.parametrize(("covers", "tox", "build", "expected"), CASES)
def test_long_term_effect_case(engine, covers, tox, build, expected) -> None:
    b = PatientBuilder()
    build(b)
    res = run(engine, b.bundle())
    got = rows_of(res, tox)
    assert len(got) == len(expected), got
    for row, want in zip(got, expected, strict=True):
        assert {k: row[k] for k in want} == want


def test_every_long_term_row_has_a_case() -> None:
    t = load_all()
    h, a, c = t.get(HypogammaTable), t.get(AplasiaTable), t.get(CytopeniaTable)
    rows = {h.severe.id, h.settings.id, a.threshold.id, a.settings.id, c.settings.id, *(r.id for r in c.rows),
            *(r.id for r in t.malignancies.rows), *(r.id for r in t.malignancies.actions)}
    covered = {x for p in CASES for x in p.values[0]}
    assert rows - covered == set()
    assert covered - rows == set(), "a case names a row the tables do not have"


def test_summary_rows_have_exactly_the_issue_fields(engine) -> None:
    b = PatientBuilder()
    igg(b, 60, 380)
    cd19(b, 30, 0)
    malignancy(b, 730, "C84.40", "Peripheral T-cell lymphoma")
    b.lab("anc", 150, "08:00", 400, "/uL")  # type: ignore[attr-defined]
    rows = {r["toxicity"]: r for r in episode_rows(run(engine, b.bundle()))}
    base = {"patient", "toxicity", "max_grade", "max_grade_is_lower_bound", "onset_day", "onset", "resolved",
            "resolution_day", "infusion", "infusion_number", "missing_inputs"}
    assert set(rows[H]) == base | {"nadir_igg_mg_dl", "replacement"}
    assert set(rows[B]) == base | {"duration_days"}
    assert set(rows[S]) == base | {"lineage"}
    assert set(rows[P]) == base | {"lineages"}
    assert rows[P]["max_grade"] == 4 and rows[H]["max_grade"] is None


def test_infections_in_the_low_igg_period_are_linked(engine) -> None:
    b = PatientBuilder()
    igg(b, 60, 300)
    pneu = b.coded_condition(SCT, "233604007", 75, "10:00")  # type: ignore[attr-defined]
    zoster = b.coded_condition(SCT, "4740000", 90, "10:00")  # type: ignore[attr-defined]
    igg(b, 120, 500)
    cr = run(engine, b.bundle()).patients[0].courses[0]
    (ev,) = [e for e in cr.events if e.toxicity == Toxicity(H)]
    assert ev.detail("infections") == [f"Condition/{pneu['id']}", f"Condition/{zoster['id']}"]
    assert ev.assessment is not None and "recurrent-infections" in ev.assessment.flags
    assert "serious-infection" not in ev.assessment.flags  # neither treated IV nor with organ support


def test_t_cell_malignancy_actions_reach_report_card_and_adverse_event(engine) -> None:
    b = PatientBuilder()
    malignancy(b, 730, "C84.40", "Peripheral T-cell lymphoma")
    res = run(engine, b.bundle())
    notes = [i.message for i in res.report.issues if i.severity == "information"]
    assert any("CAR transgene" in n and "manufacturer" in n and "life-long" in n for n in notes)
    cr = res.patients[0].courses[0]
    (ev,) = [e for e in cr.events if e.toxicity == Toxicity(S)]
    assert ev.assessment is not None and "t-cell-malignancy-boxed-warning" in ev.assessment.flags
    assert any("CAR transgene" in r for r in ev.assessment.reasons)  # the CDS card's "why" lines
    written = [w.resource for w in engine.resources(res, RECORDED)]
    (ae,) = [r for r in written if r["resourceType"] == "AdverseEvent"
             and r["event"]["coding"][0]["code"] == "second-malignancy"]
    assert ae["seriousness"]["coding"][0]["code"] == "serious"
    assert validate_resources(written) == len(written)


def test_every_effect_validates_against_the_profiles(engine) -> None:
    b = PatientBuilder()
    igg(b, 60, 380)
    ivig(b, 61)
    cd19(b, 30, 0)
    malignancy(b, 300, "D46.9", "Myelodysplastic syndrome")
    b.lab("hemoglobin", 150, "08:00", 7.5, "g/dL")  # type: ignore[attr-defined]
    written = [w.resource for w in engine.resources(run(engine, b.bundle()), RECORDED)]
    assert validate_resources(written) == len(written)


def test_service_run_report_keeps_notices_as_information(engine) -> None:
    from cart_fhir.service.operations import _report_outcome

    b = PatientBuilder()
    malignancy(b, 730, "C84.40", "Peripheral T-cell lymphoma")
    outcome = _report_outcome(run(engine, b.bundle()).report)
    notices = [i for i in outcome["issue"] if "CAR transgene" in i["details"]["text"]]
    assert notices and all(i["severity"] == "information" for i in notices)


def test_serious_infection_in_the_low_igg_period_is_flagged(engine) -> None:
    b = PatientBuilder()
    igg(b, 60, 300)
    pneu = b.coded_condition(SCT, "233604007", 75, "10:00", abatement=(85, "10:00"))  # type: ignore[attr-defined]
    b.medication("vancomycin", 75, "12:00", end=(84, "12:00"), rxnorm="11124",  # type: ignore[attr-defined]
                 route="47625008", reason_ref=f"Condition/{pneu['id']}")
    cr = run(engine, b.bundle()).patients[0].courses[0]
    (ev,) = [e for e in cr.events if e.toxicity == Toxicity(H)]
    assert ev.assessment is not None and "serious-infection" in ev.assessment.flags
    assert ev.detail("infections") == [f"Condition/{pneu['id']}"]


@pytest.mark.parametrize(("tox", "missing"), [
    pytest.param("hypogammaglobulinemia", "serum IgG", id="no-igg-not-assessable"),
    pytest.param("b-cell-aplasia", "CD19+ B-cell count", id="no-cd19-not-assessable"),
    pytest.param("prolonged-cytopenia", "after day 100", id="no-counts-after-day-100-not-assessable"),
])
def test_never_measured_is_not_assessable_not_none(engine, tox, missing) -> None:
    """Decision 2: no IgG, no CD19 count, no blood count after day 100 is 'not assessable' naming the input,
    never a silent 'none' (and no summary row: the effect was not found)."""
    b = PatientBuilder()
    b.temp(1, "08:00", 37.0)
    result = run(engine, b.bundle())
    [cr] = result.patients[0].courses
    [a] = [a for a in cr.assessments if a.toxicity == Toxicity(tox)]
    assert a.state.value == "not-assessable" and a.value is None
    assert any(missing in m for m in a.missing)
    assert not [r for r in episode_rows(result) if r["toxicity"] == tox]
