"""Words and units the view shows: lane names, concept names, display units, component values."""

from __future__ import annotations

from ..grading.result import Component, Toxicity

# Lanes in the order the issue lists them; the keys are the summary-row names (summary.episode_rows).
LANES = (Toxicity.CRS, Toxicity.ICANS, Toxicity.IEC_HS, Toxicity.ICAHT_EARLY, Toxicity.ICAHT_LATE,
         Toxicity.INFECTION, Toxicity.NEURO_OTHER)
LANE_LABELS = {
    "crs": "CRS", "icans": "ICANS", "iec-hs": "IEC-HS", "icaht-early": "ICAHT early", "icaht-late": "ICAHT late",
    "infection": "Infections", "neurotoxicity-other": "Other neurotoxicity", "car-hematotox": "CAR-HEMATOTOX",
    # IAGO long-term effects: no daily lane; listed with the events (found) or under "after the last day".
    "hypogammaglobulinemia": "Hypogammaglobulinemia", "b-cell-aplasia": "B-cell aplasia",
    "second-malignancy": "Second primary malignancy", "prolonged-cytopenia": "Prolonged cytopenia",
}


def lane_label(toxicity: str) -> str:
    """The label of a toxicity; a registered toxicity this page does not know yet shows its name."""
    return LANE_LABELS.get(toxicity, toxicity)

CONCEPT_LABELS = {
    "body-temperature": "Temperature", "systolic-bp": "Systolic BP", "diastolic-bp": "Diastolic BP",
    "mean-bp": "Mean arterial pressure", "oxygen-flow": "O2 flow", "oxygen-device": "O2 device", "spo2": "SpO2",
    "ice-score": "ICE score", "capd-score": "CAPD score", "consciousness": "Consciousness", "seizure": "Seizure",
    "motor": "Motor finding", "cerebral-edema": "Cerebral edema", "cannot-perform-ice": "Cannot perform ICE",
    "anc": "ANC", "wbc": "WBC", "platelets": "Platelets", "hemoglobin": "Hemoglobin", "crp": "CRP",
    "ferritin": "Ferritin", "fibrinogen": "Fibrinogen", "alt": "ALT", "ast": "AST", "bilirubin": "Bilirubin",
    "ldh": "LDH", "triglycerides": "Triglycerides", "creatinine": "Creatinine", "il6": "IL-6",
}

# The canonical unit of each quantity concept (mappings/concepts.yaml `unit`), as a person reads it. The
# CLI and the service pass the table's own units too (view.model.build_patients(units=...)).
DISPLAY_UNITS = {
    "body-temperature": "\u00b0C", "systolic-bp": "mmHg", "diastolic-bp": "mmHg", "mean-bp": "mmHg",
    "oxygen-flow": "L/min", "spo2": "%", "anc": "/\u00b5L", "wbc": "/\u00b5L", "platelets": "/\u00b5L",
    "hemoglobin": "g/dL", "crp": "mg/dL", "ferritin": "ng/mL", "fibrinogen": "mg/dL", "alt": "U/L", "ast": "U/L",
    "bilirubin": "mg/dL", "ldh": "U/L", "triglycerides": "mg/dL", "creatinine": "mg/dL", "il6": "pg/mL",
}
_UCUM_SHOWN = {"Cel": "\u00b0C", "mm[Hg]": "mmHg", "/uL": "/\u00b5L"}


def display_unit(ucum: str) -> str:
    return _UCUM_SHOWN.get(ucum, ucum)


def fmt_number(v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.1f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    return str(v)


def component_text(c: Component) -> str:
    value = f"{fmt_number(c.value)} \u00b0C" if c.kind == "celsius" else fmt_number(c.value)
    return value if c.grade is None else f"{value} (grade {c.grade})"
