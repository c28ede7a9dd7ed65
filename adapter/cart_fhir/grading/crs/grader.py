"""CrsGrader: the CRS grade of each day of a course, the episode carried across days (rules in __init__)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from ...model import DrugAdmin, Moment, Reading
from ...tables import CrsTable, DeviceRow
from ...timeline import Course
from ..result import DayGrade, State, Toxicity
from .combine import combine
from .fever import GATE_LIFTING_ROLES, fever, gate
from .hypotension import PRESSOR_ROLES, hypotension
from .hypoxia import fixed_ranges, hypoxia

BP_CONCEPTS = ("systolic-bp", "diastolic-bp", "mean-bp")
OXYGEN_CONCEPTS = ("oxygen-device", "oxygen-flow")
_DOMAIN = {"body-temperature": 0, **dict.fromkeys(BP_CONCEPTS, 1), **dict.fromkeys(OXYGEN_CONCEPTS, 2)}


@dataclass(slots=True)
class DayData:
    """One day's readings of the three CRS domains."""

    temps: list[Reading] = field(default_factory=list)
    bp: list[Reading] = field(default_factory=list)
    oxygen: list[Reading] = field(default_factory=list)


class CrsGrader:
    """Grades the CRS of one infusion course, day by day, carrying the episode state across days."""

    def __init__(self, table: CrsTable) -> None:
        self.t = table
        self.devices: dict[str, DeviceRow] = {d.device: d for d in table.oxygen.devices}
        self.fixed = fixed_ranges(self.devices)
        self.tier_grade: dict[str, int] = {r.tier: r.grade for r in table.hypotension_tiers}

    def grade(self, course: Course) -> list[DayGrade]:
        """Every day from day 0 with a CRS reading or a running vasopressor; an episode opens with the first
        positive day and closes with the first day graded 0."""
        days = _days(course)
        pressors = [d for d in course.drugs if d.role in PRESSOR_ROLES]
        lifting = sorted((d for d in course.drugs if d.role in GATE_LIFTING_ROLES), key=lambda d: d.start.at)
        out: list[DayGrade] = []
        open_since: datetime | None = None  # onset of the open episode
        for day in sorted(days):
            if day < 0:
                continue
            dg = self._grade_day(course, day, days[day], pressors, lifting, open_since)
            if dg.state == State.GRADED and dg.grade == 0:
                open_since = None
            elif dg.positive and open_since is None:
                open_since = dg.onset
            out.append(dg)
        return out

    def _grade_day(self, course: Course, day: int, data: DayData, pressors: list[DrugAdmin],
                   lifting: list[DrugAdmin], open_since: datetime | None) -> DayGrade:
        """The three domains, the gate, and their combination (R1-R4) into one DayGrade."""
        window = course.window(day)
        start, end = window
        if day == 0 and not course.infusion.when.date_only:
            start = max(start, course.infusion.when.at)  # day 0 starts at the infusion
        f = fever(data.temps, self.t.fever.threshold_celsius)
        hypo = hypotension(data.bp, pressors, self.t.hypotension, self.tier_grade, course.age_on(day), start,
                           end, course.patient.horizon)
        ox = hypoxia(data.oxygen, self.devices, self.fixed, self.t.oxygen.low_flow_max_l_min)
        g = gate(f, open_since, lifting, start, end)
        out = combine(f, hypo, ox, g, start)
        # The three domains in order (fever, hypotension, hypoxia), then the gate and the combination.
        # grading.md decision 9: no clinician attribution in the input.
        flags = ("attribution-unconfirmed",) + f.flags + hypo.flags + ox.flags
        return DayGrade(Toxicity.CRS, day, out.state, out.grade, out.onset if out.grade else None,
                        window, f.components + hypo.components + ox.components,
                        _unique(f.evidence + hypo.evidence + ox.evidence),
                        _unique(f.supporting + hypo.supporting + ox.supporting + g.supporting), out.missing,
                        f.reasons + hypo.reasons + ox.reasons + g.reasons + out.reasons, _unique(flags))


def _days(course: Course) -> dict[int, DayData]:
    """The course's CRS readings by day, and every day a vasopressor runs (a day relevant to CRS)."""
    days: dict[int, DayData] = defaultdict(DayData)
    domain = _DOMAIN
    for day, r in course.readings:  # one pass, in time order (oxygen evidence keeps the input's order)
        k = domain.get(r.concept)
        if k is not None:
            data = days[day]
            (data.temps if k == 0 else data.bp if k == 1 else data.oxygen).append(r)
    horizon = course.patient.horizon
    for d in course.drugs:
        if d.role not in PRESSOR_ROLES:
            continue
        first = max(course.day_of(d.start), 0)
        last_at = d.start.at if d.instant else (d.end.at if d.end else horizon or d.start.at)
        last = course.day_of(Moment(last_at))
        if course.until is not None:
            last = min(last, course.day_of(Moment(course.until)))
        for day in range(first, max(first, last) + 1):
            days[day]  # creates the day (defaultdict)
    return days


def _unique(items: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items)) if len(items) > 1 else tuple(items)  # mostly one or none
