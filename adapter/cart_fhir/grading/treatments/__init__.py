"""Treatments and response of CRS/ICANS episodes (grading.md section 8, preface decision 12).

Sources: NCCN Management of Immunotherapy-Related Toxicities v2.2026 CART-6/CART-9 and ASCO 2021 (agents
and doses, grading.md 8.1); Jain, Smith, Shah, Blood 2023;141(20):2430 (no consensus on refractory disease:
the local definition of grading.md 8.3, labelled "local-definition-v1" per 11.14); Meng et al., Front
Immunol 2025, doi:10.3389/fimmu.2025.1716317 (IDM remission table, grading.md 8.5). Thresholds, codes and
windows are rows of mappings/treatment-response.yaml; the package holds the combining rules:

- T1 linking: a reasonReference to a CRS/ICANS Condition decides the episode whatever the timing; without
  one, a dose given from the episode onset until its resolution belongs to it when the agent treats that
  toxicity (tocilizumab/siltuximab: CRS; intrathecal: ICANS; steroids/anakinra: whichever is open, both
  when CRS and ICANS are open, flagged). Prophylaxis, and any dose before the onset, treats no episode.
- T2 exposure: dexamethasone equivalents of systemic corticosteroids only (intrathecal excluded, 8.1).
- T3 refractory (8.3): the first table row met decides; a row the data cannot decide is named as missing.
- T4 response (8.4, 8.5): baselines are the daily grades of the first-dose day and the day before.

Modules: table (the criteria table, its start-up check, its lookups), linking (T1: doses to episodes),
exposure (T2: steroid exposure, high-dose starts, dosing hints), outcomes (T3 refractory, T4 improvement
and IDM remission), analyzer (TreatmentAnalyzer: one TreatmentResponse per episode).
"""

from .analyzer import TreatmentAnalyzer, TreatmentResponse
from .table import TreatmentTable

__all__ = ["TreatmentAnalyzer", "TreatmentResponse", "TreatmentTable"]
