"""EHA/EBMT 2023 ICAHT grade, early (days 0-30) and late (after day 30) (Rejeski et al., Blood
2023;142(10):865-877, early and late ICAHT grading table; grading.md section 4 and preface decision 11).

Combining rules (thresholds, windows and counts are data in mappings/eha-ebmt-icaht-2023.yaml):
- H1/H2: one value per day, the lowest ANC of the day; thresholds are inclusive. A result with a comparator
  is a bound (grading.md 0.4): "<0.1 x10*3/uL" is <= 100/uL; a bound straddling a threshold decides nothing.
- H6: linear interpolation over up to 7 days without an ANC, rounded to 10/uL. Interpolated days count like
  measured ones (the consensus counts calendar days; labs are not drawn daily) and are flagged. ANCs of the
  days before the infusion anchor the interpolation; they never count.
- Decision 11 (cumulative, not Liang's longest run): every day of days 0-30 at or below the threshold counts,
  and so do days of non-stable recovery (fewer than 3 consecutive days above it) between two such days.
- 4.5 missing days: a stretch without an ANC that follows a stable recovery and ends above the threshold (or
  at the end of the data) is taken as recovered ("grade from the observed runs"). Any other stretch is read
  both ways: the same grade -> graded; else at least the lower one (not assessable when that is 0).
- H7: ANC <= 500 from day 0-3 that has not recovered at the last ANC (early death, end of data) is grade 4.
- Late (4.2, decision 11): grade g when ANC is at or below g's threshold on >= 2 days of day 31 to day 100,
  cut at death and at the next infusion. A low last value that no later ANC confirms keeps the grade open.
- G-CSF is reported with the grade (supporting) and never changes it (4.4, 8.2).

Modules: table (the criteria table, its checks, its lookups), series (the daily ANC series: H1 lowest of the
day, H6 interpolation, follow-up end, decision 11 cumulative counts), early and late (the two windows'
rules), findings (the Observation and AdverseEvent of a window), grader (IcahtGrader: runs a course).
"""

from .grader import IcahtGrader
from .table import IcahtTable

__all__ = ["IcahtGrader", "IcahtTable"]
