"""Day 0 and the time axis: each event belongs to the latest CAR-T infusion before it (input-contract.md)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from itertools import pairwise
from operator import attrgetter

from .model import ConditionFact, DrugAdmin, Infusion, Moment, PatientData, Reading


@dataclass(slots=True)
class Course:
    """One infusion's time axis and the events that belong to it (days counted from its day 0)."""

    patient: PatientData
    infusion: Infusion
    number: int  # 1 for the first infusion, 2 for a re-infusion, ...
    until: datetime | None  # start of the next infusion (exclusive), None for the last one
    readings: list[tuple[int, Reading]] = field(default_factory=list)  # (day, reading), time-ordered
    drugs: list[DrugAdmin] = field(default_factory=list)
    conditions: list[tuple[int, ConditionFact]] = field(default_factory=list)  # (onset day, fact)
    # Before this infusion (and after the previous one): baselines such as the CAR-HEMATOTOX labs before
    # lymphodepletion, and the lymphodepleting chemotherapy itself. Never graded as a toxicity.
    pre_readings: list[tuple[int, Reading]] = field(default_factory=list)  # day < 0, or day 0 before it
    pre_drugs: list[DrugAdmin] = field(default_factory=list)

    _tz: timezone = field(init=False, repr=False)
    _offset: timedelta = field(init=False, repr=False)
    _day0: date = field(init=False, repr=False)
    _by_concept: dict[str, list[tuple[int, Reading]]] | None = field(default=None, init=False, repr=False,
                                                                    compare=False)
    _pre_by_concept: dict[str, list[tuple[int, Reading]]] | None = field(default=None, init=False, repr=False,
                                                                        compare=False)
    _windows: dict[int, tuple[datetime, datetime]] = field(default_factory=dict, init=False, repr=False,
                                                           compare=False)

    def __post_init__(self) -> None:
        # Computed once: day_of() runs for every event of the patient. The infusion's own fixed-offset
        # tzinfo where it has one (the same object as the readings' of that offset, ingest/timeparse.py), so
        # that comparing a reading with a day's window compares fields, not utcoffset() calls.
        own = self.infusion.when.at.tzinfo
        self._tz = own if type(own) is timezone else self.infusion.tz
        self._offset = self._tz.utcoffset(None)
        self._day0 = self.infusion.day0

    @property
    def tz(self) -> timezone:
        return self._tz

    def of(self, concept: str) -> list[tuple[int, Reading]]:
        """`readings` of one concept, in the same order. Built on first use, once the course is complete:
        graders ask for the same concepts many times (measured: IEC-HS oxygen rules scanned every reading
        ~3 times per episode)."""
        return self.by_concept().get(concept, [])

    def by_concept(self) -> dict[str, list[tuple[int, Reading]]]:
        """`readings` by concept (of() for every concept at once); read it, never change it."""
        if self._by_concept is None:
            self._by_concept = _index(self.readings)
        return self._by_concept

    def of_any(self, concepts: tuple[str, ...]) -> list[tuple[int, Reading]]:
        """`readings` of any of the concepts, in the same order as `readings` (ties between concepts kept)."""
        if len(concepts) == 1:
            return self.of(concepts[0])
        wanted = set(concepts)
        return [pair for pair in self.readings if pair[1].concept in wanted]

    def pre_of(self, concept: str) -> list[tuple[int, Reading]]:
        """`pre_readings` of one concept, in the same order; built on first use like of() (baselines look
        up a few concepts per course instead of scanning every pre-infusion reading per lookup)."""
        return self.pre_by_concept().get(concept, [])

    def pre_by_concept(self) -> dict[str, list[tuple[int, Reading]]]:
        """`pre_readings` by concept (pre_of() for every concept at once); read it, never change it."""
        if self._pre_by_concept is None:
            self._pre_by_concept = _index(self.pre_readings)
        return self._pre_by_concept

    def day_of(self, m: Moment) -> int:
        """Day N: calendar date in the infusion's own UTC offset minus day 0 (a bare date is that date)."""
        at = m.at
        if m.date_only or at.utcoffset() == self._offset:
            return (at.date() - self._day0).days  # already in the infusion's offset (the usual case)
        return (at.astimezone(self._tz).date() - self._day0).days

    def date_of(self, day: int) -> date:
        return self._day0 + timedelta(days=day)

    def window(self, day: int) -> tuple[datetime, datetime]:
        """[start, end) of calendar day N in the infusion's offset. Kept per day: CRS and ICANS ask for
        every day they grade, other graders for some again (measured: ~13,000 calls for 200 patients)."""
        found = self._windows.get(day)
        if found is None:
            start = datetime.combine(self._day0 + timedelta(days=day), time(0), self._tz)
            found = self._windows[day] = (start, start + timedelta(days=1))
        return found

    def age_on(self, day: int) -> int | None:
        return self.patient.age_on(self.date_of(day))

    def owns(self, m: Moment) -> bool:
        """Is the event at or after this course's infusion? Bare dates compare by calendar date (day 0)."""
        return _after(m, self.infusion)

    def take_readings(self, ordered: Iterable[Reading]) -> int:
        """Put time-ordered readings into `readings` (at or after the infusion) or `pre_readings` (before
        it), with their day; returns how many came before. For the usual patient, one course with a timed
        infusion: the ownership test and day_of() are inlined because this loop runs once per reading
        (measured: ~2x faster than calling them per reading)."""
        start = self.infusion.when.at
        offset, day0, tz = self._offset, self._day0, self._tz
        post, pre = self.readings, self.pre_readings
        before = 0
        last: Moment | None = None
        day, inside = 0, False
        for r in ordered:
            m = r.when
            if m is not last:  # readings of one Observation (and of one charting time) share their Moment
                last, at = m, m.at
                if m.date_only:
                    day = (at.date() - day0).days
                    inside = m.local_date(tz) >= day0
                else:
                    day = ((at.date() if at.utcoffset() == offset else at.astimezone(tz).date()) - day0).days
                    inside = at >= start
            if inside:
                post.append((day, r))
            else:
                before += 1
                pre.append((day, r))
        return before


