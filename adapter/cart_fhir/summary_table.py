"""The terminal table of a run: one row per patient, infusion and assessed toxicity, in one vocabulary.

Results read `grade N` (an episode or event and its maximum grade), `>= N` (the data prove at least N),
`none` (assessed, nothing found), `not assessable: <missing input>` (grading.md decision 2: never a silent
0), or `score N (<risk>)` for a risk score. A result a clinician reviewed shows their word, cart-fhir's beside
it: `grade 3 (edited by a clinician; cart-fhir computes grade 2)`, `refuted by a clinician (...)`. Every
toxicity the registered graders assess has a row per infusion, from what they produced (CourseResult.days /
events / assessments / scores), grade 0 too.

"days assessed" is defined once, as in summary.json: the days of the row's span (its episode, or the whole
course when there is none) on which the toxicity could be graded (a state other than not-assessable).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from .grading.registry import CourseResult
from .grading.result import Assessment, DayGrade, Event, State, Toxicity
from .grading.treatments import TreatmentResponse
from .pipeline import PatientResult, RunResult
from .reviews import REFUTED_SHOWN, computed_text, episode_key, event_key, unmatched

HEAD = ("patient", "infusion", "toxicity", "result", "onset day", "resolution day", "days assessed",
        "treatments")
NONE, NOT_ASSESSABLE = "none", "not assessable"
DAYS_ASSESSED = ("days assessed: days of the row's episode (or of the whole course when it has none) on which "
                 "the toxicity could be graded; the same count as summary.json days_assessed")


@dataclass(frozen=True, slots=True)
class Row:
    patient: str
    infusion: int
    toxicity: Toxicity
    label: str
    result: str
    onset_day: str = "-"
    resolution_day: str = "-"
    days_assessed: str = "-"
    treatments: str = "-"
    score: bool = False  # a risk score (CAR-HEMATOTOX), not a toxicity grade

    def cells(self) -> tuple[str, ...]:
        return (self.patient, str(self.infusion), self.label, self.result, self.onset_day, self.resolution_day,
                self.days_assessed, self.treatments)

    @property
    def category(self) -> str:
        """The result without its detail: `grade 2`, `>= 3`, `none`, `not assessable`, `score`."""
        if self.result.startswith(NOT_ASSESSABLE):
            return NOT_ASSESSABLE
        return "score" if self.result.startswith("score") else self.result.split(" (")[0]

    @property
    def notable(self) -> bool:
        """Shown by --table brief: a grade of 1 or more, a proven minimum, or a result the data cannot decide."""
        return self.category not in (NONE, "score", "grade 0")


def rows(result: RunResult) -> list[Row]:
    """Every row of the run, per patient and infusion in input order, toxicities in registry order."""
    out: list[Row] = []
    files = Counter(pr.patient.file for pr in result.patients)
    for pr in result.patients:
        label = patient_label(pr, files)
        for n, cr in enumerate(pr.courses):
            gaps = set(pr.missing[n] or ()) if n < len(pr.missing) else set()
            for tox in result.toxicities or _produced(cr):
                out.extend(_toxicity_rows(result, cr, tox, label, gaps))
        if result.reviews:
            out.extend(_no_longer_computed(result, pr, label))
    return out


def _reviewed(result: RunResult, key: str, computed: str) -> str:
    """The clinician's word when they reviewed the result (reviews.py), else cart-fhir's."""
    review = result.reviews.get(key) if result.reviews else None
    if review is None:
        return computed
    return review.phrase(computed_text(*_as_grade(computed)))


def _as_grade(shown: str) -> tuple[int | None, bool]:
    """("grade 2" | ">= 2" | "not assessable: ...") -> (grade, only a minimum)"""
    if shown.startswith(">= "):
        return int(shown[3:]), True
    if shown.startswith("grade "):
        return int(shown[6:]), False
    return (0, False) if shown == NONE else (None, False)


def _no_longer_computed(result: RunResult, pr: PatientResult, label: str) -> list[Row]:
    """Reviewed results of ours the current data no longer produce: the clinician's word still shows."""
    keys = {episode_key(cr.course, ep, result.tables) for cr in pr.courses for eps in cr.episodes.values()
            for ep in eps} | {event_key(cr.course, ev) for cr in pr.courses for ev in cr.events}
    out = []
    for review in unmatched(result.reviews, keys, pr.patient.key):
        try:
            tox = Toxicity(review.toxicity)
        except ValueError:
            continue  # not a toxicity this engine grades (a Condition from another version): the report names it
        number = pr.courses[-1].course.number if pr.courses else 0
        out.append(Row(label, number, tox, tox.value,
                       review.phrase("cart-fhir no longer computes it from the current data")))
    return out


