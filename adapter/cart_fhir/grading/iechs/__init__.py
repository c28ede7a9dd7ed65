"""IEC-HS screen and suggested grade (Hines MR et al., Transplant Cell Ther 2023;29(7):438.e1; grading.md 3).

Modules, in the order a course is graded: table (the criteria table, its start-up check, its lookups),
labs (a course's lab readings, reference limits and baselines), screen (the screen criteria), timing
(timing compatibility and grouping into episodes), suggest (the suggested grade), grader (IecHsGrader:
runs a course and builds the Assessments and Events).
"""

from .grader import IecHsGrader
from .table import IecHsTable

__all__ = ["IecHsGrader", "IecHsTable"]
