"""IEC-HS timing (grading.md 3.1 'Timing', 3.3 item 1) and grouping screen-positive pairs into episodes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ...model import Reading
from ..result import DayGrade, Episode, State
from .labs import Labs, Pair, quantity
from .table import TimingRule

# A reading that rose again: its day and value, the peak and the lowest value since (the sentence is written
# only for a reading that decides a day's timing: about half the readings of a course rise again).
Rise = tuple[int, float, float, float]


def _reworsening(readings: list[tuple[int, Reading]], fall: float, rise: float) -> list[tuple[Reading, Rise]]:
    """Readings at least `rise` above the lowest value reached after a fall of `fall` from the post-infusion
    peak (grading.md 3.3: re-worsening after initial improvement), each with its Rise (_rise_text)."""
    out: list[tuple[Reading, Rise]] = []
    peak: float | None = None
    nadir: float | None = None
    for day, r in readings:
        v = quantity(r).value
        if peak is None or (nadir is None and v > peak):
            peak = v
        elif nadir is None:
            if v <= peak * (1 - fall):
                nadir = v
        elif v >= nadir * (1 + rise):
            out.append((r, (day, v, peak, nadir)))
        else:
            nadir = min(nadir, v)
    return out


def _rise_text(r: Reading, rose: Rise) -> str:
    day, v, peak, nadir = rose
    return f"{r.concept} {v:g} on day {day} rose again after falling from {peak:g} to {nadir:g}"


@dataclass(frozen=True, slots=True)
class TimingMatch:
    """Why a day is timing-compatible: the timing row key, a sentence, and the readings that show it."""

    key: str
    text: str
    refs: tuple[str, ...] = ()


class Timing:
    """Is a day timing-compatible with IEC-HS (grading.md 3.1 'Timing', 3.3 item 1)?

    Re-worsening of ferritin/CRP after a fall counts first (it is the IEC-HS picture even when CRS signs
    return); otherwise the rise of any CRS episode to its peak excludes the day (crs-onset-phase), and the
    day must be in a resolving CRS, within N days after one, or in a course without CRS.
    """

    def __init__(self, rules: dict[str, TimingRule], labs: Labs, crs_days: Sequence[DayGrade],
                 crs_episodes: Sequence[Episode]) -> None:
        self.rules = {k: r for k, r in rules.items() if r.enabled}
        self.by_day = {d.day: d for d in crs_days}
        self.episodes = list(crs_episodes)
        rew = rules["timing-reworsening"]
        self.series = {c: labs.post(c) for c in rew.concepts}
        fall, rise = rew.fall_fraction or 0, rew.rise_fraction or 0
        self.marks = {c: {id(r): rose for r, rose in _reworsening(s, fall, rise)}
                      for c, s in self.series.items()}

    def __call__(self, day: int) -> TimingMatch | None:
        if "timing-reworsening" in self.rules:
            for concept, series in self.series.items():
                latest = [r for d, r in series if d <= day][-1:]
                if latest and id(latest[0]) in self.marks[concept]:
                    text = _rise_text(latest[0], self.marks[concept][id(latest[0])])
                    return TimingMatch("timing-reworsening", text, (latest[0].ref,))
        rising = any(e.onset_day <= day <= e.max_day.day for e in self.episodes)
        if "crs-onset-phase" in self.rules and rising:
            return None  # a CRS rising to its peak explains the labs (grading.md 3.1: not IEC-HS)
        after = self.rules.get("timing-after-crs")
        for ep in self.episodes:
            if "timing-crs-resolving" in self.rules and self._resolving(ep, day):
                text = (f"CRS resolving: grade {self.by_day[day].grade} on day {day} after its peak grade "
                        f"{ep.max_grade} on day {ep.max_day.day}")
                return TimingMatch("timing-crs-resolving", text)
            done = ep.resolved_day
            if after is not None and done is not None and done <= day <= done + (after.days or 0):
                return TimingMatch("timing-after-crs", f"day {day} is {day - done} day(s) after CRS resolved "
                                   f"on day {done} (window {after.days} days)")
        if "timing-no-crs" in self.rules and not self.episodes:
            return TimingMatch("timing-no-crs", "no CRS episode in this course: timing not judged by CRS")
        return None

    def _resolving(self, ep: Episode, day: int) -> bool:
        """After the episode's peak day, before its resolution, graded below the peak that day."""
        dg = self.by_day.get(day)
        return (ep.max_day.day < day and (ep.resolved_day is None or day < ep.resolved_day) and dg is not None
                and dg.state == State.GRADED and dg.grade is not None and dg.grade < ep.max_grade)


def group_episodes(pairs: list[Pair], negatives: list[Reading], timing: Timing
           ) -> list[tuple[list[Pair], Reading | None, TimingMatch]]:
    """Screen-positive episodes: opened by the first pair on a timing-compatible day, joined by every later
    pair whose ferritin came before the first later ferritin that no longer meets the key finding (which
    resolves the episode). A new episode needs a new timing-compatible pair after that."""
    out: list[tuple[list[Pair], Reading | None, TimingMatch]] = []
    floor: datetime | None = None
    while True:
        cands = [p for p in pairs if floor is None or p.ferritin.at > floor]
        opener = next(((p, t) for p in cands if (t := timing(p.day)) is not None), None)
        if opener is None:
            return out
        first, when = opener
        last_f = first.ferritin.at
        while True:  # grow until no member's ferritin is later than the last one seen
            resolved = next((r for r in negatives if r.when.at > last_f), None)
            members = [p for p in cands if p.at >= first.at
                       and (resolved is None or p.ferritin.at < resolved.when.at)]
            newest = max(p.ferritin.at for p in members)
            if newest == last_f:
                break
            last_f = newest
        out.append((members, resolved, when))
        if resolved is None:
            return out
        floor = resolved.when.at
