"""T3 steroid-refractory status and T4 improvement and IDM remission of an episode (grading.md 8.3-8.5)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ...model import Moment
from ...timeline import Course
from ..result import DayGrade, Episode, State, Toxicity
from .exposure import mg_24h, systemic_steroid
from .linking import Dose
from .table import HighDoseRow, Lookups, RefractoryRow, RemissionRow

IDM_SOURCE = "Meng 2025 IDM remission (grading.md 8.5)"


@dataclass(frozen=True, slots=True)
class Finding:
    """One derived outcome (refractory, improvement, remission): met, not met, or undecided (None)."""

    met: bool | None
    text: str
    at: datetime | None = None
    day: int | None = None
    evidence: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    rows: tuple[str, ...] = ()  # table rows that decided it
    definition: str = ""  # the remission definition applied


def hours(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds() / 3600


# ---- T3 refractory (8.3, local-definition-v1) ---------------------------------------------------


# ---- T3 refractory (8.3, local-definition-v1) ---------------------------------------------------

def refractory_finding(lk: Lookups, course: Course, e: Episode, by_day: dict[int, DayGrade],
                       doses: list[Dose], hd_at: datetime | None, hd_row: HighDoseRow | None) -> Finding:
    label = lk.t.definition_version
    rows = [r for r in lk.t.refractory if r.toxicity == e.toxicity.value]
    results = []
    for row in rows:
        f = (_persists(lk, course, e, by_day, doses, row, hd_at, hd_row) if row.kind == "persists"
             else _second_line(lk, course, doses, row))
        if f.met:
            return Finding(True, f"{label} {row.id}: {row.text} ({f.text})", evidence=f.evidence,
                            rows=f.rows)
        results.append(f)
    notes = "; ".join(f.text for f in results)
    ids = tuple(dict.fromkeys([*(r.id for r in rows), *(i for f in results for i in f.rows)]))
    if any(f.met is None for f in results):
        return Finding(None, f"{label}: refractory status undetermined ({notes})",
                        missing=tuple(m for f in results for m in f.missing), rows=ids)
    return Finding(False, f"{label}: not refractory ({notes})", rows=ids)


def _persists(lk: Lookups, course: Course, e: Episode, by_day: dict[int, DayGrade], doses: list[Dose],
              row: RefractoryRow, hd_at: datetime | None, hd_row: HighDoseRow | None) -> Finding:
    hours, min_grade, name = row.hours or 0.0, row.min_grade or 0, e.toxicity.value.upper()
    if hd_at is None or hd_row is None:
        unknown = [x.drug.ref for x in doses if systemic_steroid(lk, x) and (
            x.drug.statement or x.drug.dose is None or x.drug.dose_unit != lk.t.dose_unit)]
        if unknown:
            return Finding(None, f"{row.id}: high-dose start unknown (a steroid dose not in mg)",
                            missing=tuple(f"dose in mg of {r}" for r in unknown))
        return Finding(False, f"{row.id}: no high-dose steroid")
    check = course.day_of(Moment(hd_at + timedelta(hours=hours)))
    after = f"{hours:g} h after {hd_row.text} started on day {course.day_of(Moment(hd_at))}"
    if e.resolved_day is not None and e.resolved_day <= check:
        return Finding(False, f"{row.id}: resolved on day {e.resolved_day}, by {after}",
                        rows=(hd_row.id,))
    # Decision 1: the daily grade of the day 72 h later; when that day has no grade, a later day of the
    # episode still at >= 2 proves persistence (a lower one proves nothing about the 72-h day).
    later = [by_day[d] for d in sorted(by_day) if d >= check and by_day[d].grade is not None
             and (e.resolved_day is None or d < e.resolved_day)]
    dg = later[0] if later else None
    if dg is not None and dg.grade is not None and dg.grade >= min_grade:
        return Finding(True, f"grade {dg.grade} on day {dg.day}, {after}", evidence=dg.evidence,
                        rows=(row.id, hd_row.id))
    if dg is not None and dg.day == check and dg.state == State.GRADED:
        return Finding(False, f"{row.id}: grade {dg.grade} on day {check}, {after}", rows=(hd_row.id,))
    return Finding(None, f"{row.id}: no {name} grade on day {check}",
                    missing=(f"{name} grade on day {check} ({after})",))


def _second_line(lk: Lookups, course: Course, doses: list[Dose], row: RefractoryRow) -> Finding:
    steroids = [x for x in doses
                if systemic_steroid(lk, x) and (not row.after or x.drug.agent in row.after)]
    if not steroids:
        return Finding(False, f"{row.id}: no {'/'.join(row.after) or 'steroid'} given")
    s0 = steroids[0].drug
    for x in doses:
        if x.label not in row.agents or x.drug.start.at <= s0.start.at:
            continue
        if row.min_mg_per_24h is None or (x.systemic and mg_24h(lk, doses, x) >= row.min_mg_per_24h):
            return Finding(True, f"{x.label} on day {course.day_of(x.drug.start)} after {s0.agent} on "
                                  f"day {course.day_of(s0.start)}", evidence=(x.drug.ref, s0.ref),
                            rows=(row.id,))
    return Finding(False, f"{row.id}: none after {s0.agent}")


# ---- T4 response (8.4, 8.5) ------------------------------------------------------------------------

def baseline(by_day: dict[int, DayGrade], at: datetime | None, course: Course,
             days_before: int) -> int | None:
    """Maximum grade of the day of `at` and the days before: the 24 h before a first dose (8.4, 8.5)."""
    if at is None:
        return None
    d0 = course.day_of(Moment(at))
    grades = [by_day[d].grade for d in range(d0 - days_before, d0 + 1) if d in by_day]
    return max((g for g in grades if g is not None), default=None)


def _first_day_at_most(e: Episode, by_day: dict[int, DayGrade], after_day: int,
                       grade: int) -> DayGrade | None:
    """The first day after `after_day`, up to the episode's resolution, graded (not a bound) <= grade."""
    return next((by_day[d] for d in sorted(by_day)
                 if after_day < d and (e.resolved_day is None or d <= e.resolved_day)
                 and by_day[d].state == State.GRADED and (by_day[d].grade or 0) <= grade), None)