def patient_label(pr: PatientResult, files: Counter[str]) -> str:
    """The MRN or first identifier; else the input file's name when it holds this patient only; else the id."""
    data = pr.patient
    if data.label:
        return data.label
    if data.file and files[data.file] == 1 and not data.file.endswith(".ndjson"):
        return Path(data.file).name
    return data.id


def _produced(cr: CourseResult) -> list[Toxicity]:
    """Toxicities a course's results mention (a RunResult built without the engine's registry order)."""
    found = [*cr.days, *(e.toxicity for e in cr.events), *(a.toxicity for a in cr.assessments), *cr.scores]
    return list(dict.fromkeys(found))


def _toxicity_rows(result: RunResult, cr: CourseResult, tox: Toxicity, patient: str, gaps: set[str]) -> list[Row]:
    number = cr.course.number
    if tox in cr.days:
        return _daily_rows(result, cr, tox, patient)
    if tox in cr.scores:
        return [_score_row(cr.scores[tox], tox, patient, number)]
    facts = result.tables.output.toxicities
    events = [e for e in cr.events if e.toxicity == tox]
    standalone = [a for a in cr.assessments if a.toxicity == tox]
    out = [_event_row(e, tox, patient, number, facts[tox].label_detail if tox in facts else None) for e in events]
    if result.reviews:  # our own event Conditions (not those an input Condition records) may be reviewed
        out = [replace(r, result=_reviewed(result, event_key(cr.course, e), r.result)) if e.condition_ref is None
               else r for r, e in zip(out, events, strict=True)]
    out.extend(Row(patient, number, tox, tox.value, _state(a.state, a.value, a.missing)) for a in standalone)
    if not out:  # assessed, nothing found; say what it could not read
        lacking = sorted(gaps & result.needs.get(tox, frozenset()))
        shown = f"{NONE} (no {', '.join(lacking)} in days 0-14)" if lacking else NONE
        out.append(Row(patient, number, tox, tox.value, shown))
    return out


def _daily_rows(result: RunResult, cr: CourseResult, tox: Toxicity, patient: str) -> list[Row]:
    days, number = cr.days[tox], cr.course.number
    eps = cr.episodes[tox]
    if not eps:
        graded = [d for d in days if d.state != State.NOT_ASSESSABLE]
        shown = NONE if graded else f"{NOT_ASSESSABLE}: {_short(_missing_of(days))}"
        return [Row(patient, number, tox, tox.value, shown, days_assessed=str(len(graded)))]
    responses = cr.treatments.get(tox)
    out = []
    for i, ep in enumerate(eps):
        shown = f">= {ep.max_grade}" if ep.max_is_lower_bound else f"grade {ep.max_grade}"
        if result.reviews:
            shown = _reviewed(result, episode_key(cr.course, ep, result.tables), shown)
        out.append(Row(patient, number, tox, tox.value, shown,
                       str(ep.onset_day), str(ep.resolved_day) if ep.resolved_day is not None else "not resolved",
                       str(sum(1 for d in ep.days if d.state != State.NOT_ASSESSABLE)),
                       _treated(responses[i]) if responses is not None else "-"))
    return out


def _missing_of(days: list[DayGrade]) -> str:
    """The input whose absence kept most days open (no days at all: no data in the course)."""
    counted = Counter(m for d in days for m in d.missing)
    return counted.most_common(1)[0][0] if counted else "no data in the course"


def _short(text: str, limit: int = 60) -> str:
    """A missing input as the table shows it (the run report and summary.json keep the whole text)."""
    return text if len(text) <= limit else text[: limit - 3].rstrip(" ,(") + "..."


