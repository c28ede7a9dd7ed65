"""Blood counts, inflammation markers and infections of one synthetic patient as FHIR Observations,
Conditions and MedicationAdministrations (the scenario's Cytopenia and Infections, adapter/cart_fhir/synth/late.py).

ANC (LOINC 751-8, 10*3/uL): day -6 baseline (CAR-HEMATOTOX, grading.md 5.2: before lymphodepletion), daily on
days 0-30 (early ICAHT, 4.1), twice weekly on days 31-100 and once on day 104 (late ICAHT, 4.2; the value after
day 100 closes the late window).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .late import Infection

if TYPE_CHECKING:
    from .builder import PatientWriter

LAB = {"anc": ("751-8", "10*3/uL"), "platelets": ("777-3", "10*3/uL"), "crp": ("1988-5", "mg/L"),
       "ferritin": ("2276-4", "ng/mL"), "hemoglobin": ("718-7", "g/dL")}
LATE_DAYS = (*range(31, 101, 7), *range(35, 101, 7), 104)
ANC_LOW, ANC_VERY_LOW, ANC_RECOVERED = 0.3, 0.05, 1.8  # 10*3/uL: <= 500, <= 100, > 1500 per uL
ANC_LATE = {0: 2.4, 1: 1.3, 2: 0.8, 3: 0.35, 4: 0.06}  # a level inside each late ICAHT row (4.2)
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ROUTE_SCT = {"intravenous": "47625008", "oral": "26643006"}  # mappings/infection-grading.yaml routes
CONDITION = {"bacteremia": ("5758002", "Bacteremia"),
             "cmv-infection": ("28944009", "Infection caused by Cytomegalovirus"),
             "pneumonia": ("233604007", "Pneumonia")}  # mappings/infections.yaml rows
TREATMENT = {("bacteremia", "intravenous"): "vancomycin", ("bacteremia", "oral"): "ciprofloxacin",
             ("cmv-infection", "intravenous"): "ganciclovir", ("cmv-infection", "oral"): "valganciclovir",
             ("pneumonia", "intravenous"): "piperacillin-tazobactam", ("pneumonia", "oral"): "ciprofloxacin"}
RXNORM_ANTI_INFECTIVE = {"vancomycin": "11124", "ciprofloxacin": "2551", "valacyclovir": "73645"}  # drugs.yaml
E_COLI = ("112283007", "Escherichia coli")
# One dose in mg (adult; half below 16 years, the builder's BSA cut-off): usual label doses (vancomycin 15 mg/kg,
# ganciclovir 5 mg/kg IV, valganciclovir 900 mg, ciprofloxacin 500 mg PO, piperacillin-tazobactam 4.5 g). Only
# the route is graded; the dose is there because R4 mad-1 requires dosage.dose or rate once dosage is given.
DOSE_MG = {"vancomycin": 1000, "ciprofloxacin": 500, "ganciclovir": 350, "valganciclovir": 900,
           "piperacillin-tazobactam": 4500}


def anc(w: PatientWriter, day: int) -> float:
    """The scenario's ANC on a day (10*3/uL)."""
    c = w.s.cytopenia
    if day > 30:
        return ANC_LATE[c.late_grade]
    if day < c.d100:
        return ANC_VERY_LOW
    return ANC_LOW if day < c.d500 else ANC_RECOVERED


def baseline(w: PatientWriter) -> None:
    """Day -6, before lymphodepletion (CAR-HEMATOTOX inputs, grading.md 5.2)."""
    for concept, value in (("anc", 3.1), ("platelets", 180.0), ("crp", 4.0), ("ferritin", 420.0),
                           ("hemoglobin", 11.8)):
        loinc, unit = LAB[concept]
        w.qty(concept, loinc, -6, "07:00", value, unit, "laboratory")


def daily(w: PatientWriter, day: int, inflamed: bool) -> None:
    """Morning labs: blood count every day; CRP and ferritin while vital signs are taken."""
    rng = w.rng
    w.qty("anc", LAB["anc"][0], day, "06:00", anc(w, day), LAB["anc"][1], "laboratory")
    w.qty("platelets", LAB["platelets"][0], day, "06:00", 60.0 if day < 14 else 110.0, LAB["platelets"][1],
          "laboratory")
    if day < w.days:
        crp = rng.uniform(60, 220) if inflamed else rng.uniform(2, 12)
        ferritin = rng.uniform(900, 1400) if inflamed else rng.uniform(300, 600)
        w.qty("crp", LAB["crp"][0], day, "06:00", round(crp, 1), LAB["crp"][1], "laboratory")
        w.qty("ferritin", LAB["ferritin"][0], day, "06:00", float(round(ferritin)), LAB["ferritin"][1],
              "laboratory")


def follow_up(w: PatientWriter) -> None:
    """Twice-weekly blood counts after the daily period, to day 104."""
    for day in sorted(d for d in LATE_DAYS if d >= max(w.days, 31)):
        w.qty("anc", LAB["anc"][0], day, "08:00", anc(w, day), LAB["anc"][1], "laboratory")


def prophylaxis(w: PatientWriter) -> None:
    """HSV/VZV prophylaxis from day 0 (grading.md 6.2: prophylaxis is never read as treatment)."""
    w.add("valacyclovir", {"resourceType": "MedicationAdministration", "status": "completed",
                           "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "73645",
                                                                     "display": "valacyclovir"}],
                                                         "text": "valacyclovir"},
                           "subject": w.subject(), "reasonCode": [{"text": "prophylaxis"}],
                           "effectivePeriod": {"start": w.at(0, "08:00"), "end": w.at(89, "08:00")}})


def infection(w: PatientWriter, inf: Infection) -> None:
    """A confirmed Condition (onset 12:00, abatement 18:00 on the last day), a positive blood culture for a
    bacteremia, and the treatment linked by reasonReference with its route."""
    code, display = CONDITION[inf.key]
    cond = w.add(inf.key, {"resourceType": "Condition", "subject": w.subject(),
                           "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "resolved"}]},
                           "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]},
                           "code": {"coding": [{"system": SCT, "code": code, "display": display}]},
                           "onsetDateTime": w.at(inf.onset_day, "12:00"),
                           "abatementDateTime": w.at(inf.last_day, "18:00")})
    if inf.key == "bacteremia":
        w.obs("culture", {"system": LOINC, "code": "600-7"}, inf.onset_day, "10:00", "laboratory",
              valueCodeableConcept={"coding": [{"system": SCT, "code": E_COLI[0], "display": E_COLI[1]}]},
              interpretation=[{"coding": [{"system": INTERPRETATION, "code": "POS"}]}])
    agent = TREATMENT[(inf.key, inf.route)]
    coding = {"system": RXNORM, "code": RXNORM_ANTI_INFECTIVE[agent], "display": agent} \
        if agent in RXNORM_ANTI_INFECTIVE else {"display": agent}
    end = max(inf.last_day, inf.onset_day + 1)
    w.add(agent, {"resourceType": "MedicationAdministration", "status": "completed",
                  "medicationCodeableConcept": {"coding": [coding], "text": agent}, "subject": w.subject(),
                  "reasonReference": [{"reference": f"Condition/{cond['id']}"}],
                  "dosage": {"route": {"coding": [{"system": SCT, "code": ROUTE_SCT[inf.route]}]},
                             "dose": {"value": DOSE_MG[agent] if w.s.age >= 16 else DOSE_MG[agent] // 2,
                                      "unit": "mg", "system": UCUM, "code": "mg"}},
                  "effectivePeriod": {"start": w.at(inf.onset_day, "14:00"), "end": w.at(end, "10:00")}})
