"""Infections after CAR-T, case by case (grading.md 6.1-6.4): windows, pathogen types, prophylaxis at onset
and the CTCAE v5.0 grade suggested from treatment, both sides of every boundary.

Each case names the rows of mappings/infection-grading.yaml it covers (`covers`); a meta-test checks that
every row (and every setting) has at least one case.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from fhirbuild import PatientBuilder
from helpers import run
from test_architecture import FORBIDDEN_IN_PURE, PKG, imports

from cart_fhir.errors import ConfigError
from cart_fhir.grading.infections import (
    MISSING_DEATH_CAUSE,
    MISSING_TREATMENT,
    NCIT,
    InfectionGrader,
    InfectionGradingTable,
)
from cart_fhir.grading.registry import load_all
from cart_fhir.grading.result import Event, State
from cart_fhir.tables import InfectionRow, load_tables, load_yaml_table
from cart_fhir.timeline import Course

G, AL, NA = "graded", "at-least", "not-assessable"
SCT = "http://snomed.info/sct"
CODES = {"pneumonia": "233604007", "sepsis": "91302008", "bacteremia": "5758002", "uti": "68566005",
         "cmv": "28944009", "covid": "840539006", "influenza": "6142004", "zoster": "4740000"}
RX = {"levofloxacin": "82122", "ciprofloxacin": "2551", "acyclovir": "281", "valacyclovir": "73645",
      "vancomycin": "11124", "norepinephrine": "7512"}
IV, PO = "47625008", "26643006"
TABLES = load_all()
TABLE = TABLES.get(InfectionGradingTable)
GRADERS = {"day-30": InfectionGrader(TABLE, TABLES.drugs, TABLES.infections),
           "hill-2018": InfectionGrader(TABLE, TABLES.drugs, TABLES.infections, window_profile="hill-2018")}


# ---- builders --------------------------------------------------------------------------------------

Span = tuple[int, str] | None
Build = Callable[[PatientBuilder], Any]


def inf(b: PatientBuilder, key: str, day: int, hhmm: str = "08:00", abatement: Span = None) -> str:
    """A coded infection Condition; returns its reference for reasonReference."""
    res = b.coded_condition(SCT, CODES[key], day, hhmm, abatement=abatement)  # type: ignore[attr-defined]
    return f"Condition/{res['id']}"


def med(b: PatientBuilder, name: str, day: int, hhmm: str = "12:00", **kw: Any) -> dict[str, Any]:
    """An anti-infective (RxNorm code where verified, else matched by name) or vasopressor."""
    return b.medication(name, day, hhmm, rxnorm=RX.get(name), **kw)  # type: ignore[attr-defined]


def statement(b: PatientBuilder, name: str, day: int, end: Span = None, **kw: Any) -> None:
    """A MedicationStatement taken from `day`: open-ended (status active) unless `end` is given."""
    res = med(b, name, day, "08:00", end=end, resource_type="MedicationStatement",
              status="completed" if end else "active", **kw)
    if end is None:
        res["effectivePeriod"] = {"start": res.pop("effectiveDateTime")}


def linked(name: str, key: str, route: str | None, day: int = 5, start: int | None = None) -> Build:
    """An infection on `day` and an anti-infective linked to it by reasonReference, started on `start`."""
    def build(b: PatientBuilder) -> None:
        med(b, name, day if start is None else start, route=route, reason_ref=inf(b, key, day))
    return build


def levo_period(end: tuple[int, str]) -> Build:
    return lambda b: med(b, "levofloxacin", -3, "08:00", end=end, route=PO)


# ---- running a case -------------------------------------------------------------------------------

def grade(engine: Any, b: PatientBuilder, profile: str = "day-30", override: dict[str, str] | None = None
          ) -> tuple[Event, ...]:
    course: Course = run(engine, b.bundle()).patients[0].courses[0].course
    if override:  # another CTCAE term / pathogen type than the infections.yaml row gives
        course.conditions = [(d, dataclasses.replace(f, attributes=_with(f.attributes, override)))
                             for d, f in course.conditions]
    return GRADERS[profile].grade(course).events


def _with(attrs: tuple[tuple[str, str], ...], override: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple({**dict(attrs), **override}.items())


def summary(ev: Event) -> dict[str, Any]:
    a = ev.assessment
    assert a is not None
    return {"grade": (ev.state.value, ev.max_grade), "window": ev.detail("window"), "type": ev.detail("type"),
            "site": ev.detail("site"), "prophylaxis": ev.detail("prophylaxis"),
            "agents": ev.detail("prophylaxis_agents"), "classes": ev.detail("prophylaxis_classes"),
            "term": ev.term[1] if ev.term else None, "onset_day": ev.onset_day, "flags": set(a.flags),
            "missing": a.missing, "evidence": {e.split("/")[0] for e in a.evidence}}


def case(cid: str, covers: list[str], build: Build, expect: dict[str, Any],
         profile: str = "day-30", override: dict[str, str] | None = None, pick: int = 0) -> Any:
    return pytest.param(covers, build, expect, profile, override, pick, id=cid)


def seq(*steps: Build) -> Callable[[PatientBuilder], None]:
    def build(b: PatientBuilder) -> None:
        for s in steps:
            s(b)
    return build


def pneumonia(day: int = 5, hhmm: str = "08:00", abatement: Span = None
              ) -> Build:
    return lambda b: inf(b, "pneumonia", day, hhmm, abatement)


def cmv(day: int = 10, abatement: Span = None) -> Build:
    return lambda b: inf(b, "cmv", day, "08:00", abatement)


def iv_vanco_for_pneumonia(abatement: Span = None) -> Build:
    return lambda b: med(b, "vancomycin", 5, route=IV, reason_ref=inf(b, "pneumonia", 5, "08:00", abatement))


def foscarnet_treatment(day: int) -> Build:
    return lambda b: med(b, "foscarnet", day, route=IV, reason_text="CMV treatment")


def norepi(day: int, start: str, end_day: int, end: str) -> Build:
    return lambda b: med(b, "norepinephrine", day, start, end=(end_day, end))


CASES = [
    # --- time windows (6.1): default day 0-30 / 31-90 / > 90; Hill 2018 profile 0-28 / 29-90
    case("window-day0-after-infusion-early", ["window:day-30:early"], pneumonia(0, "12:00"),
         {"window": "early", "onset_day": 0}),
    case("window-day30-early", ["window:day-30:early"], pneumonia(30), {"window": "early"}),
    case("window-day31-late", ["window:day-30:late"], pneumonia(31), {"window": "late"}),
    case("window-day90-late", ["window:day-30:late"], pneumonia(90), {"window": "late"}),
    case("window-day91-very-late", ["window:day-30:very-late"], pneumonia(91), {"window": "very-late"}),
    case("window-hill-day28-early", ["window:hill-2018:early", "setting:window_profile"], pneumonia(28),
         {"window": "early"}, profile="hill-2018"),
    case("window-hill-day29-late", ["window:hill-2018:late"], pneumonia(29), {"window": "late"},
         profile="hill-2018"),
    case("window-hill-day90-late", ["window:hill-2018:late"], pneumonia(90), {"window": "late"},
         profile="hill-2018"),
    case("window-hill-day91-very-late", ["window:hill-2018:very-late"], pneumonia(91),
         {"window": "very-late"}, profile="hill-2018"),
    case("infection-day-minus2-not-reported", [], pneumonia(-2), {"events": 0}),
    case("infection-day0-before-infusion-not-reported", [], pneumonia(0, "09:00"), {"events": 0}),
    # --- pathogen type, site, CTCAE term (6.1, 6.2) and the grades each term has
    case("type-bacterial-bacteremia-grade2-only", ["term:Bacteremia"], lambda b: inf(b, "bacteremia", 3),
         {"type": "bacterial", "site": "bloodstream", "term": "C143206", "grade": (G, 2), "missing": ()}),
    case("type-viral-cmv-no-treatment-not-assessable", ["term:Cytomegalovirus infection reactivation"], cmv(),
         {"type": "viral", "term": "C143207", "grade": (NA, None), "missing": (MISSING_TREATMENT,)}),
    case("type-viral-covid-not-assessable", ["term:Infections and infestations - Other, specify"],
         lambda b: inf(b, "covid", 12), {"type": "viral", "site": "respiratory", "term": "C143581",
                                         "grade": (NA, None)}),
    case("type-viral-influenza-other-term", [], lambda b: inf(b, "influenza", 40),
         {"type": "viral", "term": "C143581", "window": "late"}),
    case("type-viral-zoster-oral-valacyclovir-linked-grade2", ["term:Shingles", "route:oral"],
         linked("valacyclovir", "zoster", PO, day=60),
         {"type": "viral", "site": "skin-soft-tissue", "term": None, "grade": (G, 2), "prophylaxis": False}),
    case("type-other-pneumonia-no-treatment-at-least-2", ["term:Lung infection"], pneumonia(),
         {"type": "other", "site": "lower-respiratory", "term": "C143657", "grade": (AL, 2),
          "missing": (MISSING_TREATMENT,)}),
    case("type-other-uti-iv-by-timing-grade3", ["term:Urinary tract infection", "route:intravenous"],
         lambda b: (inf(b, "uti", 7), med(b, "vancomycin", 7, route=IV)),
         {"type": "other", "site": "urinary", "grade": (G, 3), "flags": {"treatment-linked-by-timing"}}),
    case("type-other-sepsis-no-treatment-at-least-3", ["term:Sepsis"], lambda b: inf(b, "sepsis", 4),
         {"type": "other", "term": "C143827", "grade": (AL, 3), "missing": (MISSING_TREATMENT,)}),
    case("type-fungal-fungemia-pressor-capped-3", ["term:Fungemia", "support:vasopressor"],
         seq(pneumonia(), norepi(6, "08:00", 6, "20:00")), {"type": "fungal", "grade": (G, 3),
                                                           "flags": {"ctcae-term-capped"}},
         override={"ctcae_term": "Fungemia", "pathogen_type": "fungal", "site": "bloodstream"}),
    # --- prophylaxis running at onset (6.1, 6.4 Optimization)
    case("prophylaxis-levofloxacin-period-covers-onset-not-treatment", [],
         seq(levo_period((20, "08:00")), pneumonia()),
         {"prophylaxis": True, "agents": "levofloxacin", "classes": "antibacterial", "grade": (AL, 2)}),
    case("prophylaxis-stopped-before-onset", [], seq(levo_period((4, "08:00")), pneumonia()),
         {"prophylaxis": False, "agents": "", "classes": ""}),
    case("prophylaxis-statement-active-runs-to-horizon", [],
         seq(lambda b: statement(b, "acyclovir", -5), pneumonia(40)),
         {"prophylaxis": True, "agents": "acyclovir", "classes": "antiviral"}),
    case("prophylaxis-statement-ended-before-onset", [],
         seq(lambda b: statement(b, "acyclovir", -5, end=(10, "08:00")), pneumonia(40)),
         {"prophylaxis": False}),
    case("prophylaxis-single-dose-23h-before-onset-covers", ["setting:prophylaxis_dose_cover_hours"],
         seq(lambda b: med(b, "levofloxacin", 4, "09:00", route=PO), pneumonia(5, "08:00")),
         {"prophylaxis": True, "agents": "levofloxacin"}),
    case("prophylaxis-single-dose-25h-before-onset-not", ["setting:prophylaxis_dose_cover_hours"],
         seq(lambda b: med(b, "levofloxacin", 4, "09:00", route=PO), pneumonia(5, "10:00")),
         {"prophylaxis": False, "grade": (AL, 2)}),
    case("prophylaxis-two-agents-two-classes", [],
         seq(lambda b: statement(b, "acyclovir", -5), levo_period((20, "08:00")), pneumonia()),
         {"agents": "acyclovir, levofloxacin", "classes": "antiviral, antibacterial"}),
    case("prophylaxis-either-drug-with-prophylaxis-reason", [],
         seq(lambda b: med(b, "ciprofloxacin", -2, "08:00", end=(15, "08:00"), route=PO,
                           reason_text="neutropenia prophylaxis"), pneumonia()),
         {"prophylaxis": True, "agents": "ciprofloxacin", "grade": (AL, 2)}),
    case("prophylaxis-ivig-by-name", [], seq(lambda b: med(b, "IVIG", 5, "07:00", route=IV), pneumonia()),
         {"prophylaxis": True, "classes": "immunoglobulin", "grade": (AL, 2)}),
    # --- grade from treatment (6.2 automatable part)
    case("grade2-oral-ciprofloxacin-linked-by-reason", ["route:oral"],
         linked("ciprofloxacin", "pneumonia", PO),
         {"grade": (G, 2), "evidence": {"Condition", "MedicationAdministration"}}),
    case("grade3-iv-vancomycin-linked-by-reason", ["route:intravenous"], iv_vanco_for_pneumonia(),
         {"grade": (G, 3), "evidence": {"Condition", "MedicationAdministration"}}),
    case("grade3-linked-by-reason-any-time", [], linked("vancomycin", "pneumonia", IV, start=15),
         {"grade": (G, 3)}),
    case("timing-iv-started-onset-plus-2-days-grade3", ["setting:treatment_after_onset_days"],
         seq(cmv(10), lambda b: med(b, "ganciclovir", 12, "23:00", route=IV)),
         {"grade": (G, 3), "flags": {"treatment-linked-by-timing"}}),
    case("timing-iv-started-onset-plus-3-days-not-treatment", ["setting:treatment_after_onset_days"],
         seq(cmv(10), lambda b: med(b, "ganciclovir", 13, "00:30", route=IV)), {"grade": (NA, None)}),
    case("timing-iv-started-23h-before-onset-grade3", ["setting:link_before_onset_hours"],
         seq(cmv(10), lambda b: med(b, "ganciclovir", 9, "09:00", route=IV)), {"grade": (G, 3)}),
    case("timing-iv-started-25h-before-onset-not-treatment", ["setting:link_before_onset_hours"],
         seq(cmv(10), lambda b: med(b, "ganciclovir", 9, "07:00", route=IV)), {"grade": (NA, None)}),
    case("intent-treatment-reason-during-infection-grade3", [],
         seq(cmv(10, (30, "08:00")), foscarnet_treatment(20)),
         {"grade": (G, 3), "no_flags": {"treatment-linked-by-timing"}}),
    case("intent-treatment-after-abatement-not-counted", [],
         seq(cmv(10, (30, "08:00")), foscarnet_treatment(31)),
         {"grade": (NA, None)}),
    case("prophylactic-iv-pentamidine-not-treatment", [],
         seq(cmv(10), lambda b: med(b, "pentamidine", 10, "07:00", route=IV, reason_text="PJP prophylaxis")),
         {"grade": (NA, None), "prophylaxis": True, "agents": "pentamidine", "classes": "anti-pjp"}),
    case("prophylactic-agent-unlinked-iv-not-treatment", [],
         seq(lambda b: inf(b, "zoster", 10), lambda b: med(b, "acyclovir", 10, "09:00", route=IV)),
         {"grade": (NA, None), "prophylaxis": False}),
    case("prophylactic-agent-linked-by-reason-is-treatment", [], linked("acyclovir", "zoster", IV, day=10),
         {"grade": (G, 3), "prophylaxis": False}),
    case("treatment-linked-to-other-infection-not-counted", [],
         lambda b: (inf(b, "pneumonia", 5), med(b, "vancomycin", 5, route=IV, reason_ref=inf(b, "uti", 5))),
         {"grade": (AL, 2)}),
    case("treatment-linked-to-this-infection-of-two", [],
         lambda b: (inf(b, "pneumonia", 5), med(b, "vancomycin", 5, route=IV, reason_ref=inf(b, "uti", 5))),
         {"grade": (G, 3), "site": "urinary"}, pick=1),
    case("route-unknown-at-least-2", ["setting:treatment_min_grade"],
         linked("ganciclovir", "cmv", None, day=10),
         {"grade": (AL, 2), "flags": {"route-unknown"}, "missing_contains": "route (oral or intravenous)"}),
    case("route-unknown-plus-iv-graded-3", [],
         lambda b: (c := inf(b, "cmv", 10), med(b, "ganciclovir", 10, reason_ref=c),
                    med(b, "foscarnet", 11, route=IV, reason_ref=c)), {"grade": (G, 3), "missing": ()}),
    case("sepsis-oral-raised-to-3", [], linked("ciprofloxacin", "sepsis", PO), {"grade": (G, 3)}),
    case("sepsis-route-unknown-graded-3", [], linked("vancomycin", "sepsis", None), {"grade": (G, 3)}),
    case("bacteremia-iv-capped-grade2", [], linked("vancomycin", "bacteremia", IV),
         {"grade": (G, 2), "flags": {"ctcae-term-capped"}}),
    # --- organ support during the infection -> 4
    case("grade4-norepinephrine-during-infection", ["support:vasopressor"],
         seq(iv_vanco_for_pneumonia(), norepi(6, "08:00", 6, "20:00")),
         {"grade": (G, 4), "flags": {"organ-support-attribution"}}),
    case("grade4-vasopressin-alone", ["support:vasopressor"],
         seq(pneumonia(), lambda b: b.drug("vasopressin", 6, "08:00", end=(6, "12:00"))), {"grade": (G, 4)}),
    case("grade4-mechanical-ventilation", ["support:mechanical-ventilation"],
         seq(iv_vanco_for_pneumonia(), lambda b: b.oxygen(7, "09:00", "mechanical-ventilation")),
         {"grade": (G, 4), "evidence": {"Condition", "Observation"}}),
    case("cpap-is-not-organ-support-grade3", ["support:mechanical-ventilation"],
         seq(iv_vanco_for_pneumonia(), lambda b: b.oxygen(7, "09:00", "cpap")), {"grade": (G, 3)}),
    case("pressor-open-infection-day14-counts", ["setting:open_infection_days"],
         seq(pneumonia(), norepi(19, "07:00", 19, "09:00")), {"grade": (G, 4)}),
    case("pressor-open-infection-after-14-days-not", ["setting:open_infection_days"],
         seq(pneumonia(), norepi(19, "08:30", 19, "10:00")), {"grade": (AL, 2)}),
    case("pressor-after-abatement-not-counted", [],
         seq(pneumonia(5, "08:00", (8, "08:00")), norepi(9, "08:00", 9, "12:00")), {"grade": (AL, 2)}),
    case("pressor-ended-25h-before-onset-not-counted", ["setting:link_before_onset_hours"],
         seq(pneumonia(), norepi(4, "05:00", 4, "07:00")), {"grade": (AL, 2)}),
    # --- death: never grade 5 by itself (decision 2)
    case("death-during-infection-flagged-not-grade5", [],
         seq(iv_vanco_for_pneumonia(), lambda b: b.deceased(8, "10:00")),
         {"grade": (AL, 3), "flags": {"death-during-infection"}, "missing": (MISSING_DEATH_CAUSE,)}),
    case("death-after-abatement-not-flagged", [],
         seq(iv_vanco_for_pneumonia((7, "08:00")), lambda b: b.deceased(20, "10:00")),
         {"grade": (G, 3), "no_flags": {"death-during-infection"}}),
    case("death-during-untreated-cmv-stays-not-assessable", [], seq(cmv(), lambda b: b.deceased(12, "10:00")),
         {"grade": (NA, None), "flags": {"death-during-infection"}}),
    # --- the other CTCAE v5.0 terms: grades available per term (6.2)
    case("term-upper-respiratory-iv-grade3", ["term:Upper respiratory infection"], iv_vanco_for_pneumonia(),
         {"grade": (G, 3)}, override={"ctcae_term": "Upper respiratory infection"}),
    case("term-sinusitis-iv-grade3", ["term:Sinusitis"], iv_vanco_for_pneumonia(), {"grade": (G, 3)},
         override={"ctcae_term": "Sinusitis"}),
    case("term-catheter-iv-grade3", ["term:Catheter related infection"], iv_vanco_for_pneumonia(),
         {"grade": (G, 3)}, override={"ctcae_term": "Catheter related infection"}),
    case("term-skin-no-treatment-not-assessable", ["term:Skin infection"], pneumonia(), {"grade": (NA, None)},
         override={"ctcae_term": "Skin infection"}),
    case("term-enterocolitis-no-treatment-at-least-2", ["term:Enterocolitis infectious"], pneumonia(),
         {"grade": (AL, 2)}, override={"ctcae_term": "Enterocolitis infectious"}),
    case("term-viremia-no-treatment-at-least-2", ["term:Viremia"], pneumonia(), {"grade": (AL, 2)},
         override={"ctcae_term": "Viremia"}),
    case("term-hsv-oral-grade2", ["term:Herpes simplex reactivation"],
         linked("valacyclovir", "pneumonia", PO),
         {"grade": (G, 2)}, override={"ctcae_term": "Herpes simplex reactivation"}),
    case("term-ebv-iv-grade3", ["term:Epstein-Barr virus infection reactivation"], iv_vanco_for_pneumonia(),
         {"grade": (G, 3)}, override={"ctcae_term": "Epstein-Barr virus infection reactivation"}),
    case("term-hepatitis-b-pressor-grade4", ["term:Hepatitis B reactivation"],
         seq(pneumonia(), norepi(6, "08:00", 6, "20:00")), {"grade": (G, 4)},
         override={"ctcae_term": "Hepatitis B reactivation"}),
    case("term-meningitis-no-treatment-at-least-3", ["term:Meningitis"], pneumonia(), {"grade": (AL, 3)},
         override={"ctcae_term": "Meningitis"}),
    case("term-encephalitis-oral-raised-to-3", ["term:Encephalitis infection"],
         linked("ciprofloxacin", "pneumonia", PO), {"grade": (G, 3)},
         override={"ctcae_term": "Encephalitis infection"}),
]


@pytest.mark.parametrize("covers,build,expect,profile,override,pick", CASES)
def test_infection_criteria(engine: Any, covers: list[str], build: Build, expect: dict[str, Any],
                            profile: str, override: dict[str, str] | None, pick: int) -> None:
    b = PatientBuilder()
    build(b)
    events = grade(engine, b, profile, override)
    if "events" in expect:
        assert len(events) == expect["events"]
        return
    got = summary(events[pick])
    for key, want in expect.items():
        if key == "flags":
            assert want <= got["flags"], got
        elif key == "no_flags":
            assert not want & got["flags"], got
        elif key == "missing_contains":
            assert any(want in m for m in got["missing"]), got
        else:
            assert got[key] == want, (key, got)


def test_every_infection_grading_row_has_a_case() -> None:
    t = load_yaml_table("infection-grading.yaml", InfectionGradingTable)
    settings = {f"setting:{k}" for k in t.settings.__struct_fields__ if k not in ("id", "verified", "source")}
    rows = settings | {f"window:{w.profile}:{w.window}" for w in t.windows} | \
        {f"term:{r.ctcae_term}" for r in t.terms} | {f"route:{r.route}" for r in t.routes} | \
        {f"support:{r.support}" for r in t.organ_support}
    covered = {c for p in CASES for c in p.values[0]} | MICROBIOLOGY_COVERS
    assert rows - covered == set()
    assert covered - rows == set(), "a case names a row the table does not have"


# Rows covered by the microbiology tests at the end of this file.
MICROBIOLOGY_COVERS = {"setting:same_episode_days", "term:Bacteremia"}
MICROBIOLOGY_CODES = {"600-7", "94500-6", "72493-0"}


def test_every_infection_code_has_a_case() -> None:
    assert {r.code for r in load_tables().infections.rows} == set(CODES.values()) | MICROBIOLOGY_CODES


def test_event_shape(engine: Any) -> None:
    """The Event and its Assessment as the writers read them (output-contract.md section 3)."""
    b = PatientBuilder()
    c = inf(b, "pneumonia", 5, "08:00", (12, "18:00"))
    med(b, "vancomycin", 5, route=IV, reason_ref=c)
    statement(b, "acyclovir", -5)
    (ev,) = grade(engine, b)
    assert (ev.key, ev.condition_ref, ev.evidence) == (c, c, (c,))
    assert (ev.onset.isoformat(), ev.onset_day) == ("2024-05-06T08:00:00+01:00", 5)
    assert ev.abatement is not None and ev.abatement.isoformat() == "2024-05-13T18:00:00+01:00"
    assert ev.resolved_day == 12
    assert ev.term == (NCIT, "C143657", "Lung infection")
    assert [k for k, _ in ev.details][:5] == ["window", "type", "prophylaxis", "site", "prophylaxis_agents"]
    a = ev.assessment
    assert a is not None and (a.code, a.state, a.value, a.table) == ("infection-grade-ctcae", State.GRADED, 3,
                                                                     "infection-grading-ctcae v2")
    assert (a.start, a.end) == (ev.onset, ev.abatement)
    assert a.evidence == (c, "MedicationAdministration/vancomycin-3")
    assert a.supporting == ("MedicationStatement/acyclovir-4",)
    assert "attribution-unconfirmed" in a.flags
    assert a.reasons[0].startswith("Pneumonia on day 5: early window")


def test_anti_infective_names_match_the_right_agent(engine: Any) -> None:
    """Name-only rows: valacyclovir is not read as acyclovir, valganciclovir not as ganciclovir."""
    b = PatientBuilder()
    names = ("Valacyclovir 500 mg tablet", "valganciclovir", "Acyclovir", "piperacillin-tazobactam 4.5 g")
    for name in names:
        b.medication(name, 3, "08:00")  # type: ignore[attr-defined]
    course = run(engine, b.bundle()).patients[0].courses[0].course
    assert [d.agent for d in course.drugs] == ["valacyclovir", "valganciclovir", "acyclovir",
                                               "piperacillin-tazobactam"]


def test_unknown_window_profile_stops_start_up() -> None:
    with pytest.raises(ConfigError):
        InfectionGrader(TABLE, TABLES.drugs, TABLES.infections, window_profile="day-45")


def test_infection_row_with_unknown_ctcae_term_stops_start_up() -> None:
    base = load_tables().infections
    bad = msgspec.structs.replace(base, rows=(*base.rows, InfectionRow(
        system=SCT, code="1", display="x", key="x", pathogen_type="other", site="unspecified",
        ctcae_term="Not a CTCAE term", verified=False, source="test")))
    with pytest.raises(ConfigError, match="Not a CTCAE term"):
        InfectionGrader(TABLE, TABLES.drugs, bad)


def test_window_rows_must_be_contiguous() -> None:
    data = msgspec.to_builtins(load_yaml_table("infection-grading.yaml", InfectionGradingTable))
    data["windows"][1]["from_day"] = 32  # a gap after day 30
    with pytest.raises(msgspec.ValidationError, match="contiguously"):
        msgspec.convert(data, InfectionGradingTable)


def test_infection_grader_is_pure() -> None:
    mods = imports(PKG / "grading" / "infections.py")
    assert not {m for m in mods for f in FORBIDDEN_IN_PURE if m == f or m.startswith(f + ".")}



# ---- positive microbiology results as infections (grading.md 6.1, 11.19) ---------------------------------

def _culture(b: PatientBuilder, day: int, organism: str | None, interpretation: str | None = None,
             loinc: str = "600-7") -> dict:
    value: dict = {}
    if organism is not None:
        value["valueCodeableConcept"] = {"text": organism}
    obs = b.obs({"system": "http://loinc.org", "code": loinc}, day, "09:00", "culture", category="laboratory",
                **value)
    if interpretation:
        obs["interpretation"] = [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": interpretation}]}]
    return obs


@pytest.mark.parametrize(("organism", "interpretation", "expected"), [
    pytest.param("Escherichia coli", None, 1, id="micro-organism-named-positive"),
    pytest.param("No growth after 5 days", None, 0, id="micro-no-growth-negative"),
    pytest.param(None, "POS", 1, id="micro-interpretation-pos"),
    pytest.param("Escherichia coli", "NEG", 0, id="micro-interpretation-neg-wins"),
])
def test_positive_blood_culture_is_an_infection(engine, organism, interpretation, expected) -> None:
    from cart_fhir.grading.result import Toxicity

    b = PatientBuilder()
    _culture(b, 5, organism, interpretation)
    res = run(engine, b.bundle())
    events = [e for e in res.patients[0].courses[0].events if e.toxicity == Toxicity.INFECTION]
    assert len(events) == expected
    if expected:
        ev = events[0]
        assert (ev.detail("type"), ev.detail("window"), ev.onset_day) == ("bacterial", "early", 5)
        assert ev.condition_ref is None  # a Condition of our own is written for it
        assert ev.max_grade == 2  # CTCAE Bacteremia has grade 2 only


def test_culture_within_14_days_of_a_diagnosed_infection_is_the_same_episode(engine) -> None:
    from cart_fhir.grading.result import Toxicity

    b = PatientBuilder()
    b.coded_condition(SCT, "5758002", 5, "10:00")  # bacteremia diagnosed
    _culture(b, 4, "Klebsiella pneumoniae")
    _culture(b, 30, "Enterococcus faecium")  # a later, separate episode
    res = run(engine, b.bundle())
    days = sorted(e.onset_day for e in res.patients[0].courses[0].events if e.toxicity == Toxicity.INFECTION)
    assert days == [5, 30]


@pytest.mark.parametrize(("loinc", "value", "positive"), [
    pytest.param("94500-6", {"valueCodeableConcept": {"text": "Detected"}}, True, id="micro-sars-cov-2-detected"),
    pytest.param("94500-6", {"valueCodeableConcept": {"text": "Not detected"}}, False,
                 id="micro-sars-cov-2-not-detected"),
    pytest.param("72493-0", {"valueQuantity": {"value": 1200, "unit": "[IU]/mL"}}, True, id="micro-cmv-load-positive"),
    pytest.param("72493-0", {"valueQuantity": {"value": 35, "comparator": "<", "unit": "[IU]/mL"}}, False,
                 id="micro-cmv-below-limit"),
])
def test_pcr_and_viral_load_results(engine, loinc, value, positive) -> None:
    from cart_fhir.grading.result import Toxicity

    b = PatientBuilder()
    b.obs({"system": "http://loinc.org", "code": loinc}, 20, "09:00", "pcr", category="laboratory", **value)
    res = run(engine, b.bundle())
    events = [e for e in res.patients[0].courses[0].events if e.toxicity == Toxicity.INFECTION]
    assert bool(events) is positive
    if positive:
        assert events[0].detail("type") == "viral"
