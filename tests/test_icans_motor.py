"""ICANS motor domain, phenotype and inflammatory context (grading.md decision 7, revised; Diorio et al., Blood
2024;144:1387), and clinician attribution of a motor finding (decision 9).

Each context case names the row of mappings/astct-icans-2019.yaml `inflammatory_context.rows` it covers (or
`unknown` / `non-inflammatory`); a meta-test checks every row has a case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fhirbuild import PatientBuilder
from helpers import daily, run

from cart_fhir.grading.icans import REVIEW_FLAG
from cart_fhir.grading.result import Toxicity
from cart_fhir.summary import episode_rows
from cart_fhir.tables import load_tables

CHILD = {"birth": "2016-02-01"}  # 8 years old on day 25: CAPD


def labels(res: Any) -> list[tuple[str, str, int]]:
    """(phenotype, inflammatory context, max grade) of each ICANS episode."""
    out = []
    for ep in res.patients[0].courses[0].episodes[Toxicity.ICANS]:
        comps = {c.code: c.value for c in ep.max_day.components}
        out.append((str(comps["phenotype"]), str(comps["inflammatory-context"]), ep.max_grade))
    return out


def case(cid: str, covers: list[str], build: Callable[[PatientBuilder], Any],
         expected: list[tuple[str, str, int]], **patient: Any) -> Any:
    return pytest.param(covers, build, expected, patient, id=cid)


def crp(b: PatientBuilder, day: int, hhmm: str, value: float, high: float | None = 0.5) -> Any:
    return b.lab("crp", day, hhmm, value, "mg/dL", high=high)  # type: ignore[attr-defined]


CASES = [
    # --- phenotype
    case("vignette-isolated-paraparesis-normal-ice-grade4-isolated-motor", ["unknown"],
         lambda b: (b.ice(25, "08:00", 10), b.motor(25, "09:00")), [("isolated-motor", "unknown", 4)]),
    case("paraparesis-with-ice5-mixed", ["unknown"],
         lambda b: (b.ice(5, "08:00", 5), b.motor(5, "09:00")), [("mixed", "unknown", 4)]),
    case("ice5-alone-encephalopathic", ["unknown"], lambda b: b.ice(5, "08:00", 5),
         [("encephalopathic", "unknown", 2)]),
    # --- inflammatory context: both sides of each row
    case("child-paraparesis-afebrile-crp-normal-non-inflammatory", ["non-inflammatory"],
         lambda b: (b.temp(25, "07:00", 36.9), crp(b, 25, "07:00", 0.3), b.capd(25, "08:30", 0), b.motor(25, "09:00")),
         [("isolated-motor", "non-inflammatory", 4)], **CHILD),
    case("fever-38.0-within-72h-inflammatory", ["inflammation-fever"],
         lambda b: (b.temp(22, "10:00", 38.0), b.motor(25, "09:00")), [("isolated-motor", "inflammatory", 4)]),
    case("fever-37.9-not-inflammatory", ["non-inflammatory"],
         lambda b: (b.temp(22, "10:00", 37.9), crp(b, 25, "07:00", 0.5), b.motor(25, "09:00")),
         [("isolated-motor", "non-inflammatory", 4)]),
    case("fever-and-crs-over-before-the-window-unknown", ["unknown"],
         lambda b: (b.temp(21, "10:00", 39.0), b.temp(22, "06:00", 36.5), b.motor(25, "09:00")),
         [("isolated-motor", "unknown", 4)]),
    case("fever-24h-after-onset-inside-window", ["inflammation-fever"],
         lambda b: (b.motor(25, "09:00"), b.temp(26, "09:00", 38.4)), [("isolated-motor", "inflammatory", 4)]),
    case("fever-25h-after-onset-outside-window", ["unknown"],
         lambda b: (b.motor(25, "09:00"), b.temp(26, "10:00", 38.4)), [("isolated-motor", "unknown", 4)]),
    case("open-crs-episode-inflammatory", ["inflammation-open-crs"],
         lambda b: (b.temp(20, "10:00", 38.6), b.motor(25, "09:00")), [("isolated-motor", "inflammatory", 4)]),
    case("crp-above-range-inflammatory", ["inflammation-crp-above-range"],
         lambda b: (b.temp(25, "07:00", 37.0), crp(b, 25, "07:00", 0.6), b.motor(25, "09:00")),
         [("isolated-motor", "inflammatory", 4)]),
    case("crp-without-range-unknown", ["unknown"],
         lambda b: (b.temp(25, "07:00", 37.0), crp(b, 25, "07:00", 9.0, high=None), b.motor(25, "09:00")),
         [("isolated-motor", "unknown", 4)]),
    case("ferritin-above-range-inflammatory", ["inflammation-ferritin-above-range"],
         lambda b: (b.lab("ferritin", 25, "07:00", 900, "ng/mL", high=300), b.motor(25, "09:00")),
         [("isolated-motor", "inflammatory", 4)]),
    case("ferritin-at-range-high-not-inflammatory", ["non-inflammatory"],
         lambda b: (b.temp(25, "07:00", 37.0), crp(b, 25, "07:00", 0.2),
                    b.lab("ferritin", 25, "07:00", 300, "ng/mL", high=300), b.motor(25, "09:00")),
         [("isolated-motor", "non-inflammatory", 4)]),
]


@pytest.mark.parametrize(("covers", "build", "expected", "patient"), CASES)
def test_icans_episode_labels(engine, covers, build, expected, patient) -> None:
    b = PatientBuilder(**patient)
    build(b)
    assert labels(run(engine, b.bundle())) == expected


def test_every_inflammatory_context_row_has_a_case() -> None:
    rows = {r.id for r in load_tables().icans.inflammatory_context.rows} | {"unknown", "non-inflammatory"}
    covered = {c for p in CASES for c in p.values[0]}
    assert rows == covered


def test_isolated_motor_non_inflammatory_is_flagged_everywhere(engine) -> None:
    """Run report notice, CDS card flag line and summary row (decision 7, revised)."""
    b = PatientBuilder(**CHILD)
    b.temp(25, "07:00", 36.8)
    crp(b, 25, "07:00", 0.2)
    b.capd(25, "08:30", 0)
    b.motor(25, "09:00")
    res = run(engine, b.bundle())
    cr = res.patients[0].courses[0]
    (ep,) = cr.episodes[Toxicity.ICANS]
    assert REVIEW_FLAG in ep.max_day.flags
    assert any("neurological review" in r for r in ep.max_day.reasons)
    assert any("neurological review" in n for n in cr.notices)
    assert any("neurological review" in i.message for i in res.report.issues)
    (row,) = [r for r in episode_rows(res) if r["toxicity"] == "icans"]
    assert (row["max_grade"], row["phenotype"], row["inflammatory_context"]) == (4, "isolated-motor",
                                                                                 "non-inflammatory")


def test_episode_observation_carries_the_labels(engine) -> None:
    from helpers import RECORDED

    b = PatientBuilder()
    b.ice(25, "08:00", 10)
    b.motor(25, "09:00")
    res = run(engine, b.bundle())
    obs = [w.resource for w in engine.resources(res, RECORDED) if w.resource["resourceType"] == "Observation"
           and w.resource["code"]["coding"][0]["code"] == "icans-grade-astct"]
    comps = {c["code"]["coding"][0]["code"]: c.get("valueCodeableConcept", {}).get("coding", [{}])[0].get("code")
             for c in obs[0]["component"]}
    assert comps["phenotype"] == "isolated-motor" and comps["inflammatory-context"] == "unknown"


def test_vignette_paraparesis_with_clinician_cord_compression_is_not_icans(engine) -> None:
    """A clinician's spinal cord compression (any code) listing the paraparesis as its evidence: not ICANS."""
    b = PatientBuilder()
    b.ice(25, "08:00", 10)
    motor = b.motor(25, "09:00")
    b.resources.append({"resourceType": "Condition", "id": "sccc", "subject": b.subject(),
                        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                           "condition-ver-status", "code": "confirmed"}]},
                        "code": {"text": "Spinal cord compression (epidural lymphoma deposit)"},
                        "onsetDateTime": b.at(25, "15:00"),
                        "evidence": [{"detail": [{"reference": f"Observation/{motor['id']}"}]}]})
    res = run(engine, b.bundle())
    assert daily(res, "icans")[25] == ("graded", 0)
    assert res.patients[0].courses[0].episodes[Toxicity.ICANS] == []
    day = res.patients[0].courses[0].days[Toxicity.ICANS][0]
    assert "Condition/sccc" in day.evidence and any("Spinal cord compression" in r for r in day.reasons)


