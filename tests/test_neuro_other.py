"""Non-ICANS neurotoxicity (grading.md section 7, decision 7, 2.6, 11.13), case by case.

Each case names the rows of mappings/neurotoxicity-other.yaml (code:...) and
mappings/neurotoxicity-grading.yaml (severity:..., support:..., motor-is-icans, not-assessable) it covers; a
meta-test checks every row has a case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fhirbuild import PatientBuilder
from helpers import run

from cart_fhir.grading.neuro_other import ASSESSMENT_CODE, MISSING, NeuroGradingTable, NeuroOtherGrader
from cart_fhir.grading.registry import load_all
from cart_fhir.grading.result import Findings, State, Toxicity
from cart_fhir.tables import NeuroEventTable, load_yaml_table

SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
PARKINSONISM, TREMOR, BELLS, GBS = "32798002", "26079004", "193093009", "40956001"
MILD, MODERATE, SEVERE = "255604002", "6736007", "24484000"
G, NA = "graded", "not-assessable"
VENT, MV = "support:gbs-mechanical-ventilation", "mechanical-ventilation"
OTHER = "Nervous system disorders - Other, specify"
CHILD = {"birth": "2016-02-01"}  # 8 years old: CAPD (decision 6)
GRADER = NeuroOtherGrader(load_all().get(NeuroGradingTable))


def cond(b: PatientBuilder, code: str, day: int, severity: str | None = None,
         abatement: tuple[int, str] | None = None) -> dict[str, Any]:
    add = b.coded_condition  # type: ignore[attr-defined]
    return add(SCT, code, day, "09:00", severity=severity, abatement=abatement)


def grade(engine: Any, b: PatientBuilder) -> tuple[Findings, int]:
    cr = run(engine, b.bundle()).patients[0].courses[0]
    found = GRADER.grade(cr.course, cr.days[Toxicity.ICANS], cr.episodes[Toxicity.ICANS])
    return found, len(cr.episodes[Toxicity.ICANS])


def case(cid: str, covers: list[str], build: Callable[[PatientBuilder], Any],
         expected: list[tuple[str, str, int | None]], icans: int = 0, **patient: Any) -> Any:
    """expected: (category, state, grade) of each event in onset order; icans: number of ICANS episodes."""
    return pytest.param(covers, build, expected, icans, patient, id=cid)


CASES = [
    # --- deep focal motor weakness is ICANS (decision 7, revised); a clinician's myelitis, GBS or cord
    # compression stays a non-ICANS event and takes the motor finding out of ICANS
    case("neuro-child-paraparesis-capd0-afebrile-is-icans-no-event", ["motor-is-icans"],
         lambda b: (b.temp(25, "08:00", 36.9), b.capd(25, "08:30", 0), b.motor(25, "09:00")),
         [], icans=1, **CHILD),
    case("neuro-paraparesis-cord-compression-icd-not-icans", ["code:G95.20"],
         lambda b: (b.ice(25, "08:00", 10), b.motor(25, "09:00"), b.coded_condition(ICD, "G95.20", 26, "10:00")),
         [("myelopathy-paraparesis", NA, None)]),
    case("neuro-paraparesis-other-cord-compression-not-icans", ["code:G95.29"],
         lambda b: (b.motor(25, "09:00"), b.coded_condition(ICD, "G95.29", 25, "12:00")),
         [("myelopathy-paraparesis", NA, None)]),
    case("neuro-paraparesis-cord-compression-sct-not-icans", ["code:71286001"],
         lambda b: (b.motor(25, "09:00"), cond(b, "71286001", 24)), [("myelopathy-paraparesis", NA, None)]),
    case("neuro-paraparesis-myelitis-not-icans", ["code:G04.91"],
         lambda b: (b.motor(25, "09:00"), b.coded_condition(ICD, "G04.91", 27, "12:00")),
         [("myelopathy-paraparesis", NA, None)]),
    case("neuro-weakness-gbs-icd-not-icans", ["code:G61.0"],
         lambda b: (b.motor(25, "09:00"), b.coded_condition(ICD, "G61.0", 25, "12:00")), [("gbs", NA, None)]),
    case("neuro-cord-compression-8-days-later-motor-stays-icans", ["code:G95.20", "motor-is-icans"],
         lambda b: (b.motor(25, "09:00"), b.coded_condition(ICD, "G95.20", 33, "10:00")),
         [("myelopathy-paraparesis", NA, None)], icans=1),
    # --- coded Conditions: CTCAE grade where the data allow (7.2)
    case("neuro-parkinsonism-day90-moderate-grade2", ["code:32798002", "severity:6736007"],
         lambda b: cond(b, PARKINSONISM, 90, MODERATE), [("movement-disorder", G, 2)]),
    case("neuro-tremor-mild-grade1", ["code:26079004", "severity:255604002"],
         lambda b: cond(b, TREMOR, 20, MILD), [("movement-disorder", G, 1)]),
    case("neuro-gbs-severe-no-ventilation-grade3", ["code:40956001", "severity:24484000"],
         lambda b: cond(b, GBS, 30, SEVERE), [("gbs", G, 3)]),
    case("neuro-gbs-ventilation-grade4", ["code:40956001", VENT],
         lambda b: (cond(b, GBS, 30), b.oxygen(31, "10:00", MV)), [("gbs", G, 4)]),
    case("neuro-gbs-severe-and-ventilation-grade4", [VENT, "severity:24484000"],
         lambda b: (cond(b, GBS, 30, SEVERE), b.oxygen(30, "07:00", MV)), [("gbs", G, 4)]),
    case("neuro-gbs-bipap-is-not-intubation-not-assessable", [VENT, "not-assessable"],
         lambda b: (cond(b, GBS, 30), b.oxygen(31, "10:00", "bipap")), [("gbs", NA, None)]),
    case("neuro-gbs-ventilation-before-onset-not-assessable", [VENT],
         lambda b: (b.oxygen(5, "10:00", MV), cond(b, GBS, 30)), [("gbs", NA, None)]),
    case("neuro-gbs-ventilation-after-abatement-not-assessable", [VENT],
         lambda b: (cond(b, GBS, 30, abatement=(40, "09:00")), b.oxygen(41, "10:00", MV)),
         [("gbs", NA, None)]),
    case("neuro-parkinsonism-ventilation-is-not-a-grade", ["code:32798002", VENT],
         lambda b: (cond(b, PARKINSONISM, 90), b.oxygen(91, "10:00", MV)),
         [("movement-disorder", NA, None)]),
    case("neuro-facial-palsy-no-severity-not-assessable", ["code:193093009", "not-assessable"],
         lambda b: cond(b, BELLS, 40), [("cranial-neuropathy", NA, None)]),
    case("neuro-facial-palsy-unmapped-severity-not-assessable", ["code:193093009", "not-assessable"],
         lambda b: cond(b, BELLS, 40, "x-unknown-severity"), [("cranial-neuropathy", NA, None)]),
    # --- time axis: events before the infusion are not reported
    case("neuro-event-day-minus3-not-reported", ["code:193093009"], lambda b: cond(b, BELLS, -3), []),
    case("neuro-event-day0-before-infusion-not-reported", ["code:193093009"],
         lambda b: b.coded_condition(SCT, BELLS, 0, "07:00"), []),
    case("neuro-paraparesis-day-minus2-not-reported", ["motor-is-icans"], lambda b: b.motor(-2, "09:00"), []),
    # --- never folded into ICANS
    case("neuro-bells-palsy-with-icans-same-days-both-kept", ["code:193093009"],
         lambda b: (b.ice(10, "08:00", 6), b.ice(11, "08:00", 8), cond(b, BELLS, 10)),
         [("cranial-neuropathy", NA, None)], icans=1),
]


@pytest.mark.parametrize(("covers", "build", "expected", "icans", "patient"), CASES)
def test_neuro_other_case(engine, covers, build, expected, icans, patient) -> None:
    b = PatientBuilder(**patient)
    build(b)
    found, n_icans = grade(engine, b)
    got = [(str(e.detail("category")), e.state.value, e.max_grade) for e in found.events]
    assert got == expected
    assert n_icans == icans
    for e in found.events:
        a = e.assessment
        assert a is not None and a in found.assessments
        assert (e.toxicity, a.toxicity, a.code, a.table) == (Toxicity.NEURO_OTHER, Toxicity.NEURO_OTHER,
                                                              ASSESSMENT_CODE, "neurotoxicity-grading v2")
        assert (a.state, a.value) == (e.state, e.max_grade)
        assert a.missing == ((MISSING,) if a.state == State.NOT_ASSESSABLE else ())
        assert e.onset_day >= 0 and "attribution-unconfirmed" in a.flags


def test_parkinsonism_event_fields(engine) -> None:
    b = PatientBuilder()
    res = cond(b, PARKINSONISM, 90, MODERATE)
    found, _ = grade(engine, b)
    (e,) = found.events
    ref = f"Condition/{res['id']}"
    assert (e.key, e.condition_ref, e.evidence) == (ref, ref, (ref,))
    assert e.details == (("category", "movement-disorder"), ("ctcae_term", "Extrapyramidal disorder"))
    assert e.term == (NCIT, "C143467", "Extrapyramidal disorder")
    a = e.assessment
    assert a is not None and a.evidence == (ref,)
    assert "grade-from-condition-severity" in a.flags
    assert any("approximate" in r for r in a.reasons)


def test_gbs_ventilation_evidence_names_the_device_reading(engine) -> None:
    b = PatientBuilder()
    cond(b, GBS, 30)
    b.oxygen(31, "10:00", MV)
    found, _ = grade(engine, b)
    a = found.events[0].assessment
    assert a is not None and len(a.evidence) == 2 and a.evidence[1].startswith("Observation/o2dev")
    assert any("rule gbs-mechanical-ventilation" in r for r in a.reasons)


def test_icans_and_bells_palsy_both_reported_and_flagged(engine) -> None:
    b = PatientBuilder()
    b.ice(10, "08:00", 6)
    cond(b, BELLS, 10)
    cr = run(engine, b.bundle()).patients[0].courses[0]
    found = GRADER.grade(cr.course, cr.days[Toxicity.ICANS], cr.episodes[Toxicity.ICANS])
    assert [ep.max_grade for ep in cr.episodes[Toxicity.ICANS]] == [2]  # ICANS untouched
    assert "icans-on-same-days" in found.events[0].assessment.flags  # type: ignore[union-attr]


def test_death_is_flagged_never_grade5(engine) -> None:
    b = PatientBuilder()
    cond(b, GBS, 30, SEVERE)
    b.deceased(50, "04:00")  # type: ignore[attr-defined]
    found, _ = grade(engine, b)
    a = found.events[0].assessment
    assert a is not None and a.value == 3 and "death-unattributed" in a.flags


def test_every_neuro_row_has_a_case() -> None:
    codes = load_yaml_table("neurotoxicity-other.yaml", NeuroEventTable)
    crit = load_yaml_table("neurotoxicity-grading.yaml", NeuroGradingTable)
    rows = ({f"code:{r.code}" for r in codes.rows} | {f"severity:{r.code}" for r in crit.severity}
            | {f"support:{r.id}" for r in crit.support} | {"motor-is-icans", "not-assessable"})
    covered = {c for p in CASES for c in p.values[0]}
    assert rows - covered == set()
    assert covered - rows == set(), "a case names a row the table does not have"


def test_severity_rows_are_marked_approximate() -> None:
    crit = load_yaml_table("neurotoxicity-grading.yaml", NeuroGradingTable)
    assert [(r.code, r.grade, r.verified) for r in crit.severity] == [
        (MILD, 1, False), (MODERATE, 2, False), (SEVERE, 3, False)]