def _state(state: State, value: int | None, missing: tuple[str, ...]) -> str:
    if state == State.NOT_ASSESSABLE or value is None:
        return f"{NOT_ASSESSABLE}: {_short(missing[0]) if missing else 'an input is missing'}"
    if state == State.AT_LEAST:
        return f">= {value}"
    return NONE if value == 0 else f"grade {value}"


def _event_row(ev: Event, tox: Toxicity, patient: str, number: int, detail: str | None) -> Row:
    label = tox.value
    extra = ev.detail(detail) if detail else None
    if extra:
        label += f" ({extra})"
    missing = ev.assessment.missing if ev.assessment is not None else ()
    resolved = str(ev.resolved_day) if ev.resolved_day is not None else "not resolved"
    return Row(patient, number, tox, label, _state(ev.state, ev.max_grade, missing), str(ev.onset_day), resolved)


def _score_row(score: Assessment, tox: Toxicity, patient: str, number: int) -> Row:
    if score.state == State.NOT_ASSESSABLE or score.value is None:
        shown = _state(State.NOT_ASSESSABLE, None, score.missing)
    else:
        shown = f"score {score.value} ({score.interpretation} risk)" if score.interpretation else f"score {score.value}"
    return Row(patient, number, tox, tox.value, shown, score=True)


def _treated(tr: TreatmentResponse) -> str:
    treated = ", ".join(tr.treatments) or "-"
    if tr.first_treatment_day is not None:
        treated += f" (day {tr.first_treatment_day})"
    if tr.steroid_refractory:
        treated += ", steroid-refractory"
    if tr.remission_day is not None:
        treated += f", IDM remission day {tr.remission_day}"
    return treated


def table_rows(result: RunResult, mode: str = "full") -> list[tuple[str, ...]]:
    """The table's cells: every row (`full`) or the notable ones (`brief`: grade >= 1, >= N, not assessable)."""
    return [r.cells() for r in rows(result) if mode == "full" or r.notable]


def render_table(cells: list[tuple[str, ...]], footer: list[str] | None = None) -> str:
    widths = [max(len(str(r[i])) for r in [HEAD, *cells]) for i in range(len(HEAD))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [HEAD, *cells]]
    return "\n".join([*lines, *(footer or [])])


def cohort_totals(result: RunResult) -> list[str]:
    """Patients, graded infusions, and per toxicity the episodes by grade and the infusions without one."""
    all_rows = rows(result)
    infusions = sum(len(pr.courses) for pr in result.patients)
    lines = [f"cohort: {_n(len(result.patients), 'patient')}, {_n(infusions, 'infusion')} graded"]
    by_tox: dict[Toxicity, Counter[str]] = {}
    for r in all_rows:
        by_tox.setdefault(r.toxicity, Counter())[r.category] += 1
    for tox, counts in by_tox.items():
        grades = sorted((k for k in counts if k.startswith(("grade", ">="))), key=_grade_order)
        episodes = sum(counts[k] for k in grades)
        if any(r.score for r in all_rows if r.toxicity == tox):
            risks = Counter(r.result.split(" (", 1)[-1].rstrip(")") for r in all_rows
                            if r.toxicity == tox and r.category == "score")
            shown = ", ".join(f"{k}: {v}" for k, v in sorted(risks.items()))
            parts = [f"scored {counts['score']}" + (f" ({shown})" if shown else "")]
        else:
            shown = ", ".join(f"{k}: {counts[k]}" for k in grades)
            parts = [f"{episodes} episode{'' if episodes == 1 else 's'}" + (f" ({shown})" if grades else "")]
        parts.extend(f"{k} {counts[k]}" for k in (NONE, NOT_ASSESSABLE, REFUTED_SHOWN) if counts[k])
        lines.append(f"  {tox.value}: {'; '.join(parts)}")
    lines.append(DAYS_ASSESSED)
    return lines


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _grade_order(category: str) -> tuple[int, int]:
    number = int(category.split()[-1])
    return (number, category.startswith(">="))
