"""IcahtGrader: early and late ICAHT of a course (rules in the package __init__)."""

from __future__ import annotations

from ...timeline import Course
from ..result import Assessment, Findings
from .early import early
from .late import late
from .series import censor, daily_lowest, interpolated
from .table import IcahtTable, Lookups


class IcahtGrader:
    """Grades early and late ICAHT of one course from its ANC series."""

    def __init__(self, table: IcahtTable) -> None:
        self.t = table
        self.lk = Lookups.of(self.t)
        self.table_id = self.lk.table_id

    def grade(self, course: Course) -> Findings:
        end = censor(course)
        gap, step = self.lk.settings["interpolation-max-gap-days"], self.lk.settings["interpolation-round-to"]
        measured = daily_lowest(course, end[0], gap)
        a_early, ev_early = early(self.lk, course, interpolated(measured, gap, step), end)
        a_late, ev_late = late(self.lk, course, measured, end)
        return Findings(assessments=(a_early, a_late), events=tuple(e for e in (ev_early, ev_late) if e))

    def unverified_rows(self, a: Assessment) -> tuple[str, ...]:
        """Table rows marked verified: false that the assessment used (decision 10, run report)."""
        return self.lk.unverified("early" if a.code == self.lk.windows["early"].code else "late")
