"""IAGO long-term effects of one synthetic patient (issue 16): low IgG with or without replacement, B-cell
aplasia, a second primary malignancy, drawn from mappings/synth-cohort.yaml `long_term`, and their ground
truth computed from the scenario by the rules of the tables (never by calling a grader).

Drawn from the patient's own `late` random stream, so the CRS/ICANS/ICAHT/infection draws and resources of
a seed stay what they were; the resources are appended after the others. Ground truth:
- hypogammaglobulinemia: IgG on day 90 <= 400 mg/dL (mappings/hypogammaglobulinemia.yaml), onset day 90,
  nadir = that IgG, replacement when IVIG is given (day 92);
- B-cell aplasia: CD19+ B cells on day 90 below 20/uL (b-cell-aplasia.yaml), recovery on day 180 or still
  low then: onset 90, duration 90;
- second malignancy: a Condition (ICD-10-CM, one per lineage) with onset on the drawn day;
- prolonged cytopenia: the late ICAHT ANC level (labs.ANC_LATE), which the counts after day 100 keep, below
  the CTCAE grade 3 / 4 thresholds (prolonged-cytopenia.yaml: < 1000 / < 500 per uL), onset on the first count
  after day 100 (day 104, or day 101 when the daily period runs past it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from . import labs
from .builder import PatientWriter
from .scenario import Scenario
from .table import SynthTable

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
MALIGNANCY = {"t-cell": ("C84.40", "Peripheral T-cell lymphoma, not classified, unspecified site"),
              "myeloid": ("D46.9", "Myelodysplastic syndrome, unspecified"),
              "other": ("C34.90", "Malignant neoplasm of unspecified part of unspecified bronchus or lung")}
IGG_LOINC, CD19_LOINC = "2465-3", "8116-6"  # mappings/concepts.yaml
IGG_NORMAL, CD19_NORMAL, CD19_RECOVERED = 750.0, 150.0, 120.0
IGG_DAY, IVIG_DAY, CD19_DAYS = 90, 92, (90, 180)


@dataclass(frozen=True, slots=True)
class LateEffects:
    igg_mg_dl: float  # the day-90 IgG
    ivig: bool
    aplasia: bool
    recovers: bool  # CD19 back on day 180
    malignancy: tuple[int, str] | None  # (onset day, lineage)


def draw_late(rng: random.Random, table: SynthTable) -> LateEffects | None:
    lt = table.long_term
    if lt is None:
        return None
    low = rng.uniform(0, 100) < lt.hypogammaglobulinemia_pct
    igg = float(rng.randint(150, 400)) if low else IGG_NORMAL
    ivig = low and rng.uniform(0, 100) < lt.ivig_pct
    aplasia = rng.uniform(0, 100) < lt.b_cell_aplasia_pct
    recovers = aplasia and rng.uniform(0, 100) < lt.b_cell_recovery_pct
    malignancy = None
    if rng.uniform(0, 100) < lt.second_malignancy_pct:
        lineage = rng.choices(("t-cell", "myeloid", "other"), weights=lt.lineage_weights)[0]
        malignancy = (rng.randint(*lt.malignancy_onset_day), lineage)
    return LateEffects(igg, ivig, aplasia, recovers, malignancy)


def realise(s: Scenario, late: LateEffects, n: int) -> list[dict[str, Any]]:
    """The resources of the late effects; ids continue the patient's numbering after `n` resources."""
    w = PatientWriter(s, random.Random(0), n=n)
    w.qty("igg", IGG_LOINC, IGG_DAY, "08:00", late.igg_mg_dl, "mg/dL", "laboratory")
    if late.ivig:
        w.add("ivig", {"resourceType": "MedicationAdministration", "status": "completed",
                       "medicationCodeableConcept": {"text": "immune globulin intravenous (IVIG)"},
                       "subject": w.subject(), "effectiveDateTime": w.at(IVIG_DAY, "10:00")})
    for day in CD19_DAYS:
        value = CD19_NORMAL if not late.aplasia else (CD19_RECOVERED if late.recovers and day > 90 else 4.0)
        w.qty("cd19", CD19_LOINC, day, "08:00", value, "/uL", "laboratory")
    if late.malignancy is not None:
        day, lineage = late.malignancy
        code, display = MALIGNANCY[lineage]
        w.add("malignancy", {"resourceType": "Condition", "subject": w.subject(),
                             "verificationStatus": {"coding": [{"system": labs.VERIFICATION, "code": "confirmed"}]},
                             "code": {"coding": [{"system": ICD10CM, "code": code, "display": display}],
                                      "text": display},
                             "onsetDateTime": w.at(day, "09:00")})
    return w.resources


def expected(s: Scenario, late: LateEffects | None, days: int) -> dict[str, Any]:
    """Ground truth of the long-term effects (present ones only; absent ones are null)."""
    out: dict[str, Any] = {"hypogammaglobulinemia": None, "b_cell_aplasia": None, "second_malignancy": None}
    anc = labs.ANC_LATE[s.cytopenia.late_grade] * 1000  # /uL: the late level, also after day 100
    grade = 4 if anc < 500 else 3 if anc < 1000 else 0
    # the first ANC after day 100: daily counts run to day max(days, 31) - 1, follow-up counts after that
    written = [*range(max(days, 31)), *(d for d in labs.LATE_DAYS if d >= max(days, 31))]
    first = min((d for d in written if d > 100), default=None)
    out["prolonged_cytopenia"] = ({"onset_day": first, "max_grade": grade, "lineages": ["neutrophils"]}
                                  if grade and first is not None else None)
    if late is None:
        return out
    if late.igg_mg_dl <= 400:
        out["hypogammaglobulinemia"] = {"onset_day": IGG_DAY, "nadir_igg_mg_dl": late.igg_mg_dl,
                                        "replacement": late.ivig}
    if late.aplasia:
        out["b_cell_aplasia"] = {"onset_day": CD19_DAYS[0], "duration_days": CD19_DAYS[1] - CD19_DAYS[0],
                                 "resolution_day": CD19_DAYS[1] if late.recovers else None}
    if late.malignancy is not None:
        out["second_malignancy"] = {"onset_day": late.malignancy[0], "lineage": late.malignancy[1]}
    return out
