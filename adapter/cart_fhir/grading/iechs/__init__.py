"""IEC-HS screen and suggested grade (Hines MR et al., Transplant Cell Ther 2023;29(7):438.e1-438.e16: the
IEC-HS criteria table and grading table, as restated UNVERIFIED in grading.md section 3; CTCAE v5.0 lab
bands of grading.md 9.2). Thresholds, windows and codes are data in mappings/astct-iechs-2023.yaml.

Two layers (grading.md 3.3), never a diagnosis:
- Screen (3.3 item 1): on a day >= first-screen-day, ferritin meets the key finding (> 2 x ULN, > 2 x the
  baseline at infusion, optionally doubling within 48 h) AND, within concurrence-hours of it, a second
  criterion (ALT/AST > 5 x ULN or abnormal baseline, fibrinogen < 150 mg/dL or < LLN, new or worsening
  cytopenia by CTCAE grade) AND the day is timing-compatible (CRS resolving, within N days after CRS,
  ferritin/CRP re-worsening after a fall, or no CRS at all; never the rise of a CRS episode to its peak).
  The positive screen opens an episode that lasts until a later ferritin no longer meets the key finding;
  findings inside an open episode extend it without a new timing check.
- Grade (3.3 item 2): 1, raised by IEC-HS-directed treatment started on or after the screen day (2), new
  oxygen or a new creatinine rise (3), new vasopressors or positive-pressure ventilation (4). Grade 5 is
  never suggested (decision 2). Every result is provisional: flagged clinician-confirmation-required.
A lab bound that straddles a threshold (">500" against 600) does not meet the criterion.

Modules, in the order a course is graded: table (the criteria table, its start-up check, its lookups),
labs (a course's lab readings, reference limits and baselines), screen (the screen criteria), timing
(timing compatibility and grouping into episodes), suggest (the suggested grade), grader (IecHsGrader:
runs a course and builds the Assessments and Events).
"""

from .grader import IecHsGrader
from .table import IecHsTable

__all__ = ["IecHsGrader", "IecHsTable"]
