"""ASTCT 2019 ICANS, case by case (grading.md 2.2-2.7, decisions 6-7): ICE/CAPD bands on both sides,
every domain answer, motor weakness (decision 7, revised), children, and not-assessable days.
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
CHILD_7 = {"birth": "2017-02-01"}   # 7 years old on 2024-05-01
AGE_11 = {"birth": "2012-06-01"}    # 11 on 2024-05-01: CAPD (capd_max_age_years = 11)
AGE_12 = {"birth": "2012-04-01"}    # 12 on 2024-05-01: ICE


def case(cid: str, covers: list[str], build: Callable[[PatientBuilder], Any], day: int,
         expected: tuple[str, int | None], **patient: Any) -> Any:
    return pytest.param(covers, build, day, expected, patient, id=cid)


CASES = [
    case("icans-ice-10-grade0", ["ice:10"], lambda b: b.ice(1, "08:00", 10), 1, (G, 0)),
    case("icans-ice-9-grade1", ["ice:7"], lambda b: b.ice(1, "08:00", 9), 1, (G, 1)),
    case("icans-ice-7-grade1", ["ice:7"], lambda b: b.ice(1, "08:00", 7), 1, (G, 1)),
    case("icans-ice-6-grade2", ["ice:3"], lambda b: b.ice(1, "08:00", 6), 1, (G, 2)),
    case("icans-ice-3-grade2", ["ice:3"], lambda b: b.ice(1, "08:00", 3), 1, (G, 2)),
    case("icans-ice-2-grade3", ["ice:0"], lambda b: b.ice(1, "08:00", 2), 1, (G, 3)),
    case("icans-ice-0-aphasic-grade3", ["ice:0", "consciousness:alert"],
         lambda b: (b.ice(1, "08:00", 0), b.consciousness(1, "08:00", "alert")), 1, (G, 3)),
    case("icans-ice-0-unarousable-grade4", ["ice:0", "consciousness:unarousable"],
         lambda b: (b.ice(1, "08:00", 0), b.consciousness(1, "08:00", "unarousable")), 1, (G, 4)),
    case("icans-cannot-perform-ice-grade4", ["cannot-perform"], lambda b: b.cannot_ice(1, "08:00"), 1, (G, 4)),
    case("icans-worst-ice-of-day", ["ice:3", "ice:10"],
         lambda b: (b.ice(1, "08:00", 10), b.ice(1, "20:00", 5)), 1, (G, 2)),
    case("icans-ice-items-summed", ["ice:7"],
         lambda b: [b.neuro(c, 1, "08:00", valueInteger=v) for c, v in
                    (("ice-orientation", 3), ("ice-naming", 3), ("ice-commands", 1), ("ice-writing", 0),
                     ("ice-attention", 1))], 1, (G, 1)),
    case("icans-spontaneous-alone-grade0", ["consciousness:awakens-spontaneously"],
         lambda b: (b.ice(1, "08:00", 10), b.consciousness(1, "08:00", "awakens-spontaneously")), 1, (G, 0)),
    case("icans-voice-grade2", ["consciousness:awakens-to-voice"],
         lambda b: (b.ice(1, "08:00", 8), b.consciousness(1, "08:00", "awakens-to-voice")), 1, (G, 2)),
    case("icans-tactile-grade3", ["consciousness:awakens-to-tactile"],
         lambda b: (b.ice(1, "08:00", 8), b.consciousness(1, "08:00", "awakens-to-tactile")), 1, (G, 3)),
    case("icans-ice3-plus-seizure-grade3", ["ice:3", "seizure:clinical-resolved-rapidly"],
         lambda b: (b.ice(1, "08:00", 3), b.seizure(1, "10:00", "clinical-resolved-rapidly")), 1, (G, 3)),
    case("icans-eeg-seizure-grade3", ["seizure:nonconvulsive-eeg-resolved"],
         lambda b: (b.ice(1, "08:00", 9), b.seizure(1, "10:00", "nonconvulsive-eeg-resolved")), 1, (G, 3)),
    case("icans-seizure-6min-grade4", ["seizure:prolonged"],
         lambda b: (b.ice(1, "08:00", 9), b.seizure(1, "10:00", "prolonged")), 1, (G, 4)),
    case("icans-repetitive-seizures-grade4", ["seizure:repetitive-without-recovery"],
         lambda b: (b.ice(1, "08:00", 9), b.seizure(1, "10:00", "repetitive-without-recovery")), 1, (G, 4)),
    case("icans-seizure-none-grade0", ["seizure:none"],
         lambda b: (b.ice(1, "08:00", 10), b.seizure(1, "10:00", "none")), 1, (G, 0)),
    case("icans-focal-edema-grade3", ["cerebral-edema:focal"],
         lambda b: (b.ice(1, "08:00", 8), b.edema(1, "10:00", "focal")), 1, (G, 3)),
    case("icans-diffuse-edema-grade4", ["cerebral-edema:diffuse"],
         lambda b: (b.ice(1, "08:00", 8), b.edema(1, "10:00", "diffuse")), 1, (G, 4)),
    case("icans-posturing-grade4", ["cerebral-edema:posturing"],
         lambda b: (b.ice(1, "08:00", 8), b.edema(1, "10:00", "posturing")), 1, (G, 4)),
    case("icans-cn6-palsy-grade4", ["cerebral-edema:cranial-nerve-vi-palsy"],
         lambda b: (b.ice(1, "08:00", 8), b.edema(1, "10:00", "cranial-nerve-vi-palsy")), 1, (G, 4)),
    case("icans-papilledema-grade4", ["cerebral-edema:papilledema"],
         lambda b: (b.ice(1, "08:00", 8), b.edema(1, "10:00", "papilledema")), 1, (G, 4)),
    case("icans-cushings-grade4", ["cerebral-edema:cushings-triad"],
         lambda b: (b.ice(1, "08:00", 8), b.edema(1, "10:00", "cushings-triad")), 1, (G, 4)),
    case("icans-edema-none-grade0", ["cerebral-edema:none"],
         lambda b: (b.ice(1, "08:00", 10), b.edema(1, "10:00", "none")), 1, (G, 0)),
    case("icans-motor-with-encephalopathy-grade4", ["motor:deep-focal-weakness"],
         lambda b: (b.ice(1, "08:00", 6), b.motor(1, "10:00")), 1, (G, 4)),
    case("icans-motor-within-72h-of-ice9-grade4", ["motor:deep-focal-weakness"],
         lambda b: (b.ice(1, "08:00", 9), b.ice(3, "08:00", 10), b.motor(3, "10:00")), 3, (G, 4)),
    case("icans-motor-alone-with-ice10-grade4", ["motor:deep-focal-weakness", "ice:10"],
         lambda b: (b.ice(20, "08:00", 10), b.motor(20, "10:00")), 20, (G, 4)),
    case("icans-motor-alone-no-ice-grade4", ["motor:deep-focal-weakness"], lambda b: b.motor(20, "10:00"), 20, (G, 4)),
    case("icans-motor-none-grade0", ["motor:none"],
         lambda b: (b.ice(1, "08:00", 10), b.motor(1, "10:00", "none")), 1, (G, 0)),
    case("icans-tremor-only-grade0", ["ice:10"], lambda b: b.ice(1, "08:00", 10), 1, (G, 0)),
    # --- missing instrument
    case("icans-no-ice-alert-not-assessable", ["consciousness:alert"],
         lambda b: b.consciousness(1, "08:00", "alert"), 1, (NA, None)),
    case("icans-no-ice-seizure-at-least-3", ["seizure:clinical-resolved-rapidly"],
         lambda b: b.seizure(1, "08:00", "clinical-resolved-rapidly"), 1, (AL, 3)),
    case("icans-no-ice-unarousable-grade4", ["consciousness:unarousable"],
         lambda b: b.consciousness(1, "08:00", "unarousable"), 1, (G, 4)),
    # --- children: CAPD (decision 6)
    case("icans-capd-0-grade0", ["capd:0"], lambda b: b.capd(1, "08:00", 0), 1, (G, 0), **CHILD_7),
    case("icans-capd-1-grade1", ["capd:1"], lambda b: b.capd(1, "08:00", 1), 1, (G, 1), **CHILD_7),
    case("icans-capd-8-grade1", ["capd:1"], lambda b: b.capd(1, "08:00", 8), 1, (G, 1), **CHILD_7),
    case("icans-capd-9-grade3", ["capd:9"], lambda b: b.capd(1, "08:00", 9), 1, (G, 3), **CHILD_7),
    case("icans-capd-8-voice-grade2", ["capd:1", "consciousness:awakens-to-voice"],
         lambda b: (b.capd(1, "08:00", 8), b.consciousness(1, "08:00", "awakens-to-voice")), 1, (G, 2), **CHILD_7),
    case("icans-child-cannot-perform-capd-grade4", ["cannot-perform"],
         lambda b: b.cannot_ice(1, "08:00"), 1, (G, 4), **CHILD_7),
    case("icans-age-11y-uses-capd", ["capd:9"], lambda b: b.capd(1, "08:00", 12), 1, (G, 3), **AGE_11),
    case("icans-child-given-ice-still-used", ["ice:3"], lambda b: b.ice(1, "08:00", 5), 1, (G, 2), **CHILD_7),
    case("icans-age-12y-uses-ice", ["ice:7"], lambda b: b.ice(1, "08:00", 8), 1, (G, 1), **AGE_12),
]


@pytest.mark.parametrize(("covers", "build", "day", "expected", "patient"), CASES)
def test_icans_case(engine, covers, build, day, expected, patient) -> None:
    b = PatientBuilder(**patient)
    build(b)
    got = daily(run(engine, b.bundle()), "icans").get(day, ("no-observation", None))
    assert got == expected


def test_every_icans_criterion_row_has_a_case() -> None:
    t = load_tables().icans
    rows = {f"ice:{b.min}" for b in t.ice_bands} | {f"capd:{b.min}" for b in t.capd_bands} | {"cannot-perform"}
    rows |= {f"{domain}:{r.code}" for domain, rs in t.domains.items() for r in rs}
    covered = {c for p in CASES for c in p.values[0]}
    assert rows - covered == set()
    assert covered - rows == set(), "a case names a row the table does not have"


def test_missing_instrument_names_it_for_a_child(engine) -> None:
    b = PatientBuilder(**CHILD_7)
    b.consciousness(1, "08:00", "alert")
    res = run(engine, b.bundle())
    dg = res.patients[0].courses[0].days[Toxicity.ICANS][0]
    assert dg.missing and dg.missing[0].startswith("capd-score")


def test_icans_episode_resolves_when_ice_back_to_10(engine) -> None:
    b = PatientBuilder()
    for day, score in ((3, 10), (4, 8), (5, 2), (6, 5), (7, 9), (8, 10), (9, 10)):
        b.ice(day, "08:00", score)
    b.seizure(5, "14:00", "clinical-resolved-rapidly")
    res = run(engine, b.bundle())
    assert episodes(res, "icans") == [(4, 3, 8)]


def test_condition_coded_seizure_counts(engine) -> None:
    b = PatientBuilder()
    b.ice(2, "08:00", 8)
    b.condition("230456007", 2, "11:00")  # status epilepticus -> prolonged seizure, grade 4
    res = run(engine, b.bundle())
    assert daily(res, "icans")[2] == (G, 4)