def improvement_finding(lk: Lookups, course: Course, e: Episode, by_day: dict[int, DayGrade],
                        first: datetime | None) -> Finding:
    rule = lk.t.improvement
    base = baseline(by_day, first, course, rule.baseline_days_before)
    if first is None or base is None or base < rule.drop:
        return Finding(None, "")
    dg = _first_day_at_most(e, by_day, course.day_of(Moment(first)), base - rule.drop)
    if dg is None:
        return Finding(False, f"no improvement from baseline grade {base} in the data",
                        rows=("improvement",))
    return Finding(True, f"improved from grade {base} to {dg.grade} on day {dg.day}", dg.window[0],
                    dg.day, dg.evidence, rows=("improvement",))


def remission_finding(lk: Lookups, course: Course, e: Episode, by_day: dict[int, DayGrade],
                      doses: list[Dose]) -> Finding:
    idm = [x.drug for x in doses if x.label == lk.t.intrathecal.label]
    if e.toxicity != Toxicity.ICANS or not idm:
        return Finding(None, "")
    t0, d0 = idm[0].start.at, course.day_of(idm[0].start)
    base = baseline(by_day, t0, course, lk.t.remission.baseline_days_before)
    if base is None:
        return Finding(None, f"IDM remission: no ICANS grade on day {d0 - 1} or {d0}",
                        definition=f"{IDM_SOURCE}: baseline ICANS grade unknown",
                        missing=((f"ICANS grade on day {d0 - 1} or {d0} (before the first intrathecal "
                                 "dose)"),))
    rows = [r for r in lk.t.remission.rows if r.baseline_min <= base <= r.baseline_max]
    if not rows:
        return Finding(None, f"IDM remission: no definition for baseline ICANS grade {base}",
                        definition=f"{IDM_SOURCE}: none for baseline grade {base}")
    definition = f"{IDM_SOURCE}, baseline ICANS grade {base} on days {d0 - 1}-{d0}: " + \
        " or ".join(f"{r.id} ({r.text})" for r in rows)
    hits = [h for r in rows if (h := _remission_hit(lk, course, e, by_day, r, t0, d0)) is not None]
    if not hits:
        return Finding(False, "no IDM remission in the data", rows=tuple(r.id for r in rows),
                        definition=definition)
    at, day, ev, r = min(hits, key=lambda h: h[0])
    return Finding(True, f"IDM remission on day {day} ({r.id}), {hours(t0, at):.1f} h after the first "
                          "intrathecal dose", at, day, ev, rows=(r.id,), definition=definition)


def _remission_hit(lk: Lookups, course: Course, e: Episode, by_day: dict[int, DayGrade], row: RemissionRow,
                   t0: datetime, d0: int) -> tuple[datetime, int, tuple[str, ...], RemissionRow] | None:
    """When the target of one remission row was first met after the first intrathecal dose."""
    if row.target == "grade-at-most":
        dg = _first_day_at_most(e, by_day, d0, row.value)
        return (dg.window[0], dg.day, dg.evidence, row) if dg else None
    for day, r in course.of(row.target):
        if r.when.at <= t0 or type(r.value) is not int or r.value != row.value:
            continue
        age = course.age_on(day)
        if row.target == "capd-score" and (age is None or age > lk.capd_max_age):
            continue  # CAPD only where the ICE is not the instrument (decision 6)
        return r.when.at, day, (r.ref,), row
    return None
