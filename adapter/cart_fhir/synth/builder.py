"""Realise a Scenario as FHIR R4 resources in the adapter's input contract (docs: input-contract.md).

The data are chosen so that ASTCT 2019 (Lee et al., BBMT 2019;25:625-638) gives exactly the scenario's
grades: CRS grade 1 = fever >= 38.0 C only; grade 2 = fever with hypotension needing no vasopressor
(SBP below the age limit of mappings/astct-crs-2019.yaml) or low-flow oxygen (nasal cannula <= 6 L/min);
grade 3 = one vasopressor or high-flow oxygen (> 6 L/min); grade 4 = two concurrent vasopressors or
positive pressure. ICANS: ICE 7-9 grade 1, 3-6 grade 2, 0-2 grade 3, unarousable and unable to perform
the ICE grade 4; below 12 years CAPD 1-8 grade 1 (grade 2 with awakens-to-voice), >= 9 grade 3.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..constants import BASE
from . import labs
from .scenario import Episode, Scenario

LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
SCT = "http://snomed.info/sct"
CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
CS_OBS = f"{BASE}/CodeSystem/cart-observation"
RX = {"norepinephrine": "7512", "epinephrine": "3992", "tocilizumab": "612865", "dexamethasone": "3264",
      "fludarabine": "24698", "cyclophosphamide": "3002"}
CAPD_MAX_AGE = 11  # mappings/astct-icans-2019.yaml capd_max_age_years: CAPD below 12 years, ICE from 12
ICE_BY_GRADE = {0: 10, 1: 8, 2: 5, 3: 2}
CAPD_BY_GRADE = {0: 0, 1: 4, 2: 6, 3: 12}
OXYGEN_BY_GRADE = {2: ("nasal-cannula", 3.0), 3: ("high-flow-nasal-cannula", 40.0), 4: ("bipap", None)}
MYELOMA_PRODUCTS = ("idecabtagene vicleucel", "ciltacabtagene autoleucel")


@dataclass
class PatientWriter:
    """Accumulates one patient's resources with deterministic ids (house style habit 11)."""

    s: Scenario
    rng: random.Random
    days: int = 30
    resources: list[dict[str, Any]] = field(default_factory=list)
    n: int = 0

    dates: dict[int, str] = field(default_factory=dict)

    def at(self, day: int, hhmm: str) -> str:
        date = self.dates.get(day)
        if date is None:  # cached: called for every resource
            date = self.dates[day] = (self.s.day0 + timedelta(days=day)).isoformat()
        return f"{date}T{hhmm}:00{self.s.tz}"

    def add(self, prefix: str, res: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        res = {"id": f"{self.s.pid}-{prefix}-{self.n}", **res}
        self.resources.append(res)
        return res

    def subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.s.pid}"}

    def obs(self, prefix: str, code: dict[str, str], day: int, hhmm: str, category: str,
            **value: Any) -> None:
        self.add(prefix, {"resourceType": "Observation", "status": "final",
                          "category": [{"coding": [{"system": CAT, "code": category}]}],
                          "code": {"coding": [code]}, "subject": self.subject(),
                          "effectiveDateTime": self.at(day, hhmm), **value})

    def qty(self, prefix: str, loinc: str, day: int, hhmm: str, value: float, unit: str,
            category: str = "vital-signs") -> None:
        self.obs(prefix, {"system": LOINC, "code": loinc}, day, hhmm, category,
                 valueQuantity={"value": value, "unit": unit, "system": UCUM, "code": unit})

    def project(self, code: str, day: int, hhmm: str, **value: Any) -> None:
        self.obs(code, {"system": CS_OBS, "code": code}, day, hhmm, "survey", **value)

    def answer(self, code: str, system: str, day: int, hhmm: str, answer: str) -> None:
        self.project(code, day, hhmm, valueCodeableConcept={
            "coding": [{"system": f"{BASE}/CodeSystem/{system}", "code": answer}]})

    def drug(self, agent: str, day: int, hhmm: str, end: tuple[int, str] | None = None,
             dose_mg: float | None = None) -> None:
        res: dict[str, Any] = {"resourceType": "MedicationAdministration", "status": "completed",
                               "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": RX[agent],
                                                                         "display": agent}], "text": agent},
                               "subject": self.subject()}
        if end is None:
            res["effectiveDateTime"] = self.at(day, hhmm)
        else:
            res["effectivePeriod"] = {"start": self.at(day, hhmm), "end": self.at(*end)}
        if dose_mg is not None:
            res["dosage"] = {"dose": {"value": dose_mg, "unit": "mg", "system": UCUM, "code": "mg"}}
        self.add(agent, res)


def build(s: Scenario, rng: random.Random, days: int) -> list[dict[str, Any]]:
    """Every resource of one patient, in a fixed order."""
    w = PatientWriter(s, rng, days)
    _patient(w)
    _lymphodepletion(w)
    w.add("cart", {"resourceType": "MedicationAdministration", "status": "completed",
                   "medicationCodeableConcept": {"coding": [{"system": f"{BASE}/CodeSystem/cart-product",
                                                             "code": "car-t-cell-product",
                                                             "display": s.product.product}],
                                                 "text": s.product.product},
                   "subject": w.subject(), "effectiveDateTime": w.at(0, "10:00")})
    labs.prophylaxis(w)
    for day in range(max(days, 31)):  # daily blood counts cover the early ICAHT window (days 0-30)
        if day < days:
            _vitals(w, day)
            _neuro(w, day)
        labs.daily(w, day, _in(s.crs, day))
    labs.follow_up(w)
    for inf in s.infections:
        labs.infection(w, inf)
    return w.resources


