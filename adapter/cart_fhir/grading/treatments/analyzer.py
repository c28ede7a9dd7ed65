"""TreatmentAnalyzer: one TreatmentResponse per CRS/ICANS episode (rules T1-T4 in the package __init__)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ...model import Moment
from ...tables import DrugTable, IcansSettings
from ...timeline import Course
from ..result import Assessment, Component, DayGrade, Episode, State, Toxicity
from .exposure import dex_equivalent, high_dose, limit_flags, systemic_steroid
from .linking import Dose, link
from .outcomes import Finding, baseline, hours, improvement_finding, refractory_finding, remission_finding
from .table import HighDoseRow, Lookups, TreatmentTable, check_treatment_table


@dataclass(frozen=True, slots=True)
class TreatmentResponse:
    """What was given for one CRS/ICANS episode and how the episode responded (grading.md 8.1-8.5)."""

    episode_number: int
    toxicity: Toxicity
    treatments: tuple[str, ...]  # agent names in order of first use; "idm" = intrathecal dex/methotrexate
    treatment_refs: tuple[str, ...]  # DrugAdmin.ref of every linked dose, in time order
    first_treatment_at: datetime | None
    first_treatment_day: int | None
    hours_onset_to_first_treatment: float | None
    dexamethasone_equivalent_mg: float | None  # systemic only; None when a dose is missing or not in mg
    steroid_days: int  # days with a systemic corticosteroid dose (8.1 duration)
    high_dose_steroid_at: datetime | None  # first dose of the first 24 h meeting a high_dose row
    steroid_refractory: bool
    refractory_rule: str  # "local-definition-v1 <row id>: ..." (11.14)
    idm: bool
    idm_doses: int
    baseline_grade: int | None  # 8.4: max grade of the first-dose day and the day before
    improvement_at: datetime | None
    improvement_day: int | None
    hours_to_improvement: float | None
    remission_at: datetime | None  # 8.5: IDM-treated ICANS only
    remission_day: int | None
    hours_to_remission: float | None
    remission_definition: str  # "" when no IDM was given
    flags: tuple[str, ...]
    assessment: Assessment
    unverified_rows: tuple[str, ...] = ()  # "treatment-response:<row>" for the run report (decision 10)


class TreatmentAnalyzer:
    """Links treatments to CRS/ICANS episodes and derives exposure, refractory status and response."""

    def __init__(self, table: TreatmentTable, drugs: DrugTable, icans: IcansSettings) -> None:
        self.t = table
        self.lk = Lookups(self.t, {r.agent: r for r in drugs.rows}, {r.agent: r for r in self.t.agents},
                          icans.capd_max_age_years)
        check_treatment_table(self.t, self.lk.drugs)

    def analyze(self, course: Course, toxicity: Toxicity, days: Sequence[DayGrade],
                episodes: Sequence[Episode], others: Sequence[Episode] = ()) -> list[TreatmentResponse]:
        """One TreatmentResponse per episode, in episode order. `others`: the other toxicity's episodes (ICANS
        for CRS and vice versa), used only to flag a steroid/anakinra dose given while both were open."""
        linked = link(self.lk, course, toxicity.value, episodes, others)
        by_day = {d.day: d for d in days}
        return [self._episode(course, e, by_day, *linked[e.number]) for e in episodes]

    # ---- one episode ----------------------------------------------------------------------------

    def _episode(self, course: Course, e: Episode, by_day: dict[int, DayGrade], doses: list[Dose],
                 link_flags: set[str]) -> TreatmentResponse:
        first = doses[0].drug.start.at if doses else None
        dex, flags, missing = dex_equivalent(self.lk, doses)
        hd_at, hd_row = high_dose(self.lk, doses)
        flags += sorted(link_flags) + limit_flags(self.lk, course, doses)
        flags += [hd_row.flag] if hd_row is not None and hd_row.flag else []
        refractory = refractory_finding(self.lk, course, e, by_day, doses, hd_at, hd_row)
        improvement = improvement_finding(self.lk, course, e, by_day, first)
        remission = remission_finding(self.lk, course, e, by_day, doses)
        flags += ["refractory-undetermined"] if refractory.met is None else []
        flags += ["remission-undetermined"] if remission.definition and remission.met is None else []
        labels = tuple(dict.fromkeys(x.label for x in doses))
        a = self._assessment(course, e, doses, dex, (refractory, improvement, remission),
                             tuple(dict.fromkeys(flags)), missing)
        idm = [x.drug.start.at for x in doses if x.label == self.t.intrathecal.label]
        steroid_days = {course.day_of(x.drug.start) for x in doses if systemic_steroid(self.lk, x)}
        return TreatmentResponse(
            episode_number=e.number, toxicity=e.toxicity, treatments=labels, treatment_refs=a.evidence,
            first_treatment_at=first, first_treatment_day=course.day_of(Moment(first)) if first else None,
            hours_onset_to_first_treatment=hours(e.onset, first) if first else None,
            dexamethasone_equivalent_mg=dex, steroid_days=len(steroid_days), high_dose_steroid_at=hd_at,
            steroid_refractory=bool(refractory.met), refractory_rule=refractory.text,
            idm=bool(idm), idm_doses=len(idm),
            baseline_grade=baseline(by_day, first, course, self.t.improvement.baseline_days_before),
            improvement_at=improvement.at, improvement_day=improvement.day,
            hours_to_improvement=hours(first, improvement.at) if first and improvement.at else None,
            remission_at=remission.at, remission_day=remission.day,
            hours_to_remission=hours(idm[0], remission.at) if idm and remission.at else None,
            remission_definition=remission.definition, flags=a.flags, assessment=a,
            unverified_rows=self._unverified(labels, a.flags, refractory, improvement, remission, hd_row))

    def _assessment(self, course: Course, e: Episode, doses: list[Dose], dex: float | None,
                    found: tuple[Finding, Finding, Finding], flags: tuple[str, ...],
                    missing: list[str]) -> Assessment:
        """One Observation `treatment-response`: the numbers as components, the sentences as reasons."""
        refractory, _, remission = found
        comps = []
        reasons = [f"no {e.toxicity.value.upper()} treatment linked to this episode"]
        if doses:
            first = doses[0].drug.start.at
            given = ", ".join(dict.fromkeys(x.label for x in doses))
            reasons = [(f"{given} given; first on day {course.day_of(Moment(first))}, "
                       f"{hours(e.onset, first):.1f} h after onset")]
            comps.append(Component("time-to-first-treatment", "integer", round(hours(e.onset, first))))
        if refractory.met is not None:
            comps.append(Component("steroid-refractory", "boolean", refractory.met))
        if dex is not None:
            comps.append(Component("dexamethasone-equivalent-mg", "integer", round(dex)))
            if any(systemic_steroid(self.lk, x) for x in doses):
                reasons.append(f"systemic corticosteroids: {dex:g} mg dexamethasone equivalent")
        if remission.definition and remission.met is not None:
            comps.append(Component("icans-remission-idm", "boolean", remission.met))
        reasons += [f.text for f in found if f.text]
        return Assessment(
            toxicity=e.toxicity, code="treatment-response", state=State.GRADED, value=None, start=e.onset,
            end=e.abatement, components=tuple(comps),
            evidence=tuple(dict.fromkeys(x.drug.ref for x in doses)),
            supporting=tuple(dict.fromkeys(r for f in found for r in f.evidence)),
            missing=tuple(dict.fromkeys([*missing, *(m for f in found for m in f.missing)])),
            reasons=tuple(reasons), flags=flags, table=f"{self.t.table} v{self.t.version}")

    def _unverified(self, labels: tuple[str, ...], flags: tuple[str, ...],
                    *found: Finding | HighDoseRow | None) -> tuple[str, ...]:
        """Unverified table rows this result used, for the run report (decision 10)."""
        t = self.t
        verified = {r.agent: r.verified for r in t.agents}
        verified |= {r.id: r.verified for r in t.high_dose}
        verified |= {r.id: r.verified for r in t.refractory}
        verified |= {r.id: r.verified for r in t.remission.rows}
        verified |= {"improvement": t.improvement.verified, "reason_window": t.reason_window.verified}
        ids = [x for x in labels if x in verified]
        ids += ["reason_window"] if any(f.startswith("reason-linked-") for f in flags) else []
        for f in found:
            ids += [f.id] if isinstance(f, HighDoseRow) else list(f.rows) if isinstance(f, Finding) else []
        return tuple(f"{t.table}:{i}" for i in dict.fromkeys(ids) if not verified.get(i, True))