def _text_condition(b: PatientBuilder, text: str, day: int, hhmm: str) -> dict[str, Any]:
    res = {"resourceType": "Condition", "id": b._id("txt"), "subject": b.subject(), "code": {"text": text},
           "onsetDateTime": b.at(day, hhmm)}
    b.resources.append(res)
    return res


def test_paraparesis_condition_by_name_is_icans_grade4(engine) -> None:
    """No verified SNOMED CT code for paraparesis: a Condition naming it is the motor finding (verified: false)."""
    b = PatientBuilder()
    b.ice(25, "08:00", 10)
    _text_condition(b, "Acute paraparesis", 25, "09:00")
    res = run(engine, b.bundle())
    assert labels(res) == [("isolated-motor", "unknown", 4)]
    assert "condition-findings:motor-weakness-by-name" in res.report.unverified_rows


@pytest.mark.parametrize(("text", "icans"), [
    pytest.param("Spinal cord compression", 0, id="cord-compression-by-name-not-icans"),
    pytest.param("Transverse myelitis", 0, id="myelitis-by-name-not-icans"),
    pytest.param("Guillain-Barre syndrome (AIDP)", 0, id="gbs-by-name-not-icans"),
    pytest.param("Osteomyelitis of the tibia", 1, id="osteomyelitis-is-not-myelitis"),
])
def test_clinician_diagnosis_by_name_takes_the_motor_finding_out(engine, text: str, icans: int) -> None:
    b = PatientBuilder()
    b.ice(25, "08:00", 10)
    b.motor(25, "09:00")
    _text_condition(b, text, 25, "15:00")
    cr = run(engine, b.bundle()).patients[0].courses[0]
    assert len(cr.episodes[Toxicity.ICANS]) == icans
    assert len([e for e in cr.events if e.toxicity == Toxicity.NEURO_OTHER]) == 1 - icans
