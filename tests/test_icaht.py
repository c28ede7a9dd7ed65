"""EHA/EBMT 2023 ICAHT, case by case (grading.md 4.1-4.5, preface decision 11): both sides of every
boundary, by table row.

Each case names the rows of mappings/eha-ebmt-icaht-2023.yaml it covers (`covers`); a meta-test checks
that every row has at least one case. ANC values are given in 10*3/uL (0.3 = 300/uL), one a day at noon.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import pytest
from fhirbuild import PatientBuilder
from helpers import run

from cart_fhir.grading.icaht import IcahtGrader, IcahtTable
from cart_fhir.grading.icaht.series import cumulative, days_text
from cart_fhir.grading.registry import load_all
from cart_fhir.grading.result import Findings, State, Toxicity
from cart_fhir.pipeline import Engine
from cart_fhir.tables import load_yaml_table

G, AL, NA = "graded", "at-least", "not-assessable"
GRADER = IcahtGrader(load_all().get(IcahtTable))


def case(cid: str, covers: list[str], build: Callable[[PatientBuilder], Any],
         expected: tuple[str, int | None], **patient: Any) -> Any:
    return pytest.param(covers, build, expected, patient, id=cid)


def anc(values: dict[int, float], unit: str = "10*3/uL") -> Callable[[PatientBuilder], None]:
    def build(b: PatientBuilder) -> None:
        for day, v in sorted(values.items()):
            b.lab("anc", day, "12:00", v, unit)
    return build


def series(low: Iterable[int], *, first: int = -1, last: int = 40, level: float = 0.3, high: float = 2.0,
           skip: Iterable[int] = (), **override: float) -> dict[int, float]:
    """Daily ANC from `first` to `last`: `level` on the `low` days, `high` otherwise."""
    lows, gone = set(low), set(skip)
    out = {d: (level if d in lows else high) for d in range(first, last + 1) if d not in gone}
    out.update({int(k[1:]): v for k, v in override.items()})  # d5=0.05 -> day 5
    return out


def then(*builds: Callable[[PatientBuilder], Any]) -> Callable[[PatientBuilder], None]:
    def build(b: PatientBuilder) -> None:
        for f in builds:
            f(b)
    return build


def findings(engine: Engine, build: Callable[[PatientBuilder], Any], patient: dict[str, Any]) -> Findings:
    b = PatientBuilder(**patient)
    build(b)
    return GRADER.grade(run(engine, b.bundle()).patients[0].courses[0].course)


def profound(days: Iterable[int]) -> dict[str, float]:
    return {f"d{d}": 0.05 for d in days}


EARLY = [
    # --- 4.1 ANC <= 500 column: 0/1/6/7/13/14/30/31 days (decision 11: cumulative days in days 0-30)
    case("icaht-early-anc500-0days-grade0", ["window-early"], anc(series([])), (G, 0)),
    case("icaht-early-anc500-exactly-500-1day-grade1", ["early-anc500-1-6d"], anc(series([], d3=0.5)),
         (G, 1)),
    case("icaht-early-anc510-not-counted-grade0", ["early-anc500-1-6d"], anc(series([], d3=0.51)), (G, 0)),
    case("icaht-early-anc500-6days-grade1", ["early-anc500-1-6d"], anc(series(range(2, 8))), (G, 1)),
    case("icaht-early-anc500-7days-grade2", ["early-anc500-7-13d"], anc(series(range(2, 9))), (G, 2)),
    case("icaht-early-anc500-13days-grade2", ["early-anc500-7-13d"], anc(series(range(2, 15))), (G, 2)),
    case("icaht-early-anc500-14days-grade3", ["early-anc500-14-30d"], anc(series(range(2, 16))), (G, 3)),
    case("icaht-early-anc500-30days-grade3", ["early-anc500-14-30d"], anc(series(range(30))), (G, 3)),
    case("icaht-early-anc500-31days-grade4", ["early-anc500-31d", "window-early"], anc(series(range(31))),
         (G, 4)),
    case("icaht-early-low-day31-outside-window-grade3", ["window-early"], anc(series(range(1, 32))), (G, 3)),
    # --- 4.1 ANC <= 100 column: 6/7/13/14 days (inside a run of ANC <= 500)
    case("icaht-early-anc100-6days-grade1", ["early-anc100-7-13d"],
         anc(series(range(2, 8), **profound(range(2, 8)))), (G, 1)),
    case("icaht-early-anc100-7days-grade3", ["early-anc100-7-13d"],
         anc(series(range(2, 9), **profound(range(2, 9)))), (G, 3)),
    case("icaht-early-anc100-13days-grade3", ["early-anc100-7-13d"],
         anc(series(range(2, 15), **profound(range(2, 15)))), (G, 3)),
    case("icaht-early-anc100-14days-grade4", ["early-anc100-14d"],
         anc(series(range(2, 16), **profound(range(2, 16)))), (G, 4)),
    case("icaht-early-comparator-lt0.1-is-le100-7days-grade3", ["early-anc100-7-13d"],
         then(anc(series(range(2, 9), skip=range(2, 9))),
              *[lambda b, d=d: b.lab("anc", d, "12:00", 0.1, "10*3/uL", comparator="<")
                for d in range(2, 9)]),
         (G, 3)),
    # --- decision 11: non-stable recovery (< 3 days above) counts; stable recovery (3 days) ends the run
    case("icaht-early-3low-2high-3low-8days-grade2", ["stable-recovery-days"],
         anc(series([2, 3, 4, 7, 8, 9])), (G, 2)),
    case("icaht-early-3low-3high-3low-6days-grade1", ["stable-recovery-days"],
         anc(series([2, 3, 4, 8, 9, 10])), (G, 1)),
    case("icaht-early-cumulative-after-stable-recovery-grade2",
         ["stable-recovery-days", "early-anc500-7-13d"],
         anc(series([2, 3, 4, 5, 20, 21, 22, 23])), (G, 2)),  # longest run 4 (grade 1), cumulative 8
    case("icaht-early-recovery-day29-30-then-low-day31-counts-grade4", ["stable-recovery-days"],
         anc(series([*range(29), 31, 32])), (G, 4)),
    # --- H6 interpolation: up to 7 days without an ANC
    case("icaht-early-gap-7days-interpolated-9days-grade2", ["interpolation-max-gap-days"],
         anc(series([0, 8], skip=range(1, 8))), (G, 2)),
    case("icaht-early-gap-8days-not-interpolated-atleast1", ["interpolation-max-gap-days"],
         anc(series([0, 9], skip=range(1, 9))), (AL, 1)),
    case("icaht-early-interpolated-low-to-high-grade1", ["interpolation-max-gap-days"],
         anc(series([0], skip=range(1, 4), d4=1.0, d0=0.2)), (G, 1)),  # day 1 = 400 (counted), day 2 = 600
    case("icaht-early-interpolated-503-rounds-to-500-7days-grade2", ["interpolation-round-to"],
         anc(series(range(6), skip=[6], d7=0.706)), (G, 2)),
    case("icaht-early-interpolated-505-rounds-to-510-6days-grade1", ["interpolation-round-to"],
         anc(series(range(6), skip=[6], d7=0.71)), (G, 1)),
    case("icaht-early-pre-infusion-anc-anchors-day0-grade0", ["interpolation-max-gap-days"],
         anc(series([], first=2) | {-2: 2.5}), (G, 0)),
    case("icaht-early-day0-missing-no-anchor-not-assessable", ["interpolation-max-gap-days"],
         anc(series([], first=1)), (NA, None)),
    case("icaht-early-day0-before-infusion-counts-grade1", ["window-early"],
         then(lambda b: b.lab("anc", 0, "08:00", 0.3, "10*3/uL"), anc(series([], first=1))), (G, 1)),
    # --- 4.5 / H7: follow-up shorter than the window
    case("icaht-early-h7-start-day1-death-day16-grade4", ["never-recovered-start-last-day"],
         then(anc(series(range(1, 17), last=16)), lambda b: b.deceased(16, "20:00")), (G, 4)),
    case("icaht-early-h7-start-day3-grade4", ["never-recovered-start-last-day"],
         anc(series(range(3, 17), last=16)), (G, 4)),
    case("icaht-early-h7-start-day4-13days-atleast2", ["never-recovered-start-last-day"],
         anc(series(range(4, 17), last=16)), (AL, 2)),
    case("icaht-early-unrecovered-from-day4-14days-grade3", ["never-recovered-start-last-day"],
         anc(series(range(4, 18), last=17)), (G, 3)),  # at most 27 days even if never recovered
    case("icaht-early-h7-start-day5-13days-atleast2", ["never-recovered-start-last-day"],
         then(anc(series(range(5, 18), last=17)), lambda b: b.deceased(17, "20:00")), (AL, 2)),
    case("icaht-early-followup-short-recovered-grade1", ["stable-recovery-days"],
         anc(series(range(5), last=12)), (G, 1)),
    case("icaht-early-followup-ends-in-nonstable-recovery-atleast2", ["stable-recovery-days"],
         anc(series(range(10), last=11)), (AL, 2)),
    case("icaht-early-gap-after-stable-recovery-assumed-recovered-grade1", ["stable-recovery-days"],
         anc(series(range(4), skip=range(12, 25))), (G, 1)),
    case("icaht-early-gap-ending-low-atleast1", ["stable-recovery-days"],
         anc(series([*range(4), 25], skip=range(12, 25))), (AL, 1)),
    case("icaht-early-censored-next-infusion-day20-atleast2", ["window-early"],
         then(anc(series(range(10, 25))), lambda b: b.infusion_medication(20, "10:00")), (AL, 2)),
    case("icaht-early-no-anc-not-assessable", ["window-early"], anc({-3: 2.0, 45: 2.0}), (NA, None)),
]


LATE_BASE = {d: 2.0 for d in range(35, 111, 5)}


def late(**values: float) -> Callable[[PatientBuilder], None]:
    return anc(series([], last=30) | LATE_BASE | {int(k[1:]): v for k, v in values.items()})


LATE = [
    case("icaht-late-no-low-grade0", ["window-late"], late(), (G, 0)),
    case("icaht-late-anc1500-once-transient-grade0", ["late-anc1500", "late-min-measurements"],
         late(d40=1.5), (G, 0)),
    case("icaht-late-anc1500-twice-grade1", ["late-anc1500", "late-min-measurements"], late(d40=1.5, d50=1.5),
         (G, 1)),
    case("icaht-late-anc1510-twice-grade0", ["late-anc1500"], late(d40=1.51, d50=1.51), (G, 0)),
    case("icaht-late-anc1000-twice-grade2", ["late-anc1000"], late(d40=1.0, d50=1.0), (G, 2)),
    case("icaht-late-anc1000-once-1400-once-grade1", ["late-anc1000", "late-min-measurements"],
         late(d40=1.0, d50=1.4), (G, 1)),
    case("icaht-late-anc500-twice-grade3", ["late-anc500"], late(d40=0.5, d50=0.5), (G, 3)),
    case("icaht-late-anc510-twice-grade2", ["late-anc500"], late(d40=0.51, d50=0.51), (G, 2)),
    case("icaht-late-anc100-twice-grade4", ["late-anc100"], late(d40=0.1, d50=0.1), (G, 4)),
    case("icaht-late-anc100-once-grade3", ["late-anc100", "late-anc500"], late(d40=0.1, d50=0.3), (G, 3)),
    case("icaht-late-comparator-lt0.1-twice-grade4", ["late-anc100"],
         then(late(), lambda b: b.lab("anc", 41, "12:00", 0.1, "10*3/uL", comparator="<"),
              lambda b: b.lab("anc", 51, "12:00", 0.1, "10*3/uL", comparator="<")), (G, 4)),
    case("icaht-late-same-day-twice-is-one-day-grade0", ["late-min-measurements"],
         then(late(d40=1.2), lambda b: b.lab("anc", 40, "18:00", 1.1, "10*3/uL")), (G, 0)),
    case("icaht-late-day100-and-101-only-one-in-window-grade0", ["window-late"], late(d100=1.2, d101=1.2),
         (G, 0)),
    case("icaht-late-day99-and-100-grade1", ["window-late"], late(d99=1.2, d100=1.2), (G, 1)),
    case("icaht-late-last-value-low-unconfirmed-not-assessable", ["late-min-measurements"],
         anc(series([], last=30) | {40: 2.0, 60: 0.4}), (NA, None)),
    case("icaht-late-last-value-low-unconfirmed-atleast1", ["late-min-measurements"],
         anc(series([], last=30) | {40: 1.2, 45: 1.3, 60: 0.4}), (AL, 1)),
    case("icaht-late-no-anc-after-day30-not-assessable", ["window-late"], anc(series([], last=30)),
         (NA, None)),
    case("icaht-late-death-day25-not-assessable", ["window-late"],
         then(anc(series([], last=25)), lambda b: b.deceased(25, "12:00")), (NA, None)),
    case("icaht-late-censored-next-infusion-single-low-grade0", ["window-late", "late-min-measurements"],
         then(anc(series([], last=30) | {40: 2.0, 55: 1.2, 65: 1.2, 70: 1.2}),
              lambda b: b.infusion_medication(60, "10:00")), (G, 0)),
]


@pytest.mark.parametrize(("covers", "build", "expected", "patient"), EARLY)
def test_early_icaht_case(engine, covers, build, expected, patient) -> None:
    a = findings(engine, build, patient).assessments[0]
    assert (a.toxicity, a.code) == (Toxicity.ICAHT_EARLY, "icaht-grade-early")
    assert (a.state.value, a.value) == expected
    assert bool(a.missing) == (a.state != State.GRADED)


@pytest.mark.parametrize(("covers", "build", "expected", "patient"), LATE)
def test_late_icaht_case(engine, covers, build, expected, patient) -> None:
    a = findings(engine, build, patient).assessments[1]
    assert (a.toxicity, a.code) == (Toxicity.ICAHT_LATE, "icaht-grade-late")
    assert (a.state.value, a.value) == expected
    assert bool(a.missing) == (a.state != State.GRADED)


def test_every_icaht_row_has_a_case() -> None:
    t = load_yaml_table("eha-ebmt-icaht-2023.yaml", IcahtTable)
    rows = {r.id for r in (*t.early, *t.late)} | set(t.settings) | {f"window-{w.window}" for w in t.windows}
    covered = {c for p in (*EARLY, *LATE) for c in p.values[0]}
    assert rows - covered == set()
    assert covered - rows == set(), "a case names a row the table does not have"


def test_event_onset_at_first_low_anc_and_abatement_at_stable_recovery(engine) -> None:
    f = findings(engine, anc(series(range(2, 9))), {})
    early, late_a = f.assessments
    assert [e.key for e in f.events] == ["early"]
    ev = f.events[0]
    assert (ev.toxicity, ev.state, ev.max_grade) == (Toxicity.ICAHT_EARLY, State.GRADED, 2)
    assert ev.detail("window") == "early"
    assert ev.onset_day == 2 and ev.onset.isoformat() == "2024-05-03T12:00:00+01:00"
    assert ev.resolved_day == 9 and ev.abatement is not None
    assert ev.abatement.isoformat() == "2024-05-10T00:00:00+01:00"
    assert ev.assessment == early and ev.evidence == early.evidence and len(early.evidence) == 7
    assert (early.start.isoformat(), early.end and early.end.isoformat()) == ("2024-05-01T00:00:00+01:00",
                                                                              "2024-06-01T00:00:00+01:00")
    assert (late_a.start.isoformat(), late_a.end and late_a.end.isoformat()) == ("2024-06-01T00:00:00+01:00",
                                                                                 "2024-08-10T00:00:00+01:00")
    assert {c.code: c.value for c in early.components} == {"anc-nadir": 300, "days-anc-le-500": 7,
                                                           "days-anc-le-100": 0}


def test_late_event_and_components(engine) -> None:
    f = findings(engine, late(d40=1.2, d50=0.9), {})
    ev = next(e for e in f.events if e.key == "late")
    assert (ev.max_grade, ev.onset_day, ev.resolved_day, ev.detail("window")) == (1, 40, 55, "late")
    a = f.assessments[1]
    assert {c.code: c.value for c in a.components} == {"anc-nadir": 900, "anc-second-lowest": 1200}
    assert "attribution-unconfirmed" in a.flags and "transient-low-value" in a.flags


def test_grade0_has_no_event_but_both_assessments(engine) -> None:
    f = findings(engine, late(), {})
    assert f.events == ()
    assert [(a.code, a.state, a.value) for a in f.assessments] == [("icaht-grade-early", State.GRADED, 0),
                                                                   ("icaht-grade-late", State.GRADED, 0)]


def test_gcsf_is_reported_and_never_changes_the_grade(engine) -> None:
    given: list[str] = []
    build = then(anc(series(range(2, 9))), lambda b: given.append(
        b.medication("filgrastim", 5, "09:00", end=(7, "09:00"), rxnorm="68442")["id"]))
    a = findings(engine, build, {}).assessments[0]
    assert (a.state, a.value) == (State.GRADED, 2)
    assert a.supporting == (f"MedicationAdministration/{given[0]}",) and "g-csf-given" in a.flags
    assert all(ref.startswith("Observation/") for ref in a.evidence)


def test_death_cuts_the_window_and_is_flagged(engine) -> None:
    build = then(anc(series(range(1, 17), last=16)), lambda b: b.deceased(16, "20:00"))
    f = findings(engine, build, {})
    early, late_a = f.assessments
    assert early.end is not None and early.end.isoformat() == "2024-05-17T20:00:00+01:00"
    assert "deceased-in-window" in early.flags and "never-recovered-h7" in early.flags
    assert f.events[0].abatement is None
    assert (late_a.state, late_a.missing) == (State.NOT_ASSESSABLE, ("ANC (LOINC 751-8) on days 31-100",))


def test_unverified_rows_are_named_for_the_run_report(engine) -> None:
    early, late_a = findings(engine, late(), {}).assessments
    assert GRADER.unverified_rows(early) == ()
    assert GRADER.unverified_rows(late_a) == ("eha-ebmt-icaht-2023:window-late",
                                              "eha-ebmt-icaht-2023:late-min-measurements")
    assert "unverified-criteria" in late_a.flags


@pytest.mark.parametrize(("cells", "count"), [
    pytest.param("LLLHHHLL", 5, id="stable-recovery-not-counted"),
    pytest.param("LLLHHLL", 7, id="two-days-above-counted"),
    pytest.param("HHLLHH", 2, id="leading-and-trailing-above-not-counted"),
    pytest.param("LHL", 3, id="one-day-above-counted"),
    pytest.param("", 0, id="empty"),
])
def test_cumulative_counting(cells: str, count: int) -> None:
    assert cumulative([c == "L" for c in cells], last=30, stable=3) == count


def test_cumulative_counts_only_days_of_the_window() -> None:
    assert cumulative([True] * 5, last=2, stable=3) == 3
    assert days_text([5, 0, 1, 2, 9, 10]) == "0-2, 5, 9-10"


def test_table_rejects_overlapping_bands() -> None:
    data = msgspec.to_builtins(load_yaml_table("eha-ebmt-icaht-2023.yaml", IcahtTable))
    data["early"][1]["min_days"] = 6
    with pytest.raises(msgspec.ValidationError, match="overlap"):
        msgspec.convert(data, IcahtTable)
