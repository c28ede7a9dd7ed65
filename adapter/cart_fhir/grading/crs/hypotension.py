"""CRS hypotension, grades 2-4 (ASTCT 2019, Lee et al. 2019, CRS grading table; grading.md 1.2 R4 and
decision 4): low blood pressure by age without vasopressors is grade 2, one vasopressor 3, several 4."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime

from ...model import DrugAdmin, Quantity, Reading
from ...tables import HypotensionRow
from ..result import Component
from .finding import Finding

PRESSOR_ROLES = frozenset({"vasopressor", "vasopressin"})


def bp_row(rows: Sequence[HypotensionRow], age: int | None) -> HypotensionRow:
    """Decision 4: the blood-pressure limits of the patient's age band (no birth date: adult limits)."""
    if age is None:
        return max(rows, key=lambda r: r.from_age)
    for r in rows:
        if r.from_age <= age and (r.to_age is None or age < r.to_age):
            return r
    return rows[-1]


def low_bp(readings: Sequence[Reading], row: HypotensionRow, age: int | None) -> list[Reading]:
    """Readings showing hypotension that needs no vasopressor (decision 4: SBP below the age limit, or a
    MAP below map_below, measured or derived from one SBP/DBP pair)."""
    sbp_limit = row.sbp_base + row.sbp_per_year * (age or 0)
    map_below = row.map_below
    by_time: dict[datetime, dict[str, Reading]] = {}
    for r in readings:
        group = by_time.get(r.when.at)
        if group is None:
            by_time[r.when.at] = {r.concept: r}
        else:
            group[r.concept] = r
    low: list[Reading] = []
    for group in by_time.values():
        sbp, dbp, mean = group.get("systolic-bp"), group.get("diastolic-bp"), group.get("mean-bp")
        if sbp is not None and isinstance(sbp.value, Quantity) and sbp.value.below(sbp_limit):
            low.append(sbp)
            continue
        if map_below is None:
            continue
        if mean is not None and isinstance(mean.value, Quantity):
            if mean.value.below(map_below):
                low.append(mean)
        elif (sbp is not None and dbp is not None and isinstance(sbp.value, Quantity)
              and isinstance(dbp.value, Quantity) and sbp.value.comparator is None
              and dbp.value.comparator is None
              and (sbp.value.value + 2 * dbp.value.value) / 3 < map_below):
            low.append(sbp)  # MAP derived from one SBP/DBP pair: (SBP + 2 x DBP) / 3
    return low


def _runs_until(d: DrugAdmin, horizon: datetime | None) -> datetime:
    """An effectiveDateTime runs at that moment only; an open period runs to the data's end."""
    if d.instant:
        return d.start.at
    if d.end is not None:
        return d.end.at
    return horizon if horizon is not None and horizon > d.start.at else d.start.at


def pressor_concurrency(drugs: Sequence[DrugAdmin], start: datetime, end: datetime,
                        horizon: datetime | None) -> tuple[int, bool, list[DrugAdmin]]:
    """R4: most distinct non-vasopressin vasopressors running at one moment in [start, end), whether
    vasopressin ran, and the administrations involved. Concurrent means overlapping periods
    (input-contract.md); vasopressin never makes "multiple" vasopressors."""
    if not drugs:  # the usual day: no vasopressor in the course
        return 0, False, []
    events: list[tuple[datetime, int, DrugAdmin]] = []
    for d in drugs:
        if d.role not in PRESSOR_ROLES:
            continue
        s, e = d.start.at, _runs_until(d, horizon)
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


def hypotension(bp: Sequence[Reading], pressors: Sequence[DrugAdmin], rows: Sequence[HypotensionRow],
                tier_grade: Mapping[str, int], age: int | None, start: datetime, end: datetime,
                horizon: datetime | None) -> Finding:
    """The day's hypotension tier and grade: vasopressors decide grades 3-4 whatever the pressure
    (decision 4: vasopressin alone is one vasopressor, flagged); else low blood pressure for the age."""
    n_press, vaso, used = pressor_concurrency(pressors, start, end, horizon)
    flags: list[str] = []
    low: list[Reading] = []
    if n_press >= 2:
        tier = "multiple-vasopressors"
    elif n_press == 1:
        tier = "single-vasopressor"
    elif vaso:
        tier = "vasopressin-only"
        flags.append("vasopressin-only")
    else:
        low = low_bp(bp, bp_row(rows, age), age)
        tier = "low-blood-pressure" if low else "none"
        if low and age is None:
            flags.append("age-unknown-adult-bp-limits")
    grade = tier_grade[tier]
    # Onset without fever: the first reading or vasopressor start that shows the grade.
    times = ([r.when.at for r in bp] if grade == 2
             else [max(d.start.at, start) for d in used] if grade >= 3 else [])
    return Finding(grade, grade, min(times, default=None),
                   (Component("hypotension", "hypotension-tier", tier, grade),) if bp or used else (),
                   tuple(r.ref for r in low[:3]), tuple(d.ref for d in used),
                   (f"hypotension: {tier.replace('-', ' ')} (grade {grade})",) if tier != "none" else (),
                   tuple(flags))