def _patient(w: PatientWriter) -> None:
    s = w.s
    birth = s.day0 - timedelta(days=365 * s.age + 100 + w.rng.randrange(200))
    w.resources.append({"resourceType": "Patient", "id": s.pid, "birthDate": birth.isoformat(),
                        "gender": w.rng.choice(("female", "male")),
                        "identifier": [{"system": "https://cart-fhir.org/synthetic/mrn", "value": s.pid}]})


def _lymphodepletion(w: PatientWriter) -> None:
    """Fludarabine 30 mg/m2 and cyclophosphamide 500 mg/m2 (300 mg/m2 before the BCMA products),
    days -5..-3."""
    bsa = 1.9 if w.s.age >= 16 else 1.0
    cy = 300 if w.s.product.product in MYELOMA_PRODUCTS else 500
    for day in (-5, -4, -3):
        w.drug("fludarabine", day, "09:00", end=(day, "09:30"), dose_mg=round(30 * bsa))
        w.drug("cyclophosphamide", day, "10:00", end=(day, "11:00"), dose_mg=round(cy * bsa))
    labs.baseline(w)


def _in(ep: Episode | None, day: int) -> bool:
    return ep is not None and ep.onset_day <= day <= ep.last_day


def _vitals(w: PatientWriter, day: int) -> None:
    """Vital signs every 4-8 h (day 0 from two hours after the infusion)."""
    s, rng, crs = w.s, w.rng, w.s.crs
    if day == 0:
        times = ["12:00", "16:00", "20:00"]
    else:
        times = [f"{h:02d}:{rng.randrange(60):02d}" for h in (2, 8, 14, 20)]
    febrile = _in(crs, day)
    peak = crs.grade if crs is not None and day == crs.peak_day else 0
    sbp_limit = 90 if s.age >= 10 else 70 + 2 * s.age  # mappings/astct-crs-2019.yaml hypotension rows
    if peak >= 3 and s.crs_route == "hypotension":
        w.drug("norepinephrine", day, "08:30", end=(day, "21:00"))
        if peak == 4:
            w.drug("epinephrine", day, "10:00", end=(day, "18:00"))
    if peak >= 2:
        w.drug("tocilizumab", day, "09:00", dose_mg=8 * 70 if s.age >= 16 else 8 * 30)
    for i, hhmm in enumerate(times):
        temp = round(rng.uniform(38.3, 39.8), 1) if febrile and i == 1 else round(rng.uniform(36.2, 37.6), 1)
        w.qty("temp", "8310-5", day, hhmm, temp, "Cel")
        low = peak >= 2 and s.crs_route == "hypotension" and i >= 1
        sbp = sbp_limit - 8 if low else rng.randint(max(sbp_limit + 15, 105), 135)
        dbp = 45 if low else rng.randint(62, 80)
        w.add("bp", {"resourceType": "Observation", "status": "final",
                     "category": [{"coding": [{"system": CAT, "code": "vital-signs"}]}],
                     "code": {"coding": [{"system": LOINC, "code": "85354-9"}]}, "subject": w.subject(),
                     "effectiveDateTime": w.at(day, hhmm),
                     "component": [_bp_component("8480-6", sbp), _bp_component("8462-4", dbp)]})
        hypoxic = peak >= 2 and s.crs_route == "hypoxia" and i >= 1
        device, flow = OXYGEN_BY_GRADE[peak] if hypoxic else ("room-air", None)
        w.qty("spo2", "59408-5", day, hhmm, rng.randint(90, 94) if hypoxic else rng.randint(95, 99), "%")
        w.answer("oxygen-delivery-device", "oxygen-delivery", day, hhmm, device)
        if flow is not None:
            w.qty("o2flow", "3151-8", day, hhmm, flow, "L/min")


def _bp_component(loinc: str, value: int) -> dict[str, Any]:
    return {"code": {"coding": [{"system": LOINC, "code": loinc}]},
            "valueQuantity": {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}


def _neuro(w: PatientWriter, day: int) -> None:
    """One ICE (CAPD below 12 years) a day; grade 4 is an unarousable patient who cannot perform it."""
    s, ep = w.s, w.s.icans
    hhmm = "14:00" if day == 0 else "09:00"
    grade = 0
    if ep is not None and _in(ep, day):
        grade = ep.grade if day == ep.peak_day else 1
    if grade == 4:
        w.project("cannot-perform-ice", day, hhmm, valueBoolean=True)
        w.answer("consciousness-level", "consciousness-level", day, hhmm, "unarousable")
        w.drug("dexamethasone", day, "10:00", dose_mg=10.0)
        return
    if s.age <= CAPD_MAX_AGE:
        w.project("capd-score", day, hhmm, valueInteger=CAPD_BY_GRADE[grade])
        if grade == 2:
            w.answer("consciousness-level", "consciousness-level", day, hhmm, "awakens-to-voice")
    else:
        w.project("ice-score", day, hhmm, valueInteger=ICE_BY_GRADE[grade])
    if grade >= 2:  # grades above 1 fall on the peak day only
        w.drug("dexamethasone", day, "10:00", dose_mg=10.0)
