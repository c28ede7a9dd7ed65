"""T1 linking of CRS/ICANS treatment doses to episodes and T2 steroid exposure (grading.md 8.1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..model import DrugAdmin
from ..tables import DrugRow
from ..timeline import Course
from .result import Episode
from .treatments_table import AgentRow, HighDoseRow, TreatmentTable


@dataclass(frozen=True, slots=True)
class _Dose:
    drug: DrugAdmin
    label: str  # agent name, or "idm"
    systemic: bool


class TreatmentLinker:
    """Dose linking and exposure; part of TreatmentAnalyzer, whose constructor sets the table and the
    lookups declared here."""

    t: TreatmentTable
    drugs: dict[str, DrugRow]
    agents: dict[str, AgentRow]

    # ---- T1 linking -----------------------------------------------------------------------------

    def _dose(self, d: DrugAdmin) -> _Dose | None:
        """The dose as a treatment: intrathecal dexamethasone/methotrexate is IDM, never systemic (8.1)."""
        it = self.t.intrathecal
        if d.route == it.route_code:
            label = it.label if d.agent in it.idm_agents else d.agent
            return _Dose(d, label, False) if label == it.label or d.agent in self.agents else None
        return _Dose(d, d.agent, True) if d.agent in self.agents else None

    def _treats(self, dose: _Dose) -> set[str]:
        if not dose.systemic:
            return {self.t.intrathecal.treats}
        treats = self.agents[dose.drug.agent].treats
        return {"crs", "icans"} if treats == "any" else {treats}

    def _reason_toxicities(self, course: Course, d: DrugAdmin) -> tuple[set[str], bool]:
        """Toxicities named by the dose's reasonReference targets, and whether any target was found."""
        found: set[str] = set()
        known = False
        for key in d.reasons:
            codings = course.patient.condition_codes.get(key)
            if codings is not None:
                known = True
                found |= {r.toxicity for r in self.t.reasons for c in codings if r.matches(c)}
        return found, known

    @staticmethod
    def _open(e: Episode, at: datetime) -> bool:
        return e.onset <= at and (e.abatement is None or at < e.abatement)

    def _reason_episode(self, episodes: Sequence[Episode], at: datetime) -> tuple[Episode | None, str]:
        """The episode of a reason-linked dose: open at the dose, else the nearest one within the window."""
        w = self.t.reason_window
        after, before = timedelta(hours=w.after_resolution_hours), timedelta(hours=w.before_onset_hours)
        for e in episodes:
            if self._open(e, at):
                return e, ""
        for e in reversed(episodes):
            if e.abatement is not None and e.abatement <= at <= e.abatement + after:
                return e, "reason-linked-after-resolution"
        for e in episodes:
            if at < e.onset <= at + before:
                return e, "reason-linked-before-onset"
        return None, ""

    def _link(self, course: Course, tox: str, episodes: Sequence[Episode],
              others: Sequence[Episode]) -> dict[int, tuple[list[_Dose], set[str]]]:
        linked: dict[int, tuple[list[_Dose], set[str]]] = {e.number: ([], set()) for e in episodes}
        for d in sorted(course.drugs, key=lambda d: d.start.at):
            dose = self._dose(d)
            if dose is None or d.intent == "prophylaxis":
                continue  # T1: prophylaxis treats no episode
            reason_tox, known = self._reason_toxicities(course, d)
            flags: set[str] = set()
            if reason_tox:
                e, flag = self._reason_episode(episodes, d.start.at) if tox in reason_tox else (None, "")
                flags = {flag, "shared-treatment" if len(reason_tox) > 1 else ""} - {""}
            elif known:
                continue  # T1: a reason naming another condition beats timing
            else:
                e = next((e for e in episodes if self._open(e, d.start.at)), None)
                if tox not in self._treats(dose):
                    e = None
                if d.reasons:
                    flags.add("reason-unresolved")
                if len(self._treats(dose)) > 1 and any(self._open(o, d.start.at) for o in others):
                    flags.add("shared-treatment")
            if e is not None:
                linked[e.number][0].append(dose)
                linked[e.number][1].update(flags)
        return linked

    # ---- T2 exposure ----------------------------------------------------------------------------

    def _systemic_steroid(self, x: _Dose) -> bool:
        return x.systemic and self.drugs[x.drug.agent].role == "corticosteroid"

    def _dex_equivalent(self, doses: list[_Dose]) -> tuple[float | None, list[str], list[str]]:
        """Dexamethasone-equivalent mg, flags, missing inputs; a dose not known in mg is never guessed."""
        total, flags, missing = 0.0, [], []
        unit = self.t.dose_unit
        for x in filter(self._systemic_steroid, doses):
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
                total += d.dose * (self.drugs[d.agent].dex_equivalent or 0.0)
        return (None if missing else total), flags, missing

    def _mg_24h(self, doses: list[_Dose], first: _Dose) -> float:
        """Systemic mg of the agent of `first` given in the 24 h from it (administrations in mg only)."""
        t0, t1 = first.drug.start.at, first.drug.start.at + timedelta(hours=24)
        return sum(x.drug.dose or 0.0 for x in doses
                   if x.systemic and not x.drug.statement and x.drug.agent == first.drug.agent
                   and x.drug.dose_unit == self.t.dose_unit and t0 <= x.drug.start.at < t1)

    def _high_dose(self, doses: list[_Dose]) -> tuple[datetime | None, HighDoseRow | None]:
        for x in doses:
            for row in self.t.high_dose:
                if x.systemic and x.drug.agent == row.agent and self._mg_24h(doses, x) >= row.min_mg_per_24h:
                    return x.drug.start.at, row
        return None, None

    def _limit_flags(self, course: Course, doses: list[_Dose]) -> list[str]:
        """Review hints on tocilizumab dosing (8.1), counting every dose of the course."""
        flags = []
        for row in self.t.dose_limits:
            mine = [x.drug.start.at for x in doses if x.drug.agent == row.agent and x.systemic]
            given = [d.start.at for d in course.drugs
                     if d.agent == row.agent and d.route != self.t.intrathecal.route_code]
            if not mine:
                continue
            if row.window_hours is None:
                over = sum(1 for t in given if t <= max(mine)) > row.max_doses
            else:
                span = timedelta(hours=row.window_hours)
                over = any(sum(1 for t in given if s - span < t <= s) > row.max_doses for s in mine)
            flags += [row.flag] if over else []
        return flags
