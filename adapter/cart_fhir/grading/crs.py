"""ASTCT 2019 CRS grade per day (Lee et al., Biol Blood Marrow Transplant 2019;25:625-638, CRS grading table).

Combining rules (the thresholds are data in mappings/astct-crs-2019.yaml):
- R1 fever gate: a temperature >= 38.0 C opens the episode (grading.md 1.2 R1, decision 3).
- Inside an open episode hypotension and hypoxia count without a fever that day: the fever occurred on
  an earlier day of the episode, or tocilizumab/steroids/antipyretics given after onset mask it
  (R2, decision 3). Outside an episode, hypotension/hypoxia without fever are not CRS.
- R3: the grade is the highest of fever (1), hypotension (2-4) and hypoxia (2-4); they are not added.
- R4: vasopressin never makes "multiple" vasopressors; vasopressin alone counts as one (decision 4).
- Decision 5: oxygen by device and flow; nasal cannula without flow proves only "at least 2".
- Grade 5 is never assigned by the engine (decision 2).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from ..model import DrugAdmin, Moment, Quantity, Reading
from ..tables import CrsTable, DeviceRow, HypotensionRow
from ..timeline import Course
from .result import Component, DayGrade, State, Toxicity

CRS_CONCEPTS = frozenset({"body-temperature", "systolic-bp", "diastolic-bp", "mean-bp", "oxygen-device", "oxygen-flow"})
PRESSOR_ROLES = frozenset({"vasopressor", "vasopressin"})
GATE_LIFTING_ROLES = frozenset({"anti-cytokine", "corticosteroid", "antipyretic"})  # R2


@dataclass(slots=True)
class _Day:
    temps: list[Reading] = field(default_factory=list)
    bp: list[Reading] = field(default_factory=list)
    oxygen: list[Reading] = field(default_factory=list)


class CrsGrader:
    """Grades the CRS of one infusion course, day by day, carrying the episode state across days."""

    def __init__(self, table: CrsTable) -> None:
        self.t = table
        self.devices: dict[str, DeviceRow] = {d.device: d for d in table.oxygen.devices}
        self.tier_grade = {r.tier: r.grade for r in table.hypotension_tiers}

    # ---- domains -------------------------------------------------------------------------------

    def _bp_row(self, age: int | None) -> HypotensionRow:
        rows = self.t.hypotension
        if age is None:
            return max(rows, key=lambda r: r.from_age)  # no birth date: adult limits (flagged)
        for r in rows:
            if r.from_age <= age and (r.to_age is None or age < r.to_age):
                return r
        return rows[-1]

    def hypotension_low_bp(self, readings: list[Reading], age: int | None) -> list[Reading]:
        """Readings showing hypotension that needs no vasopressor (grade 2 by the engine's BP convention)."""
        row = self._bp_row(age)
        sbp_limit = row.sbp_base + row.sbp_per_year * (age or 0)
        by_time: dict[datetime, dict[str, Reading]] = defaultdict(dict)
        for r in readings:
            by_time[r.when.at][r.concept] = r
        low: list[Reading] = []
        for group in by_time.values():
            sbp, dbp, mean = group.get("systolic-bp"), group.get("diastolic-bp"), group.get("mean-bp")
            if sbp is not None and isinstance(sbp.value, Quantity) and sbp.value.below(sbp_limit):
                low.append(sbp)
                continue
            if row.map_below is None:
                continue
            if mean is not None and isinstance(mean.value, Quantity):
                if mean.value.below(row.map_below):
                    low.append(mean)
            elif (sbp is not None and dbp is not None and isinstance(sbp.value, Quantity)
                  and isinstance(dbp.value, Quantity) and sbp.value.comparator is None
                  and dbp.value.comparator is None):
                # MAP derived from one SBP/DBP pair: (SBP + 2 x DBP) / 3.
                if (sbp.value.value + 2 * dbp.value.value) / 3 < row.map_below:
                    low.append(sbp)
        return low

    @staticmethod
    def pressor_concurrency(drugs: list[DrugAdmin], start: datetime, end: datetime,
                            horizon: datetime | None) -> tuple[int, bool, list[DrugAdmin]]:
        """Most distinct non-vasopressin vasopressors running at one moment in [start, end), whether
        vasopressin ran, and the administrations involved. Concurrent means overlapping periods
        (input-contract.md); an effectiveDateTime runs at that moment only."""
        events: list[tuple[datetime, int, DrugAdmin]] = []
        for d in drugs:
            if d.role not in PRESSOR_ROLES:
                continue
            s = d.start.at
            if d.instant:
                e = s
            elif d.end is not None:
                e = d.end.at
            else:
                e = horizon if horizon is not None and horizon > s else s  # still running: to the data's end
            if e < start or s >= end:
                continue
            events.append((max(s, start), 0, d))
            events.append((min(e, end), 1, d))
        events.sort(key=lambda ev: (ev[0], ev[1]))
        running: dict[str, int] = defaultdict(int)
        best, vaso, used = 0, False, []
        for _, kind, d in events:
            if kind == 0:
                running[d.agent] += 1
                used.append(d)
                if d.role == "vasopressin":
                    vaso = True
                n = sum(1 for agent, c in running.items() if c > 0 and agent != "vasopressin")
                best = max(best, n)
            else:
                running[d.agent] -= 1
        return best, vaso, used

    def oxygen_range(self, readings: list[Reading]) -> tuple[int, int, str, list[Reading], list[str]]:
        """(lowest, highest) grade the day's oxygen support can mean, its tier, the evidence, and flags.

        Device and flow recorded at the same time are one reading; a flow with no device is a nasal
        cannula, a device with no flow is taken at its own tier (input-contract.md oxygen tiers).
        """
        by_time: dict[datetime, list[Reading]] = defaultdict(list)
        for r in readings:
            by_time[r.when.at].append(r)
        limit = self.t.oxygen.low_flow_max_l_min
        best: tuple[int, int] = (0, 0)
        tier, evidence, flags = "none", [], []
        for group in by_time.values():
            flows = [r.value for r in group if r.concept == "oxygen-flow" and isinstance(r.value, Quantity)]
            flow = max(flows, key=lambda q: q.value) if flows else None
            devices = [str(r.value) for r in group if r.concept == "oxygen-device"] or ["nasal-cannula"]
            for dev in devices:
                row = self.devices[dev]
                if not row.by_flow:
                    rng, dev_tier = (int(row.grade or 0), int(row.grade or 0)), row.tier
                else:
                    above = flow.above(limit) if flow is not None else None
                    if above is None:
                        rng = _unknown_flow(row)
                        dev_tier = row.tier if rng[0] == rng[1] else "unknown-flow"
                    elif above:
                        rng, dev_tier = (int(row.grade_high or 0),) * 2, "high-flow"
                    else:
                        rng, dev_tier = (int(row.grade_low or 0),) * 2, "low-flow"
                        if row.tier == "high-flow":
                            flags.append("hfnc-at-low-flow")  # grading.md 1.4: graded by flow, flagged
                if rng > best or (rng == best and tier == "none"):
                    best, tier, evidence = rng, dev_tier, list(group)
        return best[0], best[1], tier, evidence, flags

    # ---- the day -------------------------------------------------------------------------------

    def grade(self, course: Course) -> list[DayGrade]:
        days: dict[int, _Day] = defaultdict(_Day)
        for day, r in course.readings:
            if r.concept == "body-temperature":
                days[day].temps.append(r)
            elif r.concept in ("systolic-bp", "diastolic-bp", "mean-bp"):
                days[day].bp.append(r)
            elif r.concept in ("oxygen-device", "oxygen-flow"):
                days[day].oxygen.append(r)
        pressors = [d for d in course.drugs if d.role in PRESSOR_ROLES]
        horizon = course.patient.horizon
        for d in pressors:  # every day a vasopressor runs is a day relevant to CRS
            first = max(course.day_of(d.start), 0)
            last_at = d.start.at if d.instant else (d.end.at if d.end else horizon or d.start.at)
            last = course.day_of(Moment(last_at))
            if course.until is not None:
                last = min(last, course.day_of(Moment(course.until)))
            for day in range(first, max(first, last) + 1):
                days[day]
        lifting = sorted((d for d in course.drugs if d.role in GATE_LIFTING_ROLES), key=lambda d: d.start.at)

        out: list[DayGrade] = []
        open_since: datetime | None = None  # onset of the open episode
        for day in sorted(days):
            if day < 0:
                continue
            start, end = course.window(day)
            start = max(start, course.infusion.when.at) if day == 0 and not course.infusion.when.date_only else start
            dg = self._grade_day(course, day, days[day], pressors, lifting, open_since, start, end, horizon)
            if dg.state == State.GRADED and dg.grade == 0:
                open_since = None
            elif dg.positive and open_since is None:
                open_since = dg.onset
            out.append(dg)
        return out

    def _grade_day(self, course: Course, day: int, data: _Day, pressors: list[DrugAdmin],
                   lifting: list[DrugAdmin], open_since: datetime | None, start: datetime, end: datetime,
                   horizon: datetime | None) -> DayGrade:
        threshold = self.t.fever.threshold_celsius
        comps: list[Component] = []
        evidence: list[str] = []
        supporting: list[str] = []
        reasons: list[str] = []
        flags: list[str] = ["attribution-unconfirmed"]  # grading.md decision 9: no clinician attribution in input
        missing: list[str] = []

        # Fever (R1).
        fevers = [r for r in data.temps if isinstance(r.value, Quantity) and r.value.at_least(threshold)]
        decided = [r for r in data.temps if isinstance(r.value, Quantity) and r.value.at_least(threshold) is not None]
        if len(decided) < len(data.temps):
            flags.append("temperature-bound-straddles-threshold")
        fever = bool(fevers)
        if data.temps:
            hottest = max(data.temps, key=lambda r: r.value.value)  # type: ignore[union-attr]
            comps.append(Component("max-temperature", "celsius", hottest.value.value))  # type: ignore[union-attr]
            comps.append(Component("fever", "boolean", fever, 1 if fever else 0))
            evidence.append(hottest.ref)
            if fever:
                evidence.extend(r.ref for r in fevers[:1])
                reasons.append(f"fever {hottest.value.value:g} C >= {threshold:g} C (ASTCT R1)")  # type: ignore[union-attr]
        no_temps = not decided
        onset = min((r.when.at for r in fevers), default=None)

        # Hypotension (grade 2-4).
        n_press, vaso, used = self.pressor_concurrency(pressors, start, end, horizon)
        age = course.age_on(day)
        if n_press >= 2:
            tier = "multiple-vasopressors"
        elif n_press == 1:
            tier = "single-vasopressor"
        elif vaso:
            tier = "vasopressin-only"
            flags.append("vasopressin-only")
        else:
            low = self.hypotension_low_bp(data.bp, age)
            tier = "low-blood-pressure" if low else "none"
            if low:
                evidence.extend(r.ref for r in low[:3])
                if age is None:
                    flags.append("age-unknown-adult-bp-limits")
        hypo = self.tier_grade[tier]
        supporting.extend(d.ref for d in used)
        if data.bp or used:
            comps.append(Component("hypotension", "hypotension-tier", tier, hypo))
        if tier != "none":
            reasons.append(f"hypotension: {tier.replace('-', ' ')} (grade {hypo})")

        # Hypoxia (grade 2-4).
        ox_lo, ox_hi, ox_tier, ox_ev, ox_flags = self.oxygen_range(data.oxygen)
        flags.extend(ox_flags)
        if data.oxygen:
            comps.append(Component("hypoxia", "oxygen-tier", ox_tier, ox_lo))
            if ox_tier != "none":
                evidence.extend(r.ref for r in ox_ev)
                reasons.append(f"oxygen support: {ox_tier} (grade {ox_lo}{'+' if ox_hi > ox_lo else ''})")
        if ox_hi > ox_lo:
            missing.append("oxygen flow rate (LOINC 3151-8)")

        # Combine (R3) behind the fever gate (R1, R2).
        gate = fever or open_since is not None
        if open_since is not None:
            masking = [d for d in lifting if d.start.at >= open_since and d.start.at < end]
            if masking and not fever:
                reasons.append("no fever needed inside the episode: fever masked by "
                               + ", ".join(sorted({d.agent for d in masking})) + " (ASTCT R2)")
            supporting.extend(d.ref for d in masking if start <= d.start.at < end)
        if not gate:
            if no_temps:
                return self._day(course, day, State.NOT_ASSESSABLE, None, None, start, end, comps, evidence,
                                 supporting, ["body temperature (LOINC 8310-5)"] + missing,
                                 reasons + ["no temperature recorded and no open CRS episode"], flags)
            if hypo or ox_lo:
                reasons.append("hypotension/hypoxia without fever and outside a CRS episode: not CRS (ASTCT R1)")
            return self._day(course, day, State.GRADED, 0, None, start, end, comps, evidence, supporting,
                             [], reasons or ["afebrile"], flags)
        lo = max(1 if fever else 0, hypo, ox_lo)
        hi = max(1 if (fever or no_temps) else 0, hypo, ox_hi)
        if no_temps:
            missing.insert(0, "body temperature (LOINC 8310-5)")
        if onset is None and lo >= 1:
            onset = _first_finding(data, hypo, ox_lo, used, start)
        if lo == hi:
            state = State.GRADED
            missing = []
        elif lo == 0:
            state = State.NOT_ASSESSABLE
        else:
            state = State.AT_LEAST
        if lo == 0 and state == State.GRADED:
            reasons.append("no fever, vasopressor or oxygen support: CRS signs absent")
        return self._day(course, day, state, lo if state != State.NOT_ASSESSABLE else None, onset, start, end,
                         comps, evidence, supporting, missing, reasons, flags)

    @staticmethod
    def _day(course: Course, day: int, state: State, grade: int | None, onset: datetime | None,
             start: datetime, end: datetime, comps: list[Component], evidence: list[str],
             supporting: list[str], missing: list[str], reasons: list[str], flags: list[str]) -> DayGrade:
        return DayGrade(Toxicity.CRS, day, state, grade, onset if grade else None, course.window(day),
                        tuple(comps), _unique(evidence), _unique(supporting), tuple(missing),
                        tuple(reasons), _unique(flags))


def _unknown_flow(row: DeviceRow) -> tuple[int, int]:
    """'at-least-2' -> (2, grade_high); '3' -> (3, 3)."""
    spec = row.unknown_flow or ""
    if spec.startswith("at-least-"):
        return int(spec.removeprefix("at-least-")), int(row.grade_high or 0)
    return int(spec), int(spec)


def _first_finding(data: _Day, hypo: int, ox: int, used: list[DrugAdmin], start: datetime) -> datetime:
    times = [r.when.at for r in data.oxygen] if ox else []
    times += [r.when.at for r in data.bp] if hypo == 2 else []
    times += [max(d.start.at, start) for d in used] if hypo >= 3 else []
    return min(times, default=start)


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
