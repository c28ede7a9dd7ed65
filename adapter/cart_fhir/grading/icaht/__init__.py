"""EHA/EBMT 2023 ICAHT, early and late (Rejeski et al., Blood 2023;142(10):865-877; grading.md 4).

Modules: table (the criteria table, its checks, its lookups), series (the daily ANC series: H1 lowest of the
day, H6 interpolation, follow-up end, decision 11 cumulative counts), early and late (the two windows'
rules), findings (the Observation and AdverseEvent of a window), grader (IcahtGrader: runs a course).
"""

from .grader import IcahtGrader
from .table import IcahtTable

__all__ = ["IcahtGrader", "IcahtTable"]
