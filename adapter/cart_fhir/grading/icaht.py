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

The criteria table models are in icaht_table.py and the ANC series in icaht_series.py; this module grades
and re-exports their public names.
"""

from __future__ import annotations

from typing import Literal

from ..model import DrugAdmin, Quantity, Reading
from ..tables import load_yaml_table
from ..timeline import Course
from .icaht_series import (
    ABOVE,
    BELOW,
    _at_most,
    _Count,
    _Day,
    _End,
    censor,
    cumulative,
    daily_lowest,
    days_text,
    early_count,
    interpolated,
)
from .icaht_table import EarlyRow, IcahtTable, IcahtWindow, LateRow, Setting, SettingName
from .result import Assessment, Component, Event, Findings, State, Toxicity

__all__ = [
    "ABOVE", "ANC", "BELOW", "EarlyRow", "IcahtGrader", "IcahtTable", "IcahtWindow", "LateRow", "Setting",
    "SettingName", "cumulative", "days_text",
]

ANC = "ANC (LOINC 751-8)"


class IcahtGrader:
    """Grades early and late ICAHT of one course from its ANC series."""

    def __init__(self, table: IcahtTable | None = None) -> None:
        self.t = table or load_yaml_table("eha-ebmt-icaht-2023.yaml", IcahtTable)
        self.w = {w.window: w for w in self.t.windows}
        self.s = {k: v.value for k, v in self.t.settings.items()}
        self.stable = self.s["stable-recovery-days"]
        self.thresholds = sorted({r.anc_at_most for r in self.t.early}, reverse=True)
        self.onset = self.thresholds[0]  # 500: early ICAHT starts at ANC <= 500 (4.1)
        self.late_rows = sorted(self.t.late, key=lambda r: r.grade)
        self.table_id = f"{self.t.table} v{self.t.version}"

    def grade(self, course: Course) -> Findings:
        end = censor(course)
        gap, step = self.s["interpolation-max-gap-days"], self.s["interpolation-round-to"]
        measured = daily_lowest(course, end[0], gap)
        early, ev_early = self._early(course, interpolated(measured, gap, step), end)
        late, ev_late = self._late(course, measured, end)
        return Findings(assessments=(early, late), events=tuple(e for e in (ev_early, ev_late) if e))

    def unverified_rows(self, a: Assessment) -> tuple[str, ...]:
        """Table rows marked verified: false that the assessment used (decision 10, run report)."""
        return self._unverified("early" if a.code == self.w["early"].code else "late")

    def _unverified(self, window: Literal["early", "late"]) -> tuple[str, ...]:
        names: tuple[SettingName, ...] = ("late-min-measurements",) if window == "late" else (
            "stable-recovery-days", "interpolation-max-gap-days", "interpolation-round-to",
            "never-recovered-start-last-day")
        rows = [(f"window-{window}", self.w[window].verified),
                *((n, self.t.settings[n].verified) for n in names),
                *((r.id, r.verified) for r in (self.t.late if window == "late" else self.t.early))]
        return tuple(f"{self.t.table}:{i}" for i, ok in rows if not ok)

    # ---- early ICAHT -----------------------------------------------------------------------------

    def _early_grade(self, counts: dict[int, int]) -> int:
        return max((r.grade for r in self.t.early
                    if r.min_days <= counts.get(r.anc_at_most, 0) <= (r.max_days or 10**6)), default=0)

    def _never_recovered(self, days: dict[int, _Day]) -> int | None:
        """H7: start of an ANC <= 500 run from day 0-3 still unrecovered at the last ANC before day 30."""
        w = self.w["early"]
        last = max(days, default=-1)
        if not w.first_day <= last < w.last_day or days[last].at_most(self.onset) is not BELOW:
            return None
        start, above, d = last, 0, last
        while d - 1 >= w.first_day and d - 1 in days and above < self.stable:
            d -= 1
            status = days[d].at_most(self.onset)
            if status is None:
                break
            start, above = (d, 0) if status is BELOW else (start, above + 1)
        return start if start <= w.first_day + self.s["never-recovered-start-last-day"] else None

    def _early(self, course: Course, days: dict[int, _Day],
               end: _End) -> tuple[Assessment, Event | None]:
        w = self.w["early"]
        window = {d: x for d, x in days.items() if w.first_day <= d <= w.last_day}
        reasons, flags, gcsf = self._context(course, w, end)
        if not window:
            return self._assessment(course, w, end, State.NOT_ASSESSABLE, None, reasons, flags, gcsf,
                                    missing=(f"{ANC} on days {w.first_day}-{w.last_day}",)), None
        counts = {t: early_count(days, t, w, self.stable) for t in self.thresholds}
        state, grade, missing = self._early_state(days, counts, end, reasons, flags)
        self._early_notes(window, counts, reasons, flags)
        recovery = self._recovery(days)
        if recovery is not None and grade:
            reasons.append(f"stable recovery (ANC > {self.onset}/uL on {self.stable} consecutive days) "
                           f"from day {recovery}")
        nadir_day, nadir = min(((d, r) for d, x in window.items() for r in x.readings), default=(0, None),
                               key=lambda dr: dr[1].value.value if isinstance(dr[1].value, Quantity) else 0)
        comps = []
        if nadir is not None and isinstance(nadir.value, Quantity):
            q = nadir.value
            reasons.append(f"lowest ANC {q.comparator or ''}{q.value:.0f}/uL on day {nadir_day}")
            comps.append(Component("anc-nadir", "integer", round(q.value)))
        comps += [Component(f"days-anc-le-{t}", "integer", c.low, self._early_grade({t: c.low}))
                  for t, c in counts.items()]
        low_readings = [r for x in window.values() for r in x.readings if _at_most(r, self.onset) is BELOW]
        evidence = low_readings or [r for x in window.values() for r in x.readings]
        a = self._assessment(course, w, end, state, grade, reasons, flags, gcsf, missing, comps, evidence)
        if not grade:
            return a, None
        onset_day = min(d for d, x in window.items() if x.at_most(self.onset) is BELOW)
        return a, self._event(course, "early", a, window[onset_day], onset_day, self.onset, recovery)

    def _early_state(self, days: dict[int, _Day], counts: dict[int, _Count], end: _End, reasons: list[str],
                     flags: list[str]) -> tuple[State, int | None, tuple[str, ...]]:
        """The counts read both ways (4.5), then H7."""
        w = self.w["early"]
        for t, c in counts.items():
            if c.high:
                upto = "" if c.high == c.low else \
                    f", up to {c.high} if the days without a decisive ANC were low"
                reasons.append(f"ANC <= {t}/uL on {c.low} day(s) of days {w.first_day}-{w.last_day} "
                               f"(cumulative, non-stable recovery included{upto})")
        h7 = self._never_recovered(days)
        if h7 is not None:
            grade = max(r.grade for r in self.t.early)
            why = f", {end[2]}" if w.first_day <= end[0] <= w.last_day else ""
            reasons.append(f"ANC <= {self.onset}/uL from day {h7} and not recovered at the last ANC "
                           f"(day {max(days)}{why}): grade {grade} (H7, never recovered)")
            flags.append("never-recovered-h7")
            return State.GRADED, grade, ()
        low = self._early_grade({t: c.low for t, c in counts.items()})
        high = self._early_grade({t: c.high for t, c in counts.items()})
        if low == high:
            if low == 0:
                reasons.append(f"no ANC <= {self.onset}/uL in days {w.first_day}-{w.last_day}")
            return State.GRADED, low, ()
        open_days = {d for c in counts.values() if c.low != c.high for d in c.open_days}
        missing = (f"{ANC} on days {days_text(open_days)}",)
        return (State.AT_LEAST, low, missing) if low >= 1 else (State.NOT_ASSESSABLE, None, missing)

    def _early_notes(self, window: dict[int, _Day], counts: dict[int, _Count], reasons: list[str],
                     flags: list[str]) -> None:
        interpolated = [d for d, x in window.items() if not x.readings]
        if interpolated:
            reasons.append(f"no ANC on day(s) {days_text(interpolated)}: interpolated (gaps up to "
                           f"{self.s['interpolation-max-gap-days']} days, H6) and counted")
            flags.append("interpolated")
        for t, c in counts.items():
            if c.assumed:
                reasons.append(f"no ANC on day(s) {days_text(c.assumed)}: taken as above {t}/uL (after "
                               f"{self.stable} days above it, 4.5)")
                flags.append("recovery-assumed")
        if any(d not in window for d in range(min(window), max(window) + 1)):
            flags.append("gap-over-7-days")
        if any(x.at_most(t) is None for x in window.values() for t in counts):
            flags.append("anc-bound-undecided")

    def _recovery(self, days: dict[int, _Day]) -> int | None:
        """H3: first day of the stable recovery after the last ANC <= 500 of the early window."""
        w = self.w["early"]
        lows = [d for d, x in days.items()
                if w.first_day <= d <= w.last_day and x.at_most(self.onset) is BELOW]
        return next((r for r in range(max(lows) + 1, max(days) + 1)
                     if all(d in days and days[d].at_most(self.onset) is ABOVE
                            for d in range(r, r + self.stable))), None) if lows else None

    # ---- late ICAHT ------------------------------------------------------------------------------

    def _late(self, course: Course, measured: dict[int, _Day],
              end: _End) -> tuple[Assessment, Event | None]:
        w = self.w["late"]
        reasons, flags, gcsf = self._context(course, w, end)
        window = {d: x for d, x in measured.items() if w.first_day <= d <= min(w.last_day, end[0])}
        if not window:
            if end[0] < w.first_day:
                reasons.append(f"follow-up ended on day {end[0]} ({end[2]}) before day {w.first_day}")
            return self._assessment(course, w, end, State.NOT_ASSESSABLE, None, reasons, flags, gcsf,
                                    missing=(f"{ANC} on days {w.first_day}-{w.last_day}",)), None
        # The window is closed when follow-up ends inside it or an ANC after it exists.
        closed = end[0] <= w.last_day or max(measured) > w.last_day
        state, grade, missing = self._late_state(window, closed, reasons, flags)
        need = self.s["late-min-measurements"]
        row = next((r for r in self.late_rows if r.grade == grade), None)
        evidence = [r for x in window.values() for r in x.readings
                    if row is None or _at_most(r, row.anc_at_most)]
        ordered = sorted(x.value for x in window.values())
        comps = [Component("anc-nadir", "integer", round(ordered[0]))]
        if len(ordered) >= need:
            comps.append(Component("anc-second-lowest", "integer", round(ordered[need - 1]), grade))
        if grade:
            flags.append("attribution-unconfirmed")  # 4.2: relapse and later therapy are not excluded here
        a = self._assessment(course, w, end, state, grade, reasons, flags, gcsf, missing, comps, evidence)
        if not grade:
            return a, None
        t1 = self.late_rows[0].anc_at_most
        lows = [d for d, x in window.items() if x.at_most(t1) is BELOW]
        later = [d for d in measured if d > lows[-1]]
        recovery = next((later[i] for i in range(len(later) - self.stable + 1)
                         if all(measured[d].at_most(t1) is ABOVE for d in later[i:i + self.stable])), None)
        return a, self._event(course, "late", a, window[lows[0]], lows[0], t1, recovery)

    def _late_state(self, window: dict[int, _Day], closed: bool, reasons: list[str],
                    flags: list[str]) -> tuple[State, int | None, tuple[str, ...]]:
        """Decision 11: the threshold met on >= 2 days; bounds and an unconfirmed last value keep it open."""
        w, need, rows, last = self.w["late"], self.s["late-min-measurements"], self.late_rows, max(window)
        known = {r.id: sum(x.at_most(r.anc_at_most) is BELOW for x in window.values()) for r in rows}
        maybe = {r.id: sum(x.at_most(r.anc_at_most) is None for x in window.values()) for r in rows}
        unconfirmed = {r.id for r in rows if not closed and known[r.id] < need
                       and window[last].at_most(r.anc_at_most) is not ABOVE}
        low = max((r.grade for r in rows if known[r.id] >= need), default=0)
        high = max((r.grade for r in rows if known[r.id] + maybe[r.id] + (r.id in unconfirmed) >= need),
                   default=0)
        for r in rows:
            if known[r.id]:
                reasons.append(f"ANC <= {r.anc_at_most}/uL on {known[r.id]} day(s) of days "
                               f"{w.first_day}-{last}")
        if low:
            t = next(r.anc_at_most for r in rows if r.grade == low)
            reasons.append(f"grade {low}: ANC <= {t}/uL on at least {need} days (non-transient)")
        elif not any(known.values()):
            reasons.append(f"ANC above {rows[0].anc_at_most}/uL on every measured day of days "
                           f"{w.first_day}-{last}")
        transient = [r for r in rows if r.grade > low and known[r.id] == 1 and r.id not in unconfirmed]
        if transient:
            top = max(transient, key=lambda x: x.grade)
            day = min(d for d, x in window.items() if x.at_most(top.anc_at_most) is BELOW)
            reasons.append(f"a single ANC <= {top.anc_at_most}/uL (day {day}) is transient: not counted")
            flags.append("transient-low-value")
        if high == low:
            return State.GRADED, low, ()
        missing = []
        if any(maybe[r.id] for r in rows if r.grade > low):
            missing.append(f"exact {ANC} on days reported as a bound")
        top_open = max((r for r in rows if r.id in unconfirmed and r.grade > low), key=lambda r: r.grade,
                       default=None)
        if top_open is not None:
            missing.append(f"a second {ANC} after day {last} to confirm ANC <= {top_open.anc_at_most}/uL")
            flags.append("unconfirmed-last-value")
        return (State.AT_LEAST, low, tuple(missing)) if low else (State.NOT_ASSESSABLE, None, tuple(missing))

    # ---- shared pieces ---------------------------------------------------------------------------

    def _context(self, course: Course, w: IcahtWindow,
                 end: _End) -> tuple[list[str], list[str], list[DrugAdmin]]:
        """Reasons and flags every assessment of the window carries; G-CSF given in it (4.4)."""
        reasons: list[str] = []
        flags: list[str] = []
        if w.first_day <= end[0] <= w.last_day:
            reasons.append(f"window ends on day {end[0]} ({end[2]})")
            flags.append("deceased-in-window" if end[2] == "death" else "next-infusion-in-window")
        gcsf = [d for d in course.drugs if d.role == "g-csf" and course.day_of(d.start) <= w.last_day
                and course.day_of(d.end or d.start) >= w.first_day]
        if gcsf:
            reasons.append(f"G-CSF given ({', '.join(dict.fromkeys(d.agent for d in gcsf))}): reported, "
                           "does not change the grade")
            flags.append("g-csf-given")
        if self._unverified(w.window):
            flags.append("unverified-criteria")
        return reasons, flags, gcsf

    def _assessment(self, course: Course, w: IcahtWindow, end: _End, state: State,
                    grade: int | None, reasons: list[str], flags: list[str], gcsf: list[DrugAdmin],
                    missing: tuple[str, ...] = (), comps: list[Component] | None = None,
                    evidence: list[Reading] | None = None) -> Assessment:
        """The window's Observation: effective period = the window, cut at death or the next infusion."""
        start, stop = course.window(w.first_day)[0], course.window(w.last_day)[1]
        if end[1] is not None and end[1] < stop:
            stop = max(end[1], start)
        if not evidence and state == State.NOT_ASSESSABLE:
            reasons.insert(0, f"no {ANC} in the window")
        tox = Toxicity.ICAHT_EARLY if w.window == "early" else Toxicity.ICAHT_LATE
        return Assessment(tox, w.code, state, grade, start, stop, None, tuple(comps or ()),
                          tuple(dict.fromkeys(r.ref for r in evidence or ())), tuple(d.ref for d in gcsf),
                          missing if state != State.GRADED else (), tuple(reasons),
                          tuple(dict.fromkeys(flags)), self.table_id)

    @staticmethod
    def _event(course: Course, key: str, a: Assessment, first: _Day, onset_day: int, threshold: int,
               recovery: int | None) -> Event:
        """One AdverseEvent per window with grade >= 1: onset = first qualifying ANC, abatement = recovery."""
        times = [r.when.at for r in first.readings if _at_most(r, threshold) is BELOW]
        onset = min(times) if times else course.window(onset_day)[0]
        return Event(a.toxicity, key, a.state, a.value, onset, onset_day,
                     course.window(recovery)[0] if recovery is not None else None, recovery, a,
                     details=(("window", key),), evidence=a.evidence)