def _index(pairs: list[tuple[int, Reading]]) -> dict[str, list[tuple[int, Reading]]]:
    """(day, reading) pairs by concept, each list in the order given."""
    out: dict[str, list[tuple[int, Reading]]] = {}
    for pair in pairs:
        found = out.get(pair[1].concept)
        if found is None:
            out[pair[1].concept] = [pair]
        else:
            found.append(pair)
    return out


def _after(m: Moment, inf: Infusion) -> bool:
    """Is the event at or after the infusion? Bare dates compare by calendar date (day 0 counts)."""
    if m.date_only or inf.when.date_only:
        return m.local_date(inf.tz) >= inf.day0
    return m.at >= inf.when.at


FRACTION_WINDOW_DAYS = 2
_WHEN_AT = attrgetter("when.at")  # sort key of readings: faster than a lambda, same order


def course_starts(infusions: list[Infusion]) -> list[Infusion]:
    """The infusions that start a course. A split or fractionated dose, or the same infusion recorded twice
    (a Procedure and a MedicationAdministration), given within FRACTION_WINDOW_DAYS of a course's day 0
    belongs to that course: day 0 is the first fraction (grading.md 0.1). A later infusion is a
    re-infusion with its own day 0."""
    starts: list[Infusion] = []
    for inf in sorted(infusions, key=lambda i: i.when.at):
        if starts:
            first = starts[-1]
            if (inf.when.local_date(first.tz) - first.day0).days <= FRACTION_WINDOW_DAYS:
                continue
        starts.append(inf)
    return starts


def courses(patient: PatientData) -> tuple[list[Course], int]:
    """Split a patient's events into infusion courses; also returns how many events came before any infusion.

    Events before an infusion are never a CAR-T toxicity of it (input-contract.md, Day 0); an event after
    a re-infusion belongs to the re-infusion.
    """
    infusions = course_starts(patient.infusions)
    out = [Course(patient, inf, n + 1, infusions[n + 1].when.at if n + 1 < len(infusions) else None)
           for n, inf in enumerate(infusions)]
    if not out:
        return out, len(patient.readings) + len(patient.drugs)
    before = _assign_readings(out, sorted(patient.readings, key=_WHEN_AT))
    before += _assign_drugs(out, patient.drugs)
    before += _assign_conditions(out, sorted(patient.conditions, key=lambda f: f.onset.at))
    return out, before


def _owner(out: list[Course], m: Moment) -> Course | None:
    """The course of the latest infusion at or before the event; None before the first infusion."""
    found = None
    for c in out:
        if not c.owns(m):
            break
        found = c
    return found


def _assign_readings(out: list[Course], ordered: list[Reading]) -> int:
    """Readings to their course; those before the first infusion are its baseline (pre_readings), and a
    course's readings are also the next course's baseline. Returns how many came before any infusion."""
    first = out[0]
    if len(out) == 1 and not first.infusion.when.date_only:
        return first.take_readings(ordered)
    before = 0
    for r in ordered:
        c = _owner(out, r.when)
        if c is None:
            before += 1
            first.pre_readings.append((first.day_of(r.when), r))
            continue
        c.readings.append((c.day_of(r.when), r))
    for c_prev, c_next in pairwise(out):
        c_next.pre_readings.extend((c_next.day_of(r.when), r) for _, r in c_prev.readings
                                   if r.when.at >= c_prev.infusion.when.at)
    return before


def _assign_drugs(out: list[Course], drugs: list[DrugAdmin]) -> int:
    """Drugs to their course, and to the next course's pre_drugs (lymphodepletion and the like). A drug
    started before the first infusion belongs to the first course only if it was still running then.
    Returns how many belong to no course."""
    before = 0
    first = out[0]
    for d in drugs:
        c = _owner(out, d.start)
        if c is None:
            # The course whose infusion comes next after the drug (the drug precedes it: its baseline).
            next((x for x in out if not x.owns(d.start)), out[-1]).pre_drugs.append(d)
            if not d.instant and (d.end is None or d.end.at >= first.infusion.when.at):
                first.drugs.append(d)
            else:
                before += 1
            continue
        c.drugs.append(d)
        if c.until is not None:
            nxt = next((x for x in out if x.number == c.number + 1), None)
            if nxt is not None:
                nxt.pre_drugs.append(d)
    return before


def _assign_conditions(out: list[Course], ordered: list[ConditionFact]) -> int:
    """Conditions to the course of their onset, with the onset day; returns how many precede every course."""
    before = 0
    for f in ordered:
        c = _owner(out, f.onset)
        if c is None:
            before += 1
            continue
        c.conditions.append((c.day_of(f.onset), f))
    return before
