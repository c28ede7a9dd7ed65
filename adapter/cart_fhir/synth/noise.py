"""`--noise some|heavy`: the untidiness of real feeds, added so that it never changes a true grade.

What noise does: drops all vital signs and neurological assessments of some days, writes some values in
other units (temperature in [degF], CRP in mg/dL, ANC in 10*9/L or /uL: exact conversions of the unit
table, mappings/units.yaml), charts some observations twice, adds entered-in-error observations with wrong
values, and writes some observations as a superseded preliminary version (wrong value) plus the amended one
(meta.versionId 1 and 2).
What noise never touches (so expected.json stays the truth): any day from the day before a CRS or ICANS
episode to the day after it; day 0; blood counts (ANC, platelets: the ICAHT series) are never dropped
or superseded, only written in other units, duplicated or shadowed by an entered-in-error copy; Conditions, cultures,
MedicationAdministrations and the Patient. Noise has its own random stream: the scenario and the clean
resources are the same at every level.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date
from typing import Any

from .choices import Noise
from .scenario import Scenario

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DAILY = {"8310-5", "85354-9", "59408-5", "3151-8"}  # vital signs dropped on a missing day
PROJECT_DAILY = {"oxygen-delivery-device", "ice-score", "capd-score", "consciousness-level", "cannot-perform-ice"}
COUNTS = {"751-8", "777-3"}  # never dropped, never superseded with a wrong value
WRONG = {"751-8": 0.01, "8310-5": 40.6, "59408-5": 81, "1988-5": 390.0, "2276-4": 9000.0, "3151-8": 15.0}


@dataclass(frozen=True, slots=True)
class Rates:
    missing_day: float
    other_unit: float
    duplicate: float
    entered_in_error: float
    superseded: float


RATES = {Noise.SOME: Rates(0.05, 0.3, 0.02, 0.01, 0.01), Noise.HEAVY: Rates(0.15, 0.6, 0.08, 0.04, 0.04)}


def _protected(s: Scenario) -> set[int]:
    days = {0}
    for ep in (s.crs, s.icans):
        if ep is not None:
            days.update(range(ep.onset_day - 1, ep.last_day + 2))
    return days


def _code(res: dict[str, Any]) -> str | None:
    codings = res.get("code", {}).get("coding", [])
    return codings[0].get("code") if codings else None


def _day(s: Scenario, res: dict[str, Any]) -> int | None:
    when = res.get("effectiveDateTime")
    return (date.fromisoformat(when[:10]) - s.day0).days if isinstance(when, str) else None


def _other_unit(res: dict[str, Any], code: str, rng: random.Random) -> None:
    q = res.get("valueQuantity")
    if not isinstance(q, dict):
        return
    v = q["value"]
    if code == "8310-5":
        res["valueQuantity"] = {"value": round(v * 1.8 + 32, 2), "unit": "°F", "system": UCUM, "code": "[degF]"}
    elif code == "1988-5":
        res["valueQuantity"] = {"value": round(v / 10, 3), "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}
    elif code == "751-8":
        if rng.random() < 0.5:
            res["valueQuantity"] = {"value": v, "unit": "10^9/L", "system": UCUM, "code": "10*9/L"}
        else:
            res["valueQuantity"] = {"value": round(v * 1000), "unit": "/uL", "system": UCUM, "code": "/uL"}


def _clone(res: dict[str, Any]) -> dict[str, Any]:
    """A copy safe to change at the top level and in valueQuantity (the only parts noise changes)."""
    out = dict(res)
    if isinstance(res.get("valueQuantity"), dict):
        out["valueQuantity"] = dict(res["valueQuantity"])
    return out


def _wrong(res: dict[str, Any], code: str) -> dict[str, Any] | None:
    """A copy with a wrong value (the chart error), or None when the observation has no simple value."""
    if code not in WRONG or not isinstance(res.get("valueQuantity"), dict):
        return None
    bad = _clone(res)
    bad["valueQuantity"] = {**bad["valueQuantity"], "value": WRONG[code]}
    if bad["valueQuantity"].get("code") == "[degF]":
        bad["valueQuantity"]["value"] = round(WRONG[code] * 1.8 + 32, 2)
    return bad


def add_noise(s: Scenario, resources: list[dict[str, Any]], level: Noise,
              rng: random.Random) -> list[dict[str, Any]]:
    """The noisy resource list (a new list; the clean dicts are copied where changed)."""
    if level is Noise.NONE:
        return resources
    r = RATES[level]
    protected = _protected(s)
    last = max((d for x in resources if (d := _day(s, x)) is not None), default=0)
    missing = {d for d in range(1, last + 1) if d not in protected and rng.random() < r.missing_day}
    out: list[dict[str, Any]] = []
    n = 0
    for res in resources:
        if res["resourceType"] != "Observation":
            out.append(res)
            continue
        code, day = _code(res), _day(s, res)
        if day in missing and (code in DAILY or code in PROJECT_DAILY):
            continue
        if code is None or code in PROJECT_DAILY:
            out.append(res)
            continue
        res = _clone(res)
        if rng.random() < r.other_unit:
            _other_unit(res, code, rng)
        bad = _wrong(res, code)
        if bad is not None and code not in COUNTS and rng.random() < r.superseded:
            bad.update(status="preliminary", meta={"versionId": "1"})
            res.update(status="amended", meta={"versionId": "2"})
            out.append(bad)
        out.append(res)
        if rng.random() < r.duplicate:
            n += 1
            out.append({**_clone(res), "id": f"{res['id']}-dup{n}"})
        if bad is not None and rng.random() < r.entered_in_error:
            n += 1
            bad = _wrong(res, code)
            assert bad is not None
            out.append({**bad, "id": f"{res['id']}-eie{n}", "status": "entered-in-error"})
    return out
