"""Treatments and response of CRS/ICANS episodes, case by case (grading.md 8.1-8.5, decision 12).

Each case names the rows of mappings/treatment-response.yaml it covers (`covers`); a meta-test checks that
every row has at least one case. Times are (day, "HH:MM") from the infusion on day 0 at 10:00 +01:00.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fhirbuild import PatientBuilder
from helpers import run

import cart_fhir
from cart_fhir.errors import ConfigError
from cart_fhir.grading.registry import load_all
from cart_fhir.grading.result import State, Toxicity
from cart_fhir.grading.treatments import TreatmentAnalyzer, TreatmentResponse
from cart_fhir.grading.treatments.table import AgentRow, TreatmentTable
from cart_fhir.pipeline import Engine

CRS, ICANS = Toxicity.CRS, Toxicity.ICANS
IT = "72607000"  # SNOMED CT intrathecal route
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
TOX = "https://cart-fhir.org/fhir/CodeSystem/cart-toxicity"
SCT = "http://snomed.info/sct"
RXN = {"tocilizumab": "612865", "dexamethasone": "3264", "methylprednisolone": "6902", "anakinra": "72435",
       "prednisone": "8640", "hydrocortisone": "5492", "methotrexate": "6851", "siltuximab": None}
TZ = timezone(timedelta(hours=1))
TABLES = load_all()
ANALYZER = TreatmentAnalyzer(TABLES.get(TreatmentTable), TABLES.drugs, TABLES.icans.settings)
B = PatientBuilder


def at(day: int, hhmm: str) -> datetime:
    h, m = map(int, hhmm.split(":"))
    return datetime(2024, 5, 1 + day, h, m, tzinfo=TZ)


def med(b: B, name: str, day: int, hhmm: str, mg: float | None = 10, **kw: Any) -> dict[str, Any]:
    return b.medication(name, day, hhmm, rxnorm=RXN[name], dose_mg=mg, **kw)  # type: ignore[attr-defined]


def dex(b: B, day: int, hhmm: str, mg: float | None = 10, **kw: Any) -> dict[str, Any]:
    return med(b, "dexamethasone", day, hhmm, mg, **kw)


def toci(b: B, day: int, hhmm: str, **kw: Any) -> dict[str, Any]:
    return med(b, "tocilizumab", day, hhmm, 600, **kw)


def mp(b: B, day: int, hhmm: str, mg: float) -> dict[str, Any]:
    return med(b, "methylprednisolone", day, hhmm, mg)


def dex_q6h(b: B, day: int, days: int = 1, every: int = 6) -> None:
    """Dexamethasone 10 mg every `every` hours from `day` 10:00 for `days` days."""
    for k in range(days * 24 // every):
        t = at(day, "10:00") + timedelta(hours=k * every)
        dex(b, (t - at(0, "00:00")).days, t.strftime("%H:%M"))


def fever(b: B, *days: int) -> None:
    for d in days:
        b.temp(d, "06:00", 39.0)


def crs_grade2(b: B, *days: int) -> None:
    """Fever on the first day, 3 L/min oxygen each day: CRS grade 2 (steroids lift the fever gate)."""
    fever(b, days[0])
    for d in days:
        b.oxygen(d, "07:00", "nasal-cannula", 3)


def ices(b: B, *scores: int, start: int = 1, hhmm: str = "08:00") -> None:
    """One ICE score a day from day `start` (ICE 0-2 grade 3, 3-6 grade 2, 7-9 grade 1, 10 grade 0)."""
    for k, score in enumerate(scores):
        b.ice(start + k, hhmm, score)


def both_open(b: B) -> None:
    """CRS (fever) and ICANS (ICE 5, grade 2) both open on days 1-2, from 06:00 and 07:00."""
    fever(b, 1, 2)
    ices(b, 5, 5, hhmm="07:00")


def idm(b: B, day: int, hhmm: str) -> None:
    dex(b, day, hhmm, 5, route=IT)
    med(b, "methotrexate", day, hhmm, 12, route=IT)


def reason(b: B, system: str, code: str, day: int = 1) -> str:
    return "Condition/" + b.coded_condition(system, code, day, "05:00")["id"]  # type: ignore[attr-defined]


def analyze(engine: Engine, b: B, tox: Toxicity) -> list[TreatmentResponse]:
    cr = run(engine, b.bundle()).patients[0].courses[0]
    other = ICANS if tox == CRS else CRS
    return ANALYZER.analyze(cr.course, tox, cr.days[tox], cr.episodes[tox], cr.episodes[other])


def case(cid: str, covers: list[str], build: Callable[[B], Any], tox: Toxicity, expected: dict[str, Any],
         **patient: Any) -> Any:
    return pytest.param(covers, build, tox, expected, patient, id=cid)


LINKING = [
    # --- T1 by timing: from the onset to the resolution, by the toxicity the agent treats
    case("link-tocilizumab-2h-after-crs-onset", ["agent:tocilizumab"],
         lambda b: (fever(b, 1, 2), toci(b, 1, "08:00")), CRS,
         {"treatments": ("tocilizumab",), "hours_onset_to_first_treatment": 2.0, "first_treatment_day": 1,
          "first_treatment_at": at(1, "08:00"), "component:time-to-first-treatment": 2}),
    case("link-prophylactic-tocilizumab-before-onset-not-linked", ["agent:tocilizumab"],
         lambda b: (toci(b, 0, "12:00"), fever(b, 1, 2)), CRS,
         {"treatments": (), "first_treatment_at": None, "hours_onset_to_first_treatment": None,
          "component:time-to-first-treatment": None}),
    case("link-tocilizumab-1min-before-onset-not-linked", ["agent:tocilizumab"],
         lambda b: (toci(b, 1, "05:59"), fever(b, 1, 2)), CRS, {"treatments": ()}),
    case("link-tocilizumab-at-onset-linked", ["agent:tocilizumab"],
         lambda b: (toci(b, 1, "06:00"), fever(b, 1, 2)), CRS,
         {"treatments": ("tocilizumab",), "hours_onset_to_first_treatment": 0.0}),
    case("link-prophylaxis-intent-not-linked", ["agent:dexamethasone"],
         lambda b: (fever(b, 1, 2), dex(b, 1, "08:00", reason_text="ICANS prophylaxis")), CRS,
         {"treatments": ()}),
    case("link-after-resolution-not-linked", ["agent:dexamethasone"],
         lambda b: (fever(b, 1), b.temp(2, "06:00", 37.0), dex(b, 2, "08:00")), CRS, {"treatments": ()}),
    case("link-tocilizumab-does-not-treat-icans", ["agent:tocilizumab"],
         lambda b: (ices(b, 5, 5), toci(b, 1, "09:00")), ICANS, {"treatments": ()}),
    case("link-siltuximab-crs", ["agent:siltuximab"],
         lambda b: (fever(b, 1, 2), med(b, "siltuximab", 1, "09:00", 800)), CRS,
         {"treatments": ("siltuximab",), "unverified": "siltuximab"}),
    case("link-steroid-shared-icans-side", ["agent:dexamethasone"],
         lambda b: (both_open(b), dex(b, 1, "09:00")), ICANS,
         {"treatments": ("dexamethasone",), "flag": "shared-treatment"}),
    case("link-steroid-shared-crs-side", ["agent:dexamethasone"],
         lambda b: (both_open(b), dex(b, 1, "09:00")), CRS,
         {"treatments": ("dexamethasone",), "flag": "shared-treatment"}),
    case("link-anakinra-icans-only-open", ["agent:anakinra"],
         lambda b: (ices(b, 5, 5), med(b, "anakinra", 1, "09:00", 100)), ICANS,
         {"treatments": ("anakinra",), "no-flag": "shared-treatment"}),
    case("link-intrathecal-not-crs", ["intrathecal"],
         lambda b: (fever(b, 1, 2), ices(b, 2, 2, hhmm="07:00"), idm(b, 1, "09:00")), CRS,
         {"treatments": ()}),
    case("link-intrathecal-to-icans", ["intrathecal"],
         lambda b: (fever(b, 1, 2), ices(b, 2, 2, hhmm="07:00"), idm(b, 1, "09:00")), ICANS,
         {"treatments": ("idm",), "idm": True, "idm_doses": 2, "dexamethasone_equivalent_mg": 0.0}),
    case("link-systemic-methotrexate-not-a-treatment", ["intrathecal"],
         lambda b: (ices(b, 2, 2), med(b, "methotrexate", 1, "09:00", 12)), ICANS,
         {"treatments": (), "idm": False}),
    # --- T1 by reasonReference: beats timing
    case("reason-site-crs-condition-beats-timing", ["reason:D89.83", "agent:dexamethasone"],
         lambda b: (both_open(b), dex(b, 1, "09:00", reason_ref=reason(b, ICD, "D89.832"))), CRS,
         {"treatments": ("dexamethasone",), "no-flag": "shared-treatment"}),
    case("reason-site-crs-condition-not-linked-to-icans", ["reason:D89.83"],
         lambda b: (both_open(b), dex(b, 1, "09:00", reason_ref=reason(b, ICD, "D89.832"))), ICANS,
         {"treatments": ()}),
    case("reason-icd-without-dot-matches", ["reason:D89.83"],
         lambda b: (fever(b, 1, 2), dex(b, 1, "09:00", reason_ref=reason(b, ICD, "D89833"))), CRS,
         {"treatments": ("dexamethasone",)}),
    case("reason-crs-and-icans-conditions-shared", ["reason:D89.83", "reason:G92.0"],
         lambda b: (both_open(b), dex(b, 1, "09:00", reason_ref=reason(b, ICD, "D89.832")),
                    b.resources[-1]["reasonReference"].append({"reference": reason(b, ICD, "G92.02")})),
         ICANS,
         {"treatments": ("dexamethasone",), "flag": "shared-treatment"}),
    case("reason-icans-g92-links-tocilizumab-to-icans", ["reason:G92.0"],
         lambda b: (ices(b, 5, 5), toci(b, 1, "09:00", reason_ref=reason(b, ICD, "G92.02"))), ICANS,
         {"treatments": ("tocilizumab",)}),
    case("reason-cart-toxicity-crs-not-icans", ["reason:crs"],
         lambda b: (both_open(b), med(b, "anakinra", 1, "09:00", 100, reason_ref=reason(b, TOX, "crs"))),
         ICANS, {"treatments": ()}),
    case("reason-cart-toxicity-icans", ["reason:icans"],
         lambda b: (both_open(b), med(b, "anakinra", 1, "09:00", 100, reason_ref=reason(b, TOX, "icans"))),
         ICANS, {"treatments": ("anakinra",), "no-flag": "shared-treatment"}),
    case("reason-other-condition-not-linked", ["reason:D89.83"],
         lambda b: (fever(b, 1, 2), dex(b, 1, "09:00", reason_ref=reason(b, SCT, "126952004"))), CRS,
         {"treatments": ()}),
    case("reason-unresolved-falls-back-to-timing", ["reason:D89.83"],
         lambda b: (fever(b, 1, 2), dex(b, 1, "09:00", reason_ref="Condition/elsewhere")), CRS,
         {"treatments": ("dexamethasone",), "flag": "reason-unresolved"}),
    case("reason-crs-given-23h-before-graded-onset", ["reason_window"],
         lambda b: (toci(b, 1, "07:00", reason_ref=reason(b, ICD, "D89.831")), fever(b, 2, 3)), CRS,
         {"treatments": ("tocilizumab",), "flag": "reason-linked-before-onset",
          "hours_onset_to_first_treatment": -23.0, "unverified": "reason_window"}),
    case("reason-crs-given-25h-before-graded-onset-not-linked", ["reason_window"],
         lambda b: (toci(b, 1, "05:00", reason_ref=reason(b, ICD, "D89.831")), fever(b, 2, 3)), CRS,
         {"treatments": ()}),
    case("reason-crs-taper-after-resolution-linked", ["reason_window", "agent:prednisone"],
         lambda b: (fever(b, 1), b.temp(2, "06:00", 37.0),
                    med(b, "prednisone", 4, "08:00", 20, reason_ref=reason(b, ICD, "D89.839"))), CRS,
         {"treatments": ("prednisone",), "flag": "reason-linked-after-resolution",
          "dexamethasone_equivalent_mg": 3.0}),
    case("reason-crs-4-days-after-resolution-not-linked", ["reason_window"],
         lambda b: (fever(b, 1), b.temp(2, "06:00", 37.0),
                    med(b, "prednisone", 5, "08:00", 20, reason_ref=reason(b, ICD, "D89.839"))), CRS,
         {"treatments": ()}),
]

EXPOSURE = [
    # --- T2 dexamethasone equivalents: systemic, in mg, never guessed
    case("dex-10mg-q6h-2days-80mg", ["agent:dexamethasone", "dose_unit"],
         lambda b: (fever(b, 1, 2, 3), dex_q6h(b, 1, days=2)), CRS,
         {"dexamethasone_equivalent_mg": 80.0, "steroid_days": 3,
          "component:dexamethasone-equivalent-mg": 80}),
    case("methylprednisolone-1000mg-187.5mg-dex", ["agent:methylprednisolone"],
         lambda b: (fever(b, 1, 2), mp(b, 1, "09:00", 1000)), CRS,
         {"dexamethasone_equivalent_mg": 187.5, "component:dexamethasone-equivalent-mg": 188}),
    case("hydrocortisone-100mg-3.75mg-dex", ["agent:hydrocortisone"],
         lambda b: (fever(b, 1, 2), med(b, "hydrocortisone", 1, "09:00", 100)), CRS,
         {"dexamethasone_equivalent_mg": 3.75}),
    case("intrathecal-dex-not-in-systemic-total", ["intrathecal", "agent:dexamethasone"],
         lambda b: (ices(b, 2, 2), dex(b, 1, "08:00"), dex(b, 1, "12:00", 12, route=IT)), ICANS,
         {"treatments": ("dexamethasone", "idm"), "dexamethasone_equivalent_mg": 10.0}),
    case("no-steroid-0mg", ["agent:tocilizumab"],
         lambda b: (fever(b, 1, 2), toci(b, 1, "08:00")), CRS,
         {"dexamethasone_equivalent_mg": 0.0, "steroid_days": 0, "component:dexamethasone-equivalent-mg": 0}),
    case("dose-in-grams-total-unknown", ["dose_unit"],
         lambda b: (fever(b, 1, 2), dex(b, 1, "08:00"),
                    mp(b, 1, "09:00", 1)["dosage"]["dose"].update(unit="g", code="g")), CRS,
         {"dexamethasone_equivalent_mg": None, "flag": "steroid-dose-unit-not-mg",
          "component:dexamethasone-equivalent-mg": None,
          "missing": "MedicationAdministration/methylprednisolone"}),
    case("dose-missing-total-unknown", ["dose_unit"],
         lambda b: (fever(b, 1, 2), dex(b, 1, "08:00", None)), CRS,
         {"dexamethasone_equivalent_mg": None, "flag": "steroid-dose-missing"}),
    case("statement-dose-count-unknown", ["dose_unit"],
         lambda b: (fever(b, 1, 2),
                    dex(b, 1, "08:00", end=(2, "08:00"), resource_type="MedicationStatement")),
         CRS, {"dexamethasone_equivalent_mg": None, "flag": "steroid-statement-dose-count-unknown"}),
    # --- tocilizumab dosing hints (8.1: <= 3 doses in 24 h, <= 4 in total)
    case("tocilizumab-4-doses-in-24h-flag", ["tocilizumab-max-3-per-24h"],
         lambda b: (fever(b, 1, 2), [toci(b, 1, h) for h in ("07:00", "13:00", "19:00", "23:00")]), CRS,
         {"flag": "tocilizumab-over-3-doses-in-24h"}),
    case("tocilizumab-3-doses-in-24h-no-flag", ["tocilizumab-max-3-per-24h"],
         lambda b: (fever(b, 1, 2), [toci(b, 1, h) for h in ("07:00", "15:00", "23:00")]), CRS,
         {"no-flag": "tocilizumab-over-3-doses-in-24h"}),
    case("tocilizumab-5-doses-flag", ["tocilizumab-max-4-total"],
         lambda b: (fever(b, 1, 2, 3), [toci(b, 1 + k // 2, ("07:00", "19:00")[k % 2]) for k in range(5)]),
         CRS,
         {"flag": "tocilizumab-over-4-doses", "no-flag": "tocilizumab-over-3-doses-in-24h"}),
    case("tocilizumab-4-doses-no-flag", ["tocilizumab-max-4-total"],
         lambda b: (fever(b, 1, 2, 3), [toci(b, 1 + k // 2, ("07:00", "19:00")[k % 2]) for k in range(4)]),
         CRS,
         {"no-flag": "tocilizumab-over-4-doses"}),
]

REFRACTORY = [
    # --- T3 steroid-refractory ICANS (local-definition-v1)
    case("icans-grade3-persists-72h-after-dex-q6h-refractory",
         ["icans-persists-72h", "dexamethasone-10mg-q6h"],
         lambda b: (ices(b, 2, 2, 2, 2), dex_q6h(b, 1, days=2)), ICANS,
         {"steroid_refractory": True, "rule": "local-definition-v1 icans-persists-72h",
          "high_dose_steroid_at": at(1, "10:00"), "component:steroid-refractory": True}),
    case("icans-grade2-at-72h-refractory", ["icans-persists-72h"],
         lambda b: (ices(b, 2, 2, 5, 5), dex_q6h(b, 1, 2)), ICANS, {"steroid_refractory": True}),
    case("icans-grade1-at-72h-not-refractory", ["icans-persists-72h"],
         lambda b: (ices(b, 2, 2, 5, 8), dex_q6h(b, 1, 2)), ICANS,
         {"steroid_refractory": False, "component:steroid-refractory": False,
          "rule": "local-definition-v1: not refractory"}),
    case("icans-responsive-not-refractory", ["icans-persists-72h", "dexamethasone-10mg-q6h"],
         lambda b: (ices(b, 2, 8, 10, 10), dex_q6h(b, 1, 2)), ICANS,
         {"steroid_refractory": False, "rule": "resolved on day 3"}),
    case("icans-dex-10mg-q8h-not-high-dose", ["dexamethasone-10mg-q6h"],
         lambda b: (ices(b, 2, 2, 2, 2), dex_q6h(b, 1, days=2, every=8)), ICANS,
         {"steroid_refractory": False, "high_dose_steroid_at": None, "rule": "no high-dose steroid"}),
    case("icans-no-grade-72h-later-undetermined", ["icans-persists-72h"],
         lambda b: (ices(b, 2, 2, 2), dex_q6h(b, 1, days=2)), ICANS,
         {"steroid_refractory": False, "flag": "refractory-undetermined", "missing": "ICANS grade on day 4",
          "component:steroid-refractory": None}),
    case("icans-grade3-day5-after-gap-refractory", ["icans-persists-72h"],
         lambda b: (ices(b, 2, 2), b.ice(5, "08:00", 2), dex_q6h(b, 1, days=2)), ICANS,
         {"steroid_refractory": True}),
    case("icans-dose-unknown-high-dose-undetermined", ["icans-persists-72h"],
         lambda b: (ices(b, 2, 2, 2, 2), dex(b, 1, "10:00", None)), ICANS,
         {"flag": "refractory-undetermined", "missing": "dose in mg of"}),
    case("icans-mp-1000-pulse-is-high-dose", ["methylprednisolone-1gram-pulse", "icans-persists-72h"],
         lambda b: (ices(b, 2, 2, 2, 2), mp(b, 1, "10:00", 1000)), ICANS,
         {"steroid_refractory": True, "rule": "pulse", "no-flag": "body-weight-default-60kg"}),
    case("icans-mp-60mg-q12h-weight-default-high-dose", ["methylprednisolone-1mgkg-q12h-default"],
         lambda b: (ices(b, 2, 2, 2, 2), mp(b, 1, "10:00", 60), mp(b, 1, "22:00", 60)), ICANS,
         {"steroid_refractory": True, "flag": "body-weight-default-60kg",
          "unverified": "methylprednisolone-1mgkg-q12h-default"}),
    case("icans-mp-50mg-q12h-not-high-dose", ["methylprednisolone-1mgkg-q12h-default"],
         lambda b: (ices(b, 2, 2, 2, 2), mp(b, 1, "10:00", 50), mp(b, 1, "22:00", 50)), ICANS,
         {"steroid_refractory": False, "high_dose_steroid_at": None}),
    case("icans-anakinra-after-steroids-refractory", ["icans-second-line-after-steroids", "agent:anakinra"],
         lambda b: (ices(b, 5, 5), dex(b, 1, "09:00"), med(b, "anakinra", 2, "09:00", 100)), ICANS,
         {"steroid_refractory": True, "rule": "icans-second-line-after-steroids",
          "treatments": ("dexamethasone", "anakinra")}),
    case("icans-anakinra-before-steroids-not-refractory", ["icans-second-line-after-steroids"],
         lambda b: (ices(b, 5, 8, 10), med(b, "anakinra", 1, "09:00", 100), dex(b, 2, "09:00")), ICANS,
         {"steroid_refractory": False}),
    case("icans-idm-after-steroids-refractory", ["icans-second-line-after-steroids", "intrathecal"],
         lambda b: (ices(b, 5, 5, 10), dex(b, 1, "09:00"), idm(b, 2, "12:00")), ICANS,
         {"steroid_refractory": True, "rule": "idm on day 2"}),
    case("icans-mp-pulse-after-dex-refractory", ["icans-mp-pulse-after-dexamethasone"],
         lambda b: (ices(b, 5, 5), dex(b, 1, "09:00"), mp(b, 2, "09:00", 1000)), ICANS,
         {"steroid_refractory": True, "rule": "icans-mp-pulse-after-dexamethasone"}),
    case("icans-mp-250mg-after-dex-not-pulse", ["icans-mp-pulse-after-dexamethasone"],
         lambda b: (ices(b, 5, 5, 10), dex(b, 1, "09:00"), mp(b, 2, "09:00", 250)), ICANS,
         {"steroid_refractory": False}),
    # --- T3 steroid-refractory CRS
    case("crs-grade2-persists-72h-refractory", ["crs-persists-72h", "dexamethasone-10mg-q6h"],
         lambda b: (crs_grade2(b, 1, 2, 3, 4), dex_q6h(b, 1, days=2)), CRS,
         {"steroid_refractory": True, "rule": "local-definition-v1 crs-persists-72h"}),
    case("crs-grade1-at-72h-not-refractory", ["crs-persists-72h"],
         lambda b: (crs_grade2(b, 1, 2, 3), b.temp(4, "06:00", 38.5), b.oxygen(4, "07:00", "room-air"),
                    dex_q6h(b, 1, days=2)), CRS, {"steroid_refractory": False}),
    case("crs-anakinra-after-steroids-refractory", ["crs-second-line-after-steroids"],
         lambda b: (fever(b, 1, 2), dex(b, 1, "09:00"), med(b, "anakinra", 1, "21:00", 100)), CRS,
         {"steroid_refractory": True, "rule": "crs-second-line-after-steroids"}),
    case("crs-siltuximab-after-steroids-refractory", ["crs-second-line-after-steroids", "agent:siltuximab"],
         lambda b: (fever(b, 1, 2), dex(b, 1, "09:00"), med(b, "siltuximab", 2, "09:00", 800)), CRS,
         {"steroid_refractory": True}),
    case("crs-tocilizumab-only-not-refractory", ["crs-second-line-after-steroids"],
         lambda b: (fever(b, 1, 2), toci(b, 1, "08:00")), CRS,
         {"steroid_refractory": False, "rule": "no high-dose steroid"}),
    case("crs-untreated-episode", ["crs-persists-72h"], lambda b: fever(b, 1, 2), CRS,
         {"treatments": (), "steroid_refractory": False, "remission_definition": "", "baseline_grade": None}),
]

RESPONSE = [
    # --- T4 improvement (8.4): a later day at least one grade below the baseline
    case("improvement-grade3-to-grade1-next-day", ["improvement"],
         lambda b: (ices(b, 2, 8), dex(b, 1, "10:00")), ICANS,
         {"baseline_grade": 3, "improvement_day": 2, "improvement_at": at(2, "00:00"),
          "hours_to_improvement": 14.0}),
    case("improvement-same-grade-none", ["improvement"],
         lambda b: (ices(b, 2, 2), dex(b, 1, "10:00")), ICANS,
         {"baseline_grade": 3, "improvement_day": None}),
    # --- T4 IDM remission (8.5): grade 3-4 -> grade <= 1; grade 1-2 -> ICE 10
    case("idm-grade3-to-grade1-next-day-remission", ["idm-grade3-4-to-grade1", "intrathecal"],
         lambda b: (ices(b, 2, 8, start=2), idm(b, 2, "12:00")), ICANS,
         {"remission_day": 3, "remission_at": at(3, "00:00"), "hours_to_remission": 12.0,
          "component:icans-remission-idm": True, "remission_definition": "idm-grade3-4-to-grade1"}),
    case("idm-grade3-to-grade2-no-remission", ["idm-grade3-4-to-grade1"],
         lambda b: (ices(b, 2, 5, start=2), idm(b, 2, "12:00")), ICANS,
         {"remission_day": None, "hours_to_remission": None, "component:icans-remission-idm": False}),
    case("idm-grade4-to-grade0-remission", ["idm-grade3-4-to-grade1"],
         lambda b: (b.cannot_ice(2, "08:00"), b.ice(3, "08:00", 10), idm(b, 2, "12:00")), ICANS,
         {"remission_day": 3, "hours_to_remission": 12.0}),
    case("idm-baseline-from-day-before", ["idm-grade3-4-to-grade1"],
         lambda b: (ices(b, 2, 5, 8), idm(b, 2, "12:00")), ICANS, {"remission_day": 3}),
    case("idm-grade2-ice10-remission", ["idm-grade1-2-ice10"],
         lambda b: (ices(b, 5, 9, start=2), b.ice(3, "20:00", 10), idm(b, 2, "12:00")), ICANS,
         {"remission_at": at(3, "20:00"), "remission_day": 3, "hours_to_remission": 32.0,
          "remission_definition": "idm-grade1-2-ice10"}),
    case("idm-grade2-ice9-no-remission", ["idm-grade1-2-ice10"],
         lambda b: (ices(b, 5, 9, start=2), idm(b, 2, "12:00")), ICANS,
         {"remission_at": None, "component:icans-remission-idm": False}),
    case("idm-grade1-ice10-before-dose-not-remission", ["idm-grade1-2-ice10"],
         lambda b: (ices(b, 8, 9, 10, start=2), b.ice(2, "09:00", 10), idm(b, 2, "10:00")), ICANS,
         {"remission_day": 4}),
    case("idm-child-capd0-remission", ["idm-grade1-2-capd0-child"],
         lambda b: (b.capd(2, "08:00", 5), b.capd(3, "09:00", 0), idm(b, 2, "12:00")), ICANS,
         {"remission_at": at(3, "09:00"), "hours_to_remission": 21.0,
          "unverified": "idm-grade1-2-capd0-child"},
         birth="2016-02-01"),
    case("idm-adult-capd0-not-used", ["idm-grade1-2-capd0-child"],
         lambda b: (b.ice(2, "08:00", 5), b.capd(3, "09:00", 0), idm(b, 2, "12:00")), ICANS,
         {"remission_at": None}),
    case("idm-baseline-unknown-undetermined", ["idm-grade3-4-to-grade1"],
         lambda b: (b.ice(1, "08:00", 2), b.ice(4, "08:00", 8), idm(b, 3, "12:00")), ICANS,
         {"remission_at": None, "flag": "remission-undetermined", "missing": "ICANS grade on day 2 or 3",
          "component:icans-remission-idm": None}),
    case("no-idm-no-remission-definition", ["idm-grade3-4-to-grade1"],
         lambda b: (ices(b, 2, 8), dex(b, 1, "10:00")), ICANS,
         {"idm": False, "remission_at": None, "remission_definition": "",
          "component:icans-remission-idm": None}),
]

CASES = LINKING + EXPOSURE + REFRACTORY + RESPONSE


def check(r: TreatmentResponse, expected: dict[str, Any]) -> None:
    comps = {c.code: c.value for c in r.assessment.components}
    for key, want in expected.items():
        if key.startswith("component:"):
            assert comps.get(key.split(":", 1)[1]) == want, (key, comps)
        elif key == "flag":
            assert want in r.flags and want in r.assessment.flags, r.flags
        elif key == "no-flag":
            assert want not in r.flags, r.flags
        elif key == "rule":
            assert want in r.refractory_rule, r.refractory_rule
        elif key == "remission_definition" and want:
            assert want in r.remission_definition, r.remission_definition
        elif key == "missing":
            assert any(want in m for m in r.assessment.missing), r.assessment.missing
        elif key == "unverified":
            assert f"treatment-response:{want}" in r.unverified_rows, r.unverified_rows
        else:
            assert getattr(r, key) == want, (key, getattr(r, key))


@pytest.mark.parametrize(("covers", "build", "tox", "expected", "patient"), CASES)
def test_treatment_case(engine: Engine, covers: list[str], build: Callable[[B], Any], tox: Toxicity,
                        expected: dict[str, Any], patient: dict[str, Any]) -> None:
    b = B(**patient)
    build(b)
    got = analyze(engine, b, tox)
    assert len(got) == 1, [(r.episode_number, r.treatments) for r in got]
    check(got[0], expected)


def test_every_treatment_row_has_a_case() -> None:
    t = TABLES.get(TreatmentTable)
    rows = {f"agent:{r.agent}" for r in t.agents} | {f"reason:{r.code}" for r in t.reasons} | \
        {r.id for r in (*t.high_dose, *t.refractory, *t.remission.rows, *t.dose_limits)} | \
        {"intrathecal", "dose_unit", "reason_window", "improvement"}
    covered = {c for p in CASES for c in p.values[0]}
    assert rows - covered == set()
    assert covered - rows == set(), "a case covers a row that does not exist"


def test_one_response_per_episode_in_order(engine: Engine) -> None:
    b = B()
    fever(b, 1)
    b.temp(2, "06:00", 37.0)
    fever(b, 4)
    toci(b, 4, "09:00")
    got = analyze(engine, b, CRS)
    assert [(r.episode_number, r.treatments) for r in got] == [(1, ()), (2, ("tocilizumab",))]


def test_no_episodes_no_responses(engine: Engine) -> None:
    b = B()
    b.temp(1, "06:00", 37.0)
    toci(b, 1, "09:00")
    assert analyze(engine, b, CRS) == []


def test_assessment_shape(engine: Engine) -> None:
    b = B()
    ices(b, 2, 2, 2, 2)
    dex_q6h(b, 1, days=2)
    r = analyze(engine, b, ICANS)[0]
    a = r.assessment
    assert (a.code, a.toxicity, a.state, a.value, a.table) == \
        ("treatment-response", ICANS, State.GRADED, None, "treatment-response v1")
    assert a.evidence == r.treatment_refs and len(a.evidence) == 8
    assert a.start == at(1, "08:00") and a.end is None
    assert {(c.code, c.kind) for c in a.components} == {
        ("time-to-first-treatment", "integer"), ("steroid-refractory", "boolean"),
        ("dexamethasone-equivalent-mg", "integer")}
    assert any(s.startswith("Observation/") for s in a.supporting)  # the day-4 ICE that showed persistence
    assert any("local-definition-v1" in s for s in a.reasons)
    assert "treatment-response:icans-persists-72h" in r.unverified_rows


def test_without_other_toxicity_no_shared_flag(engine: Engine) -> None:
    b = B()
    both_open(b)
    dex(b, 1, "09:00")
    cr = run(engine, b.bundle()).patients[0].courses[0]
    r = ANALYZER.analyze(cr.course, CRS, cr.days[CRS], cr.episodes[CRS])[0]
    assert r.treatments == ("dexamethasone",) and "shared-treatment" not in r.flags


def test_unknown_agent_stops_start_up() -> None:
    t = TABLES.get(TreatmentTable)
    extra = AgentRow(agent="infliximab", treats="any", verified=False, source="test")
    bad = msgspec.structs.replace(t, agents=(*t.agents, extra))
    with pytest.raises(ConfigError, match="infliximab"):
        TreatmentAnalyzer(bad, TABLES.drugs, TABLES.icans.settings)


def test_module_is_pure() -> None:
    allowed = {(0, "__future__"), (0, "collections.abc"), (0, "dataclasses"), (0, "datetime"), (0, "typing"),
               (3, "errors"), (3, "model"), (3, "tables"), (3, "timeline"), (2, "result"), (1, "table"),
               (1, "linking"), (1, "exposure"), (1, "outcomes"), (1, "analyzer")}
    for path in (Path(cart_fhir.__file__).resolve().parent / "grading" / "treatments").glob("*.py"):
        tree = ast.parse(path.read_text())
        mods = {(n.level, n.module) for n in tree.body if isinstance(n, ast.ImportFrom)}
        mods |= {(0, a.name) for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        assert mods <= allowed, (path.name, mods - allowed)
