"""ASTCT 2019 CRS grade per day (Lee et al., Biol Blood Marrow Transplant 2019;25:625-638, CRS grading table).

One module per rule of the paper (the thresholds are data in mappings/astct-crs-2019.yaml):
- fever: R1, a temperature >= 38.0 C opens the episode (grading.md 1.2 R1, decision 3); the gate: inside
  an open episode hypotension and hypoxia count without a fever that day (an earlier fever of the episode,
  or tocilizumab/steroids/antipyretics given after onset mask it: R2); outside one they are not CRS.
- hypotension: grades 2-4; R4, vasopressin never makes "multiple" vasopressors and alone counts as one
  (decision 4).
- hypoxia: grades 2-4 by oxygen device and flow; a nasal cannula without a flow proves only "at least 2"
  (decision 5).
- combine: R3, the grade is the highest of fever (1), hypotension and hypoxia; they are not added.
  Grade 5 is never assigned by the engine (decision 2).
- grader: CrsGrader, which runs the days of a course and carries the episode across them.
"""

from .grader import CrsGrader

__all__ = ["CrsGrader"]
