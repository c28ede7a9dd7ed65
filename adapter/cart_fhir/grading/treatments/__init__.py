"""Treatments and response of CRS/ICANS episodes (grading.md section 8, preface decision 12).

Modules: table (the criteria table, its start-up check, its lookups), linking (T1: doses to episodes),
exposure (T2: steroid exposure, high-dose starts, dosing hints), outcomes (T3 refractory, T4 improvement
and IDM remission), analyzer (TreatmentAnalyzer: one TreatmentResponse per episode).
"""

from .analyzer import TreatmentAnalyzer, TreatmentResponse
from .table import TreatmentTable

__all__ = ["TreatmentAnalyzer", "TreatmentResponse", "TreatmentTable"]
