"""T1: linking CRS/ICANS treatment doses to episodes (grading.md 8.1; the rules in the package __init__)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ...model import DrugAdmin
from ...timeline import Course
from ..result import Episode
from .table import Lookups


@dataclass(frozen=True, slots=True)
class Dose:
    drug: DrugAdmin
    label: str  # agent name, or "idm"
    systemic: bool


# ---- T1 linking -----------------------------------------------------------------------------


def _dose(lk: Lookups, d: DrugAdmin) -> Dose | None:
    """The dose as a treatment: intrathecal dexamethasone/methotrexate is IDM, never systemic (8.1)."""
    it = lk.t.intrathecal
    if d.route == it.route_code:
        label = it.label if d.agent in it.idm_agents else d.agent
        return Dose(d, label, False) if label == it.label or d.agent in lk.agents else None
    return Dose(d, d.agent, True) if d.agent in lk.agents else None


def _treats(lk: Lookups, dose: Dose) -> set[str]:
    if not dose.systemic:
        return {lk.t.intrathecal.treats}
    treats = lk.agents[dose.drug.agent].treats
    return {"crs", "icans"} if treats == "any" else {treats}


def _reason_toxicities(lk: Lookups, course: Course, d: DrugAdmin) -> tuple[set[str], bool]:
    """Toxicities named by the dose's reasonReference targets, and whether any target was found."""
    found: set[str] = set()
    known = False
    for key in d.reasons:
        codings = course.patient.condition_codes.get(key)
        if codings is not None:
            known = True
            found |= {r.toxicity for r in lk.t.reasons for c in codings if r.matches(c)}
    return found, known


def _open(e: Episode, at: datetime) -> bool:
    return e.onset <= at and (e.abatement is None or at < e.abatement)


def _reason_episode(lk: Lookups, episodes: Sequence[Episode], at: datetime) -> tuple[Episode | None, str]:
    """The episode of a reason-linked dose: open at the dose, else the nearest one within the window."""
    w = lk.t.reason_window
    after, before = timedelta(hours=w.after_resolution_hours), timedelta(hours=w.before_onset_hours)
    for e in episodes:
        if _open(e, at):
            return e, ""
    for e in reversed(episodes):
        if e.abatement is not None and e.abatement <= at <= e.abatement + after:
            return e, "reason-linked-after-resolution"
    for e in episodes:
        if at < e.onset <= at + before:
            return e, "reason-linked-before-onset"
    return None, ""


def link(lk: Lookups, course: Course, tox: str, episodes: Sequence[Episode],
         others: Sequence[Episode]) -> dict[int, tuple[list[Dose], set[str]]]:
    linked: dict[int, tuple[list[Dose], set[str]]] = {e.number: ([], set()) for e in episodes}
    for d in sorted(course.drugs, key=lambda d: d.start.at):
        dose = _dose(lk, d)
        if dose is None or d.intent == "prophylaxis":
            continue  # T1: prophylaxis treats no episode
        reason_tox, known = _reason_toxicities(lk, course, d)
        flags: set[str] = set()
        if reason_tox:
            e, flag = _reason_episode(lk, episodes, d.start.at) if tox in reason_tox else (None, "")
            flags = {flag, "shared-treatment" if len(reason_tox) > 1 else ""} - {""}
        elif known:
            continue  # T1: a reason naming another condition beats timing
        else:
            e = next((e for e in episodes if _open(e, d.start.at)), None)
            if tox not in _treats(lk, dose):
                e = None
            if d.reasons:
                flags.add("reason-unresolved")
            if len(_treats(lk, dose)) > 1 and any(_open(o, d.start.at) for o in others):
                flags.add("shared-treatment")
        if e is not None:
            linked[e.number][0].append(dose)
            linked[e.number][1].update(flags)
    return linked
