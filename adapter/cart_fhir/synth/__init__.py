"""Seeded synthetic CAR-T cohorts as FHIR R4, with each patient's scenario as ground truth (issue 7)."""
