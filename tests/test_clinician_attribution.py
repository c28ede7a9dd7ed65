"""Clinician attribution on input (grading.md decision 9; README "Clinician attribution"): a clinician's
Condition lists findings in `evidence.detail`. Coded as a CAR-T toxicity it confirms them (`car-t-related`:
the `attribution-unconfirmed` flag is cleared); any other diagnosis explains them (`other-cause`: they are left
out of the CRS, ICANS, IEC-HS, ICAHT and infection grades, with the reason and the Condition in the evidence).
"""

from __future__ import annotations

from typing import Any

import pytest
from fhirbuild import PatientBuilder
from helpers import daily, run

from cart_fhir.grading.result import Toxicity

ICD = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"
VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


def clinician(b: PatientBuilder, findings: list[dict[str, Any]], text: str, coding: tuple[str, str] | None = None,
              day: int = 1, verification: str = "confirmed") -> dict[str, Any]:
    code: dict[str, Any] = {"text": text}
    if coding:
        code["coding"] = [{"system": coding[0], "code": coding[1], "display": text}]
    res = {"resourceType": "Condition", "id": b._id("dx"), "subject": b.subject(), "code": code,
           "verificationStatus": {"coding": [{"system": VER, "code": verification}]},
           "onsetDateTime": b.at(day, "12:00"),
           "evidence": [{"detail": [{"reference": f"{f['resourceType']}/{f['id']}"} for f in findings]}]}
    b.resources.append(res)
    return res


def test_fever_explained_by_sepsis_is_left_out_of_crs(engine) -> None:
    b = PatientBuilder()
    fever = b.temp(1, "08:00", 38.9)
    b.temp(1, "20:00", 37.2)
    dx = clinician(b, [fever], "Sepsis", (SCT, "91302008"))
    res = run(engine, b.bundle())
    assert daily(res, "crs")[1] == ("graded", 0)
    day = res.patients[0].courses[0].days[Toxicity.CRS][0]
    assert f"Condition/{dx['id']}" in day.evidence
    assert any("left out: a clinician attributes it to Sepsis" in r for r in day.reasons)
    # the sepsis itself is still an infection event (its own Condition is never "another cause" of it)
    assert [e.toxicity for e in res.patients[0].courses[0].events] == [Toxicity.INFECTION]


def test_unattributed_fever_is_crs_with_the_flag(engine) -> None:
    b = PatientBuilder()
    b.temp(1, "08:00", 38.9)
    res = run(engine, b.bundle())
    day = res.patients[0].courses[0].days[Toxicity.CRS][0]
    assert (day.grade, "attribution-unconfirmed" in day.flags) == (1, True)


@pytest.mark.parametrize("coding", [
    pytest.param((ICD, "D89.832"), id="icd10cm-crs-grade2"),
    pytest.param(("https://cart-fhir.org/fhir/CodeSystem/cart-toxicity", "crs"), id="cart-toxicity-crs"),
])
def test_car_t_related_clears_the_flag(engine, coding) -> None:
    b = PatientBuilder()
    fever = b.temp(1, "08:00", 38.9)
    dx = clinician(b, [fever], "Cytokine release syndrome", coding)
    res = run(engine, b.bundle())
    day = res.patients[0].courses[0].days[Toxicity.CRS][0]
    assert day.grade == 1 and "attribution-unconfirmed" not in day.flags
    assert f"Condition/{dx['id']}" in day.evidence


def test_refuted_attribution_counts_for_nothing(engine) -> None:
    b = PatientBuilder()
    fever = b.temp(1, "08:00", 38.9)
    clinician(b, [fever], "Sepsis", (SCT, "91302008"), verification="refuted")
    assert daily(run(engine, b.bundle()), "crs")[1] == ("graded", 1)


def test_low_ice_explained_by_sedation_is_left_out_of_icans(engine) -> None:
    b = PatientBuilder()
    low = b.ice(3, "08:00", 2)
    b.ice(3, "20:00", 10)
    clinician(b, [low], "Sedation with propofol for a procedure", day=3)
    assert daily(run(engine, b.bundle()), "icans")[3] == ("graded", 0)


def test_late_anc_explained_by_marrow_relapse_is_left_out_of_icaht(engine) -> None:
    b = PatientBuilder()
    for day in range(0, 31, 3):
        b.lab("anc", day, "06:00", 2.0, "10*3/uL")  # type: ignore[attr-defined]
    lows = [b.lab("anc", day, "06:00", 0.8, "10*3/uL") for day in (40, 50)]  # type: ignore[attr-defined]
    for day in range(60, 101, 10):
        b.lab("anc", day, "06:00", 2.0, "10*3/uL")  # type: ignore[attr-defined]

    def late_grade(res: Any) -> int | None:
        cr = res.patients[0].courses[0]
        late = [a.value for a in (*cr.assessments, *(e.assessment for e in cr.events if e.assessment))
                if a.code == "icaht-grade-late"]
        return late[0] if late else None

    assert late_grade(run(engine, b.bundle())) == 2
    clinician(b, lows, "Relapse of lymphoma in the bone marrow", day=50)
    assert late_grade(run(engine, b.bundle())) == 0


def test_culture_called_a_contaminant_is_not_an_infection(engine) -> None:
    b = PatientBuilder()
    culture = b.obs({"system": "http://loinc.org", "code": "600-7"}, 5, "09:00", "culture", category="laboratory",
                    valueCodeableConcept={"text": "Staphylococcus epidermidis"})
    assert [e.toxicity for e in run(engine, b.bundle()).patients[0].courses[0].events] == [Toxicity.INFECTION]
    clinician(b, [culture], "Contaminated blood culture", day=6)
    assert [e.toxicity for e in run(engine, b.bundle()).patients[0].courses[0].events] == []
