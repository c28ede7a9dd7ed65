"""ASTCT 2019 CRS, case by case (grading.md 1.1-1.7): both sides of every boundary, by table row.

Each case names the criterion row(s) it covers (`covers`), and a meta-test checks that every row of
mappings/astct-crs-2019.yaml has at least one case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fhirbuild import PatientBuilder
from helpers import daily, episodes, run

from cart_fhir.grading.result import Toxicity
from cart_fhir.tables import load_tables

G, AL, NA = "graded", "at-least", "not-assessable"


def case(cid: str, covers: list[str], build: Callable[[PatientBuilder], Any], day: int,
         expected: tuple[str, int | None], **patient: Any) -> Any:
    return pytest.param(covers, build, day, expected, patient, id=cid)


def fever(b: PatientBuilder, day: int = 1, t: float = 38.6) -> None:
    b.temp(day, "06:00", t)


CASES = [
    # --- fever gate (R1), inclusive 38.0 C, after unit conversion
    case("crs-fever-37.9-grade0", ["fever"], lambda b: b.temp(1, "08:00", 37.9), 1, (G, 0)),
    case("crs-fever-38.0-grade1", ["fever"], lambda b: b.temp(1, "08:00", 38.0), 1, (G, 1)),
    case("crs-fever-100.4F-grade1", ["fever"], lambda b: b.temp(1, "08:00", 100.4, "[degF]", "°F"), 1, (G, 1)),
    case("crs-fever-100.3F-grade0", ["fever"], lambda b: b.temp(1, "08:00", 100.3, "[degF]", "°F"), 1, (G, 0)),
    case("crs-fever-display-unit-F-only", ["fever"],
         lambda b: b.temp_raw(1, "08:00", {"value": 101.0, "unit": "F"}), 1, (G, 1)),
    case("crs-no-temps-not-assessable", ["fever"], lambda b: b.bp(1, "08:00", 120, 80), 1, (NA, None)),
    # --- hypoxia (R5, decision 5)
    case("crs-room-air-fever-grade1", ["oxygen:room-air"],
         lambda b: (fever(b), b.oxygen(1, "09:00", "room-air")), 1, (G, 1)),
    case("crs-lowflow-6L-grade2", ["oxygen:nasal-cannula"],
         lambda b: (fever(b), b.oxygen(1, "09:00", "nasal-cannula", 6)), 1, (G, 2)),
    case("crs-highflow-6.5L-grade3", ["oxygen:nasal-cannula"],
         lambda b: (fever(b), b.oxygen(1, "09:00", "nasal-cannula", 6.5)), 1, (G, 3)),
    case("crs-lowflow-7L-grade3", ["oxygen:nasal-cannula"],
         lambda b: (fever(b), b.oxygen(1, "09:00", "nasal-cannula", 7)), 1, (G, 3)),
    case("crs-flow-without-device-is-cannula-7L-grade3", ["oxygen:nasal-cannula"],
         lambda b: (fever(b), b.flow(1, "09:00", 7)), 1, (G, 3)),
    case("crs-flow-without-device-is-cannula-2L-grade2", ["oxygen:nasal-cannula"],
         lambda b: (fever(b), b.flow(1, "09:00", 2)), 1, (G, 2)),
    case("crs-nc-no-flow-lowerbound2", ["oxygen:nasal-cannula"],
         lambda b: (fever(b), b.oxygen(1, "09:00", "nasal-cannula")), 1, (AL, 2)),
    case("crs-blow-by-grade2", ["oxygen:blow-by"],
         lambda b: (fever(b), b.oxygen(1, "09:00", "blow-by")), 1, (G, 2)),
    case("crs-hfnc-no-flow-grade3", ["oxygen:high-flow-nasal-cannula"],
         lambda b: (fever(b), b.oxygen(1, "09:00", "high-flow-nasal-cannula")), 1, (G, 3)),
    case("crs-hfnc-40L-grade3", ["oxygen:high-flow-nasal-cannula"],
         lambda b: (fever(b), b.oxygen(1, "09:00", "high-flow-nasal-cannula", 40)), 1, (G, 3)),
    case("crs-hfnc-5L-child-graded-by-flow-grade2", ["oxygen:high-flow-nasal-cannula"],
         lambda b: (fever(b), b.oxygen(1, "09:00", "high-flow-nasal-cannula", 5)), 1, (G, 2)),
    case("crs-facemask-2L-grade3", ["oxygen:simple-face-mask"],
         lambda b: (fever(b), b.oxygen(1, "09:00", "simple-face-mask", 2)), 1, (G, 3)),
    case("crs-nonrebreather-grade3", ["oxygen:non-rebreather-mask"],
         lambda b: (fever(b), b.oxygen(1, "09:00", "non-rebreather-mask", 15)), 1, (G, 3)),
    case("crs-venturi-grade3", ["oxygen:venturi-mask"],
         lambda b: (fever(b), b.oxygen(1, "09:00", "venturi-mask")), 1, (G, 3)),
    case("crs-cpap-grade4", ["oxygen:cpap"], lambda b: (fever(b), b.oxygen(1, "09:00", "cpap")), 1, (G, 4)),
    case("crs-bipap-grade4", ["oxygen:bipap"], lambda b: (fever(b), b.oxygen(1, "09:00", "bipap")), 1, (G, 4)),
    case("crs-ventilation-grade4", ["oxygen:mechanical-ventilation"],
         lambda b: (fever(b), b.oxygen(1, "09:00", "mechanical-ventilation")), 1, (G, 4)),
    case("crs-worst-oxygen-of-day-counts", ["oxygen:nasal-cannula", "oxygen:simple-face-mask"],
         lambda b: (fever(b), b.oxygen(1, "09:00", "nasal-cannula", 2), b.oxygen(1, "15:00", "simple-face-mask"),
                    b.oxygen(1, "21:00", "room-air")), 1, (G, 3)),
    # --- hypotension (R3, R4, decision 4)
    case("crs-sbp-89-adult-grade2", ["hypotension:10", "tier:low-blood-pressure"],
         lambda b: (fever(b), b.bp(1, "09:00", 89, 60)), 1, (G, 2)),
    case("crs-sbp-90-adult-grade1", ["hypotension:10", "tier:none"],
         lambda b: (fever(b), b.bp(1, "09:00", 90, 60)), 1, (G, 1)),
    case("crs-map-64-adult-grade2", ["hypotension:10"], lambda b: (fever(b), b.map(1, "09:00", 64)), 1, (G, 2)),
    case("crs-map-65-adult-grade1", ["hypotension:10"], lambda b: (fever(b), b.map(1, "09:00", 65)), 1, (G, 1)),
    case("crs-map-derived-from-panel-grade2", ["hypotension:10"],
         lambda b: (fever(b), b.bp(1, "09:00", 95, 48)), 1, (G, 2)),  # MAP (95 + 96) / 3 = 63.7
    case("crs-child-5y-sbp-79-grade2", ["hypotension:1"],
         lambda b: (fever(b), b.bp(1, "09:00", 79)), 1, (G, 2), birth="2019-01-10"),  # limit 70 + 2 x 5
    case("crs-child-5y-sbp-80-grade1", ["hypotension:1"],
         lambda b: (fever(b), b.bp(1, "09:00", 80)), 1, (G, 1), birth="2019-01-10"),
    case("crs-child-5y-map-60-not-used-grade1", ["hypotension:1"],
         lambda b: (fever(b), b.bp(1, "09:00", 85, 45)), 1, (G, 1), birth="2019-01-10"),
    case("crs-infant-sbp-69-grade2", ["hypotension:0"],
         lambda b: (fever(b), b.bp(1, "09:00", 69)), 1, (G, 2), birth="2023-11-01"),
    case("crs-infant-sbp-70-grade1", ["hypotension:0"],
         lambda b: (fever(b), b.bp(1, "09:00", 70)), 1, (G, 1), birth="2023-11-01"),
    case("crs-1pressor-grade3", ["tier:single-vasopressor"],
         lambda b: (fever(b), b.pressor("norepinephrine", 1, "08:00", 1, "20:00")), 1, (G, 3)),
    case("crs-1pressor-plus-vaso-grade3", ["tier:single-vasopressor"],
         lambda b: (fever(b), b.pressor("norepinephrine", 1, "08:00", 1, "20:00"),
                    b.pressor("vasopressin", 1, "09:00", 1, "19:00")), 1, (G, 3)),
    case("crs-vasopressin-alone-grade3", ["tier:vasopressin-only"],
         lambda b: (fever(b), b.pressor("vasopressin", 1, "09:00", 1, "19:00")), 1, (G, 3)),
    case("crs-2pressors-grade4", ["tier:multiple-vasopressors"],
         lambda b: (fever(b), b.pressor("norepinephrine", 1, "08:00", 1, "20:00"),
                    b.pressor("phenylephrine", 1, "10:00", 1, "12:00")), 1, (G, 4)),
    case("crs-2pressors-not-concurrent-grade3", ["tier:single-vasopressor"],
         lambda b: (fever(b), b.pressor("norepinephrine", 1, "08:00", 1, "10:00"),
                    b.pressor("epinephrine", 1, "14:00", 1, "18:00")), 1, (G, 3)),
    case("crs-dobutamine-is-not-a-pressor-grade1", ["tier:none"],
         lambda b: (fever(b), b.drug("dobutamine", 1, "08:00", end=(1, "20:00"))), 1, (G, 1)),
    case("crs-pressor-running-overnight-counts-next-day", ["tier:single-vasopressor"],
         lambda b: (fever(b), b.pressor("norepinephrine", 1, "20:00", 2, "06:00"), b.temp(2, "08:00", 37.0)),
         2, (G, 3)),
    case("crs-mixed-pressor-lowflow-grade3", ["tier:single-vasopressor", "oxygen:nasal-cannula"],
         lambda b: (fever(b), b.pressor("norepinephrine", 1, "08:00", 1, "20:00"),
                    b.oxygen(1, "09:00", "nasal-cannula", 2)), 1, (G, 3)),
    # --- fever gate inside an episode (R2, decision 3)
    case("crs-afebrile-after-toci-pressor-grade3", ["tier:single-vasopressor"],
         lambda b: (fever(b), b.drug("tocilizumab", 1, "10:00"), b.temp(2, "08:00", 37.2),
                    b.pressor("norepinephrine", 2, "09:00", 2, "18:00")), 2, (G, 3)),
    case("crs-afebrile-after-toci-lowflow-grade2", ["oxygen:nasal-cannula"],
         lambda b: (fever(b), b.drug("tocilizumab", 1, "10:00"), b.temp(2, "08:00", 36.8),
                    b.oxygen(2, "09:00", "nasal-cannula", 3)), 2, (G, 2)),
    case("crs-afebrile-prophylactic-toci-grade0", ["tier:single-vasopressor"],
         lambda b: (b.drug("tocilizumab", 0, "12:00"), b.temp(1, "08:00", 37.1),
                    b.pressor("norepinephrine", 1, "09:00", 1, "12:00")), 1, (G, 0)),
    case("crs-hypoxia-without-fever-outside-episode-grade0", ["oxygen:simple-face-mask"],
         lambda b: (b.temp(1, "08:00", 37.0), b.oxygen(1, "09:00", "simple-face-mask")), 1, (G, 0)),
    case("crs-open-episode-no-temps-not-assessable", ["fever"],
         lambda b: (fever(b), b.bp(2, "08:00", 120, 80)), 2, (NA, None)),
    case("crs-open-episode-no-temps-pressor-grade3", ["tier:single-vasopressor"],
         lambda b: (fever(b), b.pressor("norepinephrine", 2, "08:00", 2, "12:00")), 2, (G, 3)),
    # --- time axis
    case("crs-fever-day-minus-1-no-observation", ["fever"], lambda b: b.temp(-1, "08:00", 39.0), -1,
         ("no-observation", None)),
    case("crs-fever-day0-before-infusion-not-crs", ["fever"], lambda b: b.temp(0, "07:00", 39.0), 0,
         ("no-observation", None)),
    case("crs-fever-day0-after-infusion-grade1", ["fever"], lambda b: b.temp(0, "22:00", 38.2), 0, (G, 1)),
]


@pytest.mark.parametrize(("covers", "build", "day", "expected", "patient"), CASES)
def test_crs_case(engine, covers, build, day, expected, patient) -> None:
    b = PatientBuilder(**patient)
    build(b)
    got = daily(run(engine, b.bundle()), "crs").get(day, ("no-observation", None))
    assert got == expected


def test_every_crs_criterion_row_has_a_case() -> None:
    t = load_tables().crs
    rows = {"fever"} | {f"oxygen:{d.device}" for d in t.oxygen.devices} | \
           {f"tier:{r.tier}" for r in t.hypotension_tiers} | {f"hypotension:{r.from_age}" for r in t.hypotension}
    covered = {c for p in CASES for c in p.values[0]}
    assert rows - covered == set()
    assert covered - rows == set(), "a case names a row the table does not have"


def test_episode_resolves_on_first_quiet_day_and_masking_keeps_it_open(engine) -> None:
    """Decision 8 / output-contract section 2: onset = first fever, resolution = start of first grade-0 day."""
    b = PatientBuilder()
    b.temp(1, "06:00", 37.2)
    b.temp(1, "14:00", 38.4)
    b.temp(2, "08:00", 39.1)
    b.oxygen(2, "09:00", "nasal-cannula", 3)
    b.drug("tocilizumab", 2, "12:00")
    b.temp(3, "08:00", 36.9)
    b.oxygen(3, "09:00", "nasal-cannula", 2)
    b.temp(4, "08:00", 36.8)  # no oxygen record on day 4: nothing documented, CRS signs absent
    b.temp(5, "08:00", 38.3)  # recurrence: a new episode
    res = run(engine, b.bundle())
    assert daily(res, "crs") == {1: (G, 1), 2: (G, 2), 3: (G, 2), 4: (G, 0), 5: (G, 1)}
    assert episodes(res, "crs") == [(1, 2, 4), (5, 1, None)]
    ep = res.patients[0].courses[0].episodes[Toxicity.CRS][0]
    assert ep.onset.isoformat() == "2024-05-02T14:00:00+01:00"
    assert ep.abatement.isoformat() == "2024-05-05T00:00:00+01:00"


def test_not_assessable_day_does_not_end_episode(engine) -> None:
    b = PatientBuilder()
    b.temp(1, "06:00", 38.5)
    b.bp(2, "08:00", 120, 70)  # no temperature on day 2
    b.temp(3, "08:00", 36.8)
    res = run(engine, b.bundle())
    assert daily(res, "crs") == {1: (G, 1), 2: (NA, None), 3: (G, 0)}
    assert episodes(res, "crs") == [(1, 1, 3)]


def test_lower_bound_episode_max(engine) -> None:
    b = PatientBuilder()
    b.temp(1, "06:00", 38.5)
    b.oxygen(1, "07:00", "nasal-cannula")
    res = run(engine, b.bundle())
    ep = res.patients[0].courses[0].episodes[list(res.patients[0].courses[0].episodes)[0]][0]
    assert (ep.max_grade, ep.max_is_lower_bound) == (2, True)


def test_open_ended_pressor_runs_until_last_data(engine) -> None:
    b = PatientBuilder()
    fever(b)
    b.resources.append({"resourceType": "MedicationAdministration", "id": "ne-open", "status": "in-progress",
                        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                                  "code": "7512"}]},
                        "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": b.at(1, "08:00")}})
    b.temp(3, "08:00", 37.0)
    res = run(engine, b.bundle())
    assert daily(res, "crs") == {1: (G, 3), 2: (G, 3), 3: (G, 3)}
