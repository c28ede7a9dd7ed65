"""Day 0 and courses (input-contract.md Day 0; grading.md 0.1): offsets, fractions, re-infusion."""

from __future__ import annotations

from fhirbuild import PatientBuilder
from helpers import daily, run


def test_same_infusion_recorded_twice_is_one_course(engine) -> None:
    b = PatientBuilder()
    b.infusion_procedure(0, "10:05")  # the EHR also coded the act as CPT 38228
    b.temp(1, "08:00", 38.4)
    res = run(engine, b.bundle())
    assert len(res.patients[0].courses) == 1
    assert daily(res, "crs") == {1: ("graded", 1)}


def test_split_dose_over_three_days_is_one_course_with_day0_the_first_fraction(engine) -> None:
    b = PatientBuilder()
    b.infusion_medication(1, "10:00")
    b.infusion_medication(2, "10:00")
    b.temp(3, "08:00", 38.4)
    res = run(engine, b.bundle())
    assert len(res.patients[0].courses) == 1
    assert daily(res, "crs") == {3: ("graded", 1)}


def test_reinfusion_starts_a_new_axis(engine) -> None:
    b = PatientBuilder()
    b.temp(2, "08:00", 38.4)
    b.temp(3, "08:00", 37.0)
    b.infusion_medication(40, "10:00")
    b.temp(41, "08:00", 38.9)
    res = run(engine, b.bundle())
    assert len(res.patients[0].courses) == 2
    assert daily(res, "crs", course=0) == {2: ("graded", 1), 3: ("graded", 0)}
    assert daily(res, "crs", course=1) == {1: ("graded", 1)}


def test_day_number_in_the_infusions_own_offset(engine) -> None:
    b = PatientBuilder(tz="-05:00", infusion_time="22:30")
    # 2024-05-02T02:00Z is 2024-05-01T21:00-05:00: still day 0, before the infusion: not counted;
    # 2024-05-02T04:00Z is 23:00-05:00 on day 0, after the infusion.
    b.temp_raw(0, "23:00", {"value": 38.3, "unit": "Cel", "code": "Cel"})
    b.resources[-1]["effectiveDateTime"] = "2024-05-02T04:00:00Z"
    b.temp(1, "08:00", 36.9)
    res = run(engine, b.bundle())
    assert daily(res, "crs") == {0: ("graded", 1), 1: ("graded", 0)}


def test_patient_known_only_by_urn_uuid_is_referenced_by_identifier(engine) -> None:
    from helpers import RECORDED

    b = PatientBuilder()
    b.temp(1, "08:00", 38.5)
    bundle = b.bundle()
    patient = bundle["entry"][0]
    del patient["resource"]["id"]
    patient["fullUrl"] = "urn:uuid:2a1f0d6e-0000-4000-8000-000000000001"
    for e in bundle["entry"][1:]:
        e["resource"]["subject"] = {"reference": patient["fullUrl"]}
    res = run(engine, bundle)
    out = engine.resources(res, RECORDED)
    obs = next(w.resource for w in out if w.resource["resourceType"] == "Observation")
    assert obs["subject"] == {"identifier": {"system": "https://example.org/mrn", "value": "MRN-p1"},
                              "type": "Patient"}
