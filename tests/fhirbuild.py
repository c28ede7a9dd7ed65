"""Compact builders for FHIR R4 test patients: one line per observation, in the codes of input-contract.md.

Times are given as (day, "HH:MM") relative to the infusion's day 0, in the patient's UTC offset, so a
vignette reads like a chart. Every resource gets a readable id (temp-3, ice-1, ...).
"""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta
from typing import Any

BASE = "https://cart-fhir.org/fhir"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
RX = {"norepinephrine": "7512", "epinephrine": "3992", "phenylephrine": "8163", "dopamine": "3628",
      "vasopressin": "11149", "dobutamine": "3616", "tocilizumab": "612865", "anakinra": "72435",
      "dexamethasone": "3264", "methylprednisolone": "6902", "acetaminophen": "161"}


class PatientBuilder:
    def __init__(self, pid: str = "p1", birth: str | None = "1970-03-15", tz: str = "+01:00",
                 day0: str = "2024-05-01", infusion_time: str | None = "10:00",
                 infusion: str = "medication", product_code: str | None = "1987402") -> None:
        self.pid, self.tz, self.day0 = pid, tz, date.fromisoformat(day0)
        self._n = itertools.count(1)
        self.resources: list[dict[str, Any]] = []
        patient: dict[str, Any] = {"resourceType": "Patient", "id": pid,
                                   "identifier": [{"system": "https://example.org/mrn", "value": f"MRN-{pid}"}]}
        if birth:
            patient["birthDate"] = birth
        self.resources.append(patient)
        if infusion == "medication":
            self.infusion_medication(0, infusion_time, product_code)
        elif infusion == "procedure":
            self.infusion_procedure(0, infusion_time)

    # ---- time ------------------------------------------------------------------------------

    def at(self, day: int, hhmm: str | None = "08:00") -> str:
        d = self.day0 + timedelta(days=day)
        if hhmm is None:
            return d.isoformat()
        return f"{d.isoformat()}T{hhmm}:00{self.tz}"

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._n)}"

    def subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.pid}"}

    # ---- infusion --------------------------------------------------------------------------

    def infusion_medication(self, day: int, hhmm: str | None, code: str | None = "1987402",
                            text: str | None = None, status: str = "completed") -> dict[str, Any]:
        med: dict[str, Any] = {}
        if code:
            med["coding"] = [{"system": RXNORM, "code": code, "display": "axicabtagene ciloleucel"}]
        if text:
            med["text"] = text
        res = {"resourceType": "MedicationAdministration", "id": self._id("cart"), "status": status,
               "medicationCodeableConcept": med, "subject": self.subject(),
               "effectiveDateTime": self.at(day, hhmm)}
        self.resources.append(res)
        return res

    def infusion_procedure(self, day: int, hhmm: str | None) -> dict[str, Any]:
        res = {"resourceType": "Procedure", "id": self._id("cart-proc"), "status": "completed",
               "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "38228"}]},
               "subject": self.subject(), "performedDateTime": self.at(day, hhmm)}
        self.resources.append(res)
        return res

    # ---- observations ----------------------------------------------------------------------

    def obs(self, code: dict[str, Any], day: int, hhmm: str | None, prefix: str, status: str = "final",
            category: str = "vital-signs", **value: Any) -> dict[str, Any]:
        res = {"resourceType": "Observation", "id": self._id(prefix), "status": status,
               "category": [{"coding": [{"system": CAT, "code": category}]}],
               "code": {"coding": [code]}, "subject": self.subject(),
               "effectiveDateTime": self.at(day, hhmm), **value}
        self.resources.append(res)
        return res

    def temp(self, day: int, hhmm: str, value: float, unit: str = "Cel", display_unit: str | None = None,
             **kw: Any) -> dict[str, Any]:
        q: dict[str, Any] = {"value": value, "unit": display_unit or unit}
        if unit is not None:
            q.update(system=UCUM, code=unit)
        return self.obs({"system": LOINC, "code": "8310-5"}, day, hhmm, "temp", valueQuantity=q, **kw)

    def temp_raw(self, day: int, hhmm: str, quantity: dict[str, Any]) -> dict[str, Any]:
        return self.obs({"system": LOINC, "code": "8310-5"}, day, hhmm, "temp", valueQuantity=quantity)

    def bp(self, day: int, hhmm: str, sbp: float, dbp: float | None = None) -> dict[str, Any]:
        comps = [{"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                  "valueQuantity": {"value": sbp, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}]
        if dbp is not None:
            comps.append({"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                          "valueQuantity": {"value": dbp, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}})
        return self.obs({"system": LOINC, "code": "85354-9"}, day, hhmm, "bp", component=comps)

    def map(self, day: int, hhmm: str, value: float) -> dict[str, Any]:
        return self.obs({"system": LOINC, "code": "8478-0"}, day, hhmm, "map",
                        valueQuantity={"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"})

    def flow(self, day: int, hhmm: str, lpm: float) -> dict[str, Any]:
        return self.obs({"system": LOINC, "code": "3151-8"}, day, hhmm, "o2flow",
                        valueQuantity={"value": lpm, "unit": "L/min", "system": UCUM, "code": "L/min"})

    def device(self, day: int, hhmm: str, device: str) -> dict[str, Any]:
        return self.obs({"system": f"{BASE}/CodeSystem/cart-observation", "code": "oxygen-delivery-device"},
                        day, hhmm, "o2dev", category="survey",
                        valueCodeableConcept={"coding": [{"system": f"{BASE}/CodeSystem/oxygen-delivery",
                                                          "code": device}]})

    def oxygen(self, day: int, hhmm: str, device: str, lpm: float | None = None) -> None:
        self.device(day, hhmm, device)
        if lpm is not None:
            self.flow(day, hhmm, lpm)

    def neuro(self, code: str, day: int, hhmm: str, **value: Any) -> dict[str, Any]:
        return self.obs({"system": f"{BASE}/CodeSystem/cart-observation", "code": code}, day, hhmm, code,
                        category="survey", **value)

    def ice(self, day: int, hhmm: str, score: int) -> dict[str, Any]:
        return self.neuro("ice-score", day, hhmm, valueInteger=score)

    def capd(self, day: int, hhmm: str, score: int) -> dict[str, Any]:
        return self.neuro("capd-score", day, hhmm, valueInteger=score)

    def coded(self, code: str, system: str, day: int, hhmm: str, answer: str) -> dict[str, Any]:
        return self.neuro(code, day, hhmm, valueCodeableConcept={
            "coding": [{"system": f"{BASE}/CodeSystem/{system}", "code": answer}]})

    def consciousness(self, day: int, hhmm: str, level: str) -> dict[str, Any]:
        return self.coded("consciousness-level", "consciousness-level", day, hhmm, level)

    def seizure(self, day: int, hhmm: str, kind: str) -> dict[str, Any]:
        return self.coded("seizure", "seizure-type", day, hhmm, kind)

    def motor(self, day: int, hhmm: str, finding: str = "deep-focal-weakness") -> dict[str, Any]:
        return self.coded("motor-finding", "motor-finding", day, hhmm, finding)

    def edema(self, day: int, hhmm: str, finding: str) -> dict[str, Any]:
        return self.coded("cerebral-edema-finding", "cerebral-edema-finding", day, hhmm, finding)

    def cannot_ice(self, day: int, hhmm: str) -> dict[str, Any]:
        return self.neuro("cannot-perform-ice", day, hhmm, valueBoolean=True)

    # ---- medications and conditions ---------------------------------------------------------

    def drug(self, agent: str, day: int, hhmm: str, end: tuple[int, str] | None = None,
             status: str = "completed", route: str | None = None) -> dict[str, Any]:
        res: dict[str, Any] = {"resourceType": "MedicationAdministration", "id": self._id(agent), "status": status,
                               "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": RX[agent],
                                                                         "display": agent}]},
                               "subject": self.subject()}
        if end is None:
            res["effectiveDateTime"] = self.at(day, hhmm)
        else:
            res["effectivePeriod"] = {"start": self.at(day, hhmm), "end": self.at(*end)}
        if route:
            res["dosage"] = {"route": {"coding": [{"system": "http://snomed.info/sct", "code": route}]}}
        self.resources.append(res)
        return res

    def pressor(self, agent: str, day: int, start: str, end_day: int, end: str) -> dict[str, Any]:
        return self.drug(agent, day, start, end=(end_day, end), status="completed")

    def condition(self, code: str, day: int, hhmm: str) -> dict[str, Any]:
        res = {"resourceType": "Condition", "id": self._id("cond"), "subject": self.subject(),
               "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
               "onsetDateTime": self.at(day, hhmm)}
        self.resources.append(res)
        return res

    # ---- containers ------------------------------------------------------------------------

    def bundle(self, btype: str = "collection") -> dict[str, Any]:
        return bundle_of(self.resources, btype)


def bundle_of(resources: list[dict[str, Any]], btype: str = "collection") -> dict[str, Any]:
    entries = []
    for r in resources:
        e: dict[str, Any] = {"fullUrl": f"http://example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r}
        if btype in ("transaction", "batch"):
            e["request"] = {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
        if btype == "searchset":
            e["search"] = {"mode": "match"}
        entries.append(e)
    return {"resourceType": "Bundle", "type": btype, "entry": entries}


def now_iso() -> str:
    return datetime.now().astimezone().isoformat()


# ---- more builders for labs, coded conditions and medications (issue 3) ----------------------------

LAB_LOINC = {"anc": "751-8", "wbc": "6690-2", "platelets": "777-3", "hemoglobin": "718-7", "crp": "1988-5",
             "ferritin": "2276-4", "fibrinogen": "3255-7", "alt": "1742-6", "ast": "1920-8",
             "bilirubin": "1975-2", "ldh": "2532-0", "triglycerides": "2571-8", "creatinine": "2160-0",
             "il6": "26881-3"}


def _lab(self: PatientBuilder, concept: str, day: int, hhmm: str, value: float, unit: str,
         low: float | None = None, high: float | None = None, comparator: str | None = None) -> dict[str, Any]:
    """A lab result by concept name (LOINC from LAB_LOINC), UCUM unit, optional reference range."""
    q: dict[str, Any] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    if comparator:
        q["comparator"] = comparator
    extra: dict[str, Any] = {}
    if low is not None or high is not None:
        rr: dict[str, Any] = {}
        if low is not None:
            rr["low"] = {"value": low, "unit": unit, "system": UCUM, "code": unit}
        if high is not None:
            rr["high"] = {"value": high, "unit": unit, "system": UCUM, "code": unit}
        extra["referenceRange"] = [rr]
    return self.obs({"system": LOINC, "code": LAB_LOINC[concept]}, day, hhmm, concept, category="laboratory",
                    valueQuantity=q, **extra)


def _coded_condition(self: PatientBuilder, system: str, code: str, day: int, hhmm: str,
                     abatement: tuple[int, str] | None = None, display: str | None = None,
                     severity: str | None = None) -> dict[str, Any]:
    """A Condition with any coding (infection, neurological event), onset and optional abatement."""
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    res: dict[str, Any] = {"resourceType": "Condition", "id": self._id("cond"), "subject": self.subject(),
                           "code": {"coding": [coding]}, "onsetDateTime": self.at(day, hhmm)}
    if abatement:
        res["abatementDateTime"] = self.at(*abatement)
    if severity:
        res["severity"] = {"coding": [{"system": "http://snomed.info/sct", "code": severity}]}
    self.resources.append(res)
    return res


def _medication(self: PatientBuilder, name: str, day: int, hhmm: str, end: tuple[int, str] | None = None,
                rxnorm: str | None = None, dose_mg: float | None = None, route: str | None = None,
                reason_ref: str | None = None, reason_text: str | None = None,
                resource_type: str = "MedicationAdministration", status: str = "completed") -> dict[str, Any]:
    """Any drug by name (and optional RxNorm code), with dose in mg, route, reasonReference / reasonCode text."""
    cc: dict[str, Any] = {"text": name}
    if rxnorm:
        cc["coding"] = [{"system": RXNORM, "code": rxnorm, "display": name}]
    res: dict[str, Any] = {"resourceType": resource_type, "id": self._id(name.split()[0].lower()),
                           "status": status, "medicationCodeableConcept": cc, "subject": self.subject()}
    if end is None:
        res["effectiveDateTime"] = self.at(day, hhmm)
    else:
        res["effectivePeriod"] = {"start": self.at(day, hhmm), "end": self.at(*end)}
    dosage: dict[str, Any] = {}
    if dose_mg is not None:
        dosage["dose"] = {"value": dose_mg, "unit": "mg", "system": UCUM, "code": "mg"}
    if route:
        dosage["route"] = {"coding": [{"system": "http://snomed.info/sct", "code": route}]}
    if dosage:
        if resource_type == "MedicationStatement":
            ds: dict[str, Any] = {}
            if "route" in dosage:
                ds["route"] = dosage["route"]
            if "dose" in dosage:
                ds["doseAndRate"] = [{"doseQuantity": dosage["dose"]}]
            res["dosage"] = [ds]
        else:
            res["dosage"] = dosage
    if reason_ref:
        res["reasonReference"] = [{"reference": reason_ref}]
    if reason_text:
        res["reasonCode"] = [{"text": reason_text}]
    self.resources.append(res)
    return res


def _deceased(self: PatientBuilder, day: int, hhmm: str) -> None:
    self.resources[0]["deceasedDateTime"] = self.at(day, hhmm)


PatientBuilder.lab = _lab  # type: ignore[attr-defined]
PatientBuilder.coded_condition = _coded_condition  # type: ignore[attr-defined]
PatientBuilder.medication = _medication  # type: ignore[attr-defined]
PatientBuilder.deceased = _deceased  # type: ignore[attr-defined]


LAB_LOINC.update({"igg": "2465-3", "cd19-b-cells": "8116-6"})  # long-term effects (issue 16)
