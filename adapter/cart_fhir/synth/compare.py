"""Compare a synthetic cohort's ground truth (expected.json rows) with what the engine graded, per patient
and toxicity: max grade and onset day. Pure: parsed JSON and a RunResult in, disagreement lines out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..grading.result import State, Toxicity
from ..pipeline import CourseResult, RunResult

# (max grade, onset day). A grade the engine could not settle is its state and bound, e.g. "at-least 2".
Outcome = tuple[int | str | None, int | None]
Outcomes = dict[str, dict[str, Outcome]]  # patient id -> toxicity label -> outcome

NONE: Outcome = (0, None)


def expected_outcomes(rows: Iterable[Mapping[str, Any]]) -> Outcomes:
    """The ground truth of expected.json's `expected` rows. ICAHT is compared by grade only (its onset is
    day 0 / day 31 by construction of the windows)."""
    out: Outcomes = {}
    for row in rows:
        o: dict[str, Outcome] = {}
        for tox in ("crs", "icans"):
            e = row[tox]
            o[tox] = (e["max_grade"], e["onset_day"] if e["max_grade"] else None)
        o["icaht-early"] = (row["icaht_early"]["max_grade"], None)
        o["icaht-late"] = (row["icaht_late"]["max_grade"], None)
        for label, inf in _labelled((i["onset_day"], i) for i in row["infections"]):
            o[label] = (inf["grade"], inf["onset_day"])
        for label, effect in (row.get("long_term") or {}).items():
            if effect is not None:
                o[label.replace("_", "-")] = (_key_detail(label.replace("_", "-"), effect), effect["onset_day"])
        out[row["patient"]] = o
    return out


# IAGO long-term effects (issue 16): compared by onset day and the detail that characterises each.
LONG_TERM = ("hypogammaglobulinemia", "b-cell-aplasia", "second-malignancy", "prolonged-cytopenia")


def _key_detail(tox: str, d: Mapping[str, Any]) -> int | str | None:
    if tox == "hypogammaglobulinemia":
        return f"IgG {d['nadir_igg_mg_dl']:g} mg/dL" + (", replacement" if d["replacement"] else "")
    if tox == "b-cell-aplasia":
        return f"{d['duration_days']} days" + (f", recovered day {d['resolution_day']}" if d.get("resolution_day")
                                                else "")
    if tox == "second-malignancy":
        return str(d["lineage"])
    return d.get("max_grade")


def graded_outcomes(result: RunResult, long_term: bool = True) -> Outcomes:
    """What the engine graded for each patient's first course (a synthetic patient has one infusion). Without
    `long_term` (an expected.json written before issue 16), the long-term effects are not compared."""
    out: Outcomes = {}
    for pr in result.patients:
        o: dict[str, Outcome] = {}
        if pr.courses:
            o.update(_course(pr.courses[0]))
            if long_term:
                o.update(_long_term(pr.courses[0]))
        out[pr.patient.id] = o
    return out


def _long_term(cr: CourseResult) -> dict[str, Outcome]:
    o: dict[str, Outcome] = {}
    for ev in cr.events:
        tox = ev.toxicity.value
        if tox in LONG_TERM and tox not in o:  # the first event of each effect
            detail = {"nadir_igg_mg_dl": ev.detail("nadir_igg_mg_dl"), "replacement": ev.detail("replacement"),
                      "duration_days": ev.detail("duration_days"), "resolution_day": ev.resolved_day,
                      "lineage": ev.detail("lineage"), "max_grade": ev.max_grade}
            o[tox] = (_key_detail(tox, detail), ev.onset_day)
    return o


def _course(cr: CourseResult) -> dict[str, Outcome]:
    o: dict[str, Outcome] = {}
    for tox in (Toxicity.CRS, Toxicity.ICANS):
        eps = cr.episodes.get(tox, [])
        o[tox.value] = (max(e.max_grade for e in eps), eps[0].onset_day) if eps else NONE
    for tox in (Toxicity.ICAHT_EARLY, Toxicity.ICAHT_LATE):
        code = "icaht-grade-early" if tox is Toxicity.ICAHT_EARLY else "icaht-grade-late"
        ev = next((e for e in cr.events if e.toxicity is tox), None)
        if ev is not None:
            o[tox.value] = (_grade(ev.state, ev.max_grade), None)
            continue
        a = next((a for a in cr.assessments if a.code == code), None)
        o[tox.value] = (_grade(a.state, a.value), None) if a is not None else ("missing", None)
    infections = sorted((e for e in cr.events if e.toxicity is Toxicity.INFECTION), key=lambda e: e.onset)
    for label, ev in _labelled((e.onset_day, e) for e in infections):
        o[label] = (_grade(ev.state, ev.max_grade), ev.onset_day)
    return o


def _grade(state: State, value: int | None) -> int | str | None:
    return value if state is State.GRADED else f"{state.value} {value}"


def _labelled(items: Iterable[tuple[int, Any]]) -> list[tuple[str, Any]]:
    """"infection day N" (with "#2" for a second infection with onset on the same day)."""
    seen: dict[int, int] = {}
    out = []
    for day, item in items:
        seen[day] = seen.get(day, 0) + 1
        out.append((f"infection day {day}" + (f" #{seen[day]}" if seen[day] > 1 else ""), item))
    return out


def disagreements(expected: Outcomes, graded: Outcomes) -> list[str]:
    """One line per patient and toxicity where max grade or onset day differ (a missing toxicity is grade 0)."""
    lines = []
    for pid in sorted(expected.keys() | graded.keys()):
        if pid not in graded:
            lines.append(f"{pid}: in expected.json but not graded (no patient data)")
            continue
        if pid not in expected:
            lines.append(f"{pid}: graded but not in expected.json")
            continue
        want, got = expected[pid], graded[pid]
        for tox in sorted(want.keys() | got.keys()):
            w, g = want.get(tox, NONE), got.get(tox, NONE)
            if w != g:
                lines.append(f"{pid} {tox}: expected grade {w[0]} onset day {w[1]}, "
                             f"graded {g[0]} onset day {g[1]}")
    return lines
