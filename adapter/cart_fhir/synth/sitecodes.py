"""`--local-codes`: some observations carry a site's own lab/flowsheet codes instead of LOINC, and a FHIR
ConceptMap (written to DIR/conceptmap.json) maps them back, as input-contract.md asks a site to do."""

from __future__ import annotations

from typing import Any

from ..constants import BASE

LOINC = "http://loinc.org"
SITE = "https://cart-fhir.org/synthetic/CodeSystem/site-observation"
# site code -> (LOINC code it stands for, display)
SITE_CODES = {"TEMP-CORE": ("8310-5", "Body temperature"), "SPO2-PULSE": ("59408-5", "SpO2 by pulse oximetry"),
              "NEUT-ABS": ("751-8", "Neutrophils [#/volume] in Blood"), "PLT": ("777-3", "Platelets"),
              "CRP-SERUM": ("1988-5", "C reactive protein")}
_BY_LOINC = {loinc: site for site, (loinc, _) in SITE_CODES.items()}


def localise(res: dict[str, Any]) -> None:
    """Replace a LOINC code of SITE_CODES by the site's code, in place."""
    for coding in res.get("code", {}).get("coding", []):
        if coding.get("system") == LOINC and coding.get("code") in _BY_LOINC:
            coding["system"], coding["code"] = SITE, _BY_LOINC[coding["code"]]


def concept_map() -> dict[str, Any]:
    """The ConceptMap from the site codes to LOINC (R4; read by `cart-fhir grade --concept-map`)."""
    return {"resourceType": "ConceptMap", "id": "synthetic-site-observations",
            "url": f"{BASE}/ConceptMap/synthetic-site-observations", "version": "1",
            "name": "SyntheticSiteObservations", "status": "active",
            "description": "Site-local observation codes of a `cart-fhir synth --local-codes` cohort, mapped to LOINC.",
            "group": [{"source": SITE, "target": LOINC,
                       "element": [{"code": site, "display": display,
                                    "target": [{"code": loinc, "equivalence": "equivalent"}]}
                                   for site, (loinc, display) in sorted(SITE_CODES.items())]}]}
