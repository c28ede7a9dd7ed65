"""T2: steroid exposure of the linked doses, high-dose starts and dosing hints (grading.md 8.1)."""

from __future__ import annotations

from datetime import datetime, timedelta

from ...timeline import Course
from .linking import Dose
from .table import HighDoseRow, Lookups

# ---- T2 exposure ----------------------------------------------------------------------------


def systemic_steroid(lk: Lookups, x: Dose) -> bool:
    return x.systemic and lk.drugs[x.drug.agent].role == "corticosteroid"


def dex_equivalent(lk: Lookups, doses: list[Dose]) -> tuple[float | None, list[str], list[str]]:
    """Dexamethasone-equivalent mg, flags, missing inputs; a dose not known in mg is never guessed."""
    total, flags, missing = 0.0, [], []
    unit = lk.t.dose_unit
    for x in (x for x in doses if systemic_steroid(lk, x)):
        d = x.drug
        if d.statement:
            flags.append("steroid-statement-dose-count-unknown")
            missing.append(f"administered doses of {d.ref} (MedicationStatement)")
        elif d.dose is None:
            flags.append("steroid-dose-missing")
            missing.append(f"dose in {unit} of {d.ref}")
        elif d.dose_unit != unit:
            flags.append("steroid-dose-unit-not-mg")
            missing.append(f"dose in {unit} of {d.ref} (recorded in {d.dose_unit})")
        else:
            total += d.dose * (lk.drugs[d.agent].dex_equivalent or 0.0)
    return (None if missing else total), flags, missing


def mg_24h(lk: Lookups, doses: list[Dose], first: Dose) -> float:
    """Systemic mg of the agent of `first` given in the 24 h from it (administrations in mg only)."""
    t0, t1 = first.drug.start.at, first.drug.start.at + timedelta(hours=24)
    return sum(x.drug.dose or 0.0 for x in doses
               if x.systemic and not x.drug.statement and x.drug.agent == first.drug.agent
               and x.drug.dose_unit == lk.t.dose_unit and t0 <= x.drug.start.at < t1)


def high_dose(lk: Lookups, doses: list[Dose]) -> tuple[datetime | None, HighDoseRow | None]:
    for x in doses:
        for row in lk.t.high_dose:
            if x.systemic and x.drug.agent == row.agent and mg_24h(lk, doses, x) >= row.min_mg_per_24h:
                return x.drug.start.at, row
    return None, None


def limit_flags(lk: Lookups, course: Course, doses: list[Dose]) -> list[str]:
    """Review hints on tocilizumab dosing (8.1), counting every dose of the course."""
    flags = []
    for row in lk.t.dose_limits:
        mine = [x.drug.start.at for x in doses if x.drug.agent == row.agent and x.systemic]
        given = [d.start.at for d in course.drugs
                 if d.agent == row.agent and d.route != lk.t.intrathecal.route_code]
        if not mine:
            continue
        if row.window_hours is None:
            over = sum(1 for t in given if t <= max(mine)) > row.max_doses
        else:
            span = timedelta(hours=row.window_hours)
            over = any(sum(1 for t in given if s - span < t <= s) > row.max_doses for s in mine)
        flags += [row.flag] if over else []
    return flags
