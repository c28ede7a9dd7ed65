"""CDS Hooks 2.0 cards from a grading run: one card per toxicity episode or event of the latest infusion."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from typing import Any

import orjson

from ..constants import CS_TOXICITY
from ..grading.result import Assessment, DayGrade, Event, State, Toxicity
from ..grading.treatments import TreatmentResponse
from ..pipeline import CourseResult, Engine, RunResult
from ..reviews import Review, Verdict, episode_key, event_key
from ..tables import Tables

# Card uuids are uuid5 under this namespace, so the same episode keeps its uuid from call to call and the
# EHR can de-duplicate or remember a dismissal (CDS Hooks 2.0, Card.uuid).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://cart-fhir.org/cds-services/cart-toxicity")
SUMMARY_MAX = 139  # CDS Hooks 2.0: Card.summary "SHOULD be < 140 characters"
DAYS_SHOWN = 14  # daily grades listed in a card's trend line; older days are counted, not listed

class Indicator(str, Enum):
    """CDS Hooks 2.0 Card.indicator."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Criteria:
    """The criteria a toxicity is graded with, as a card names them."""

    name: str  # "CRS", "Early ICAHT": output-codes.yaml `short`
    short: str  # "ASTCT 2019": the parenthesis of the scale display in output-codes.yaml
    citation: str  # output-codes.yaml `criteria`: the paper, and any UNVERIFIED note
    url: str
    table: str  # "astct-crs-2019 v1"
    topic: dict[str, str]  # Card.source.topic: the cart-toxicity code of the toxicity


def criteria_of(engine: Engine) -> dict[Toxicity, Criteria]:
    """Citations from output-codes.yaml and table versions from the engine: the same words and versions the
    written Observations carry, so a card and the resources it summarises cite alike."""
    out: dict[Toxicity, Criteria] = {}
    for tox in (t for spec in engine.specs for t in spec.toxicities):
        facts = engine.codes.t.toxicities[tox.value]
        found = re.search(r"\(([^)]*)\)\s*$", facts.scale_display)
        short = found.group(1).split(",")[0].strip() if found else facts.scale_display
        table = facts.criteria_table
        out[tox] = Criteria(facts.short, short, facts.criteria, facts.source_url, f"{table} v{engine.versions[table]}",
                            {"system": CS_TOXICITY, "code": facts.code, "display": facts.display})
    return out


def indicator(grade: int | None) -> Indicator:
    """Grade 1 or not assessable: info; grade 2: warning; grade 3 and above: critical."""
    if grade is None or grade <= 1:
        return Indicator.INFO
    return Indicator.WARNING if grade == 2 else Indicator.CRITICAL


def trend(grades: Sequence[int]) -> str | None:
    """rising / falling / stable over the last three graded days (None with fewer than two)."""
    last = list(grades)[-3:]
    if len(last) < 2:
        return None
    return "rising" if last[-1] > last[0] else "falling" if last[-1] < last[0] else "stable"


def toxicity_cards(result: RunResult, *, today: date | None = None, source_url: str, timeline_url: str,
                   patient_id: str, criteria: Mapping[Toxicity, Criteria]) -> list[dict[str, Any]]:
    """Cards for the patient's most recent infusion as of `today` (default: today in the infusion's own UTC
    offset); data dated after `today` is not shown. No infusion or nothing graded: no cards."""
    pr = next((p for p in result.patients if p.patient.id == patient_id), None)
    if pr is None:
        return []
    started = [(cr, today or datetime.now(cr.course.tz).date()) for cr in pr.courses]
    started = [(cr, day) for cr, day in started if cr.course.infusion.day0 <= day]
    if not started:
        return []
    cr, day = started[-1]
    ctx = _Context(cr, (day - cr.course.infusion.day0).days, source_url, timeline_url, patient_id, criteria,
                   result.reviews, result.tables)
    cards: list[dict[str, Any]] = []
    for tox in cr.days:  # the daily-graded toxicities, in registry order
        card = ctx.daily_card(tox)
        if card is not None:
            cards.append(card)
    # A grade-0 event (an ICAHT window that stayed above the thresholds) is nothing to show.
    cards.extend(ctx.event_card(ev) for ev in cr.events
                 if ev.onset_day <= ctx.today and not (ev.max_grade == 0 and ev.state == State.GRADED))
    if cr.hematotox is not None and cr.hematotox.state != State.NOT_ASSESSABLE and cr.hematotox.value is not None:
        cards.append(ctx.hematotox_card(cr.hematotox))
    # Most urgent first (CDS Hooks leaves the order to the service; the EHR may re-sort).
    rank = {Indicator.CRITICAL.value: 0, Indicator.WARNING.value: 1, Indicator.INFO.value: 2}
    return sorted(cards, key=lambda c: rank[c["indicator"]])


@dataclass(frozen=True, slots=True)
class _Context:
    cr: CourseResult
    today: int  # today's day number on the infusion's time axis
    source_url: str
    timeline_url: str
    patient_id: str
    criteria: Mapping[Toxicity, Criteria]
    reviews: Mapping[str, Review] = field(default_factory=dict)  # RunResult.reviews (reviews.py)
    tables: Tables | None = None  # to spell an episode's business key (only when there are reviews)

    # ---- CRS and ICANS: daily grades --------------------------------------------------------

    def daily_card(self, tox: Toxicity) -> dict[str, Any] | None:
        """The latest episode begun by today; days after today are left out, so an episode that resolves
        later is still ongoing as of today."""
        eps = self.cr.episodes[tox]
        responses: Sequence[TreatmentResponse | None] = self.cr.treatments.get(tox) or [None] * len(eps)
        pairs = [(ep, tr) for ep, tr in zip(eps, responses, strict=True) if ep.onset_day <= self.today]
        if not pairs:
            return None
        ep, tr = pairs[-1]
        days = [d for d in ep.days if d.day <= self.today]
        resolved = ep.resolved_day if ep.resolved_day is not None and ep.resolved_day <= self.today else None
        graded = [d for d in days if d.state != State.NOT_ASSESSABLE and d.grade is not None]
        crit = self.criteria[tox]
        peak = max(graded, key=lambda d: d.grade or 0) if graded else None
        if resolved is not None:
            peak_text = f"max grade {_grade(peak)}" if peak else "no graded day"
            summary = (f"{self.criteria[tox].name} resolved day {resolved} ({peak_text}, {crit.short}), "
                       f"onset day {ep.onset_day}")
            level = Indicator.INFO
        elif graded:
            now = graded[-1]
            words = [f"{self.criteria[tox].name} grade {_grade(now)} ({crit.short}) since day {ep.onset_day}"]
            direction = trend([d.grade for d in graded if d.grade is not None])
            if direction:
                words.append(direction)
            if peak is not None and (peak.grade or 0) > (now.grade or 0):
                words.append(f"max {_grade(peak)} day {peak.day}")
            if days[-1].state == State.NOT_ASSESSABLE:
                words.append(f"day {days[-1].day} not assessable")
            elif self.today - now.day >= 2:
                words.append(f"last graded day {now.day}")
            summary = ", ".join(words)
            level = indicator(now.grade)
        else:
            summary = f"{self.criteria[tox].name} since day {ep.onset_day}: grade not assessable ({crit.short})"
            level = Indicator.INFO
        n = self.cr.course.number
        heading = f"**{self._display(tox)}** ({crit.short}), episode {ep.number} after infusion {n}"
        lines = [heading, "", *self._course_lines(),
                 f"- Onset: day {ep.onset_day}, {_when(ep.onset)}"]
        if peak is not None:
            lines.append(f"- Highest grade so far: {_grade(peak)} on day {peak.day}")
        lines.append(f"- Daily grades: {_trend_line(days)}")
        if graded:
            last = graded[-1]
            lines.extend(_why(f"the grade of day {last.day}", last.reasons, last.evidence + last.supporting))
        lines.extend(_not_assessable(days))
        if tr is not None:
            lines.extend(_treatment_lines(tr, self.today))
        if tox == Toxicity.CRS:
            lines.extend(_screen_lines(self.cr.assessments))
        lines.append(f"- Status: resolved on day {resolved}" if resolved is not None else "- Status: ongoing")
        flags = sorted({f for d in days for f in d.flags})
        if flags:
            lines.append(f"- Review flags: {', '.join(flags)}")
        if self.reviews and self.tables is not None:
            review = self.reviews.get(episode_key(self.cr.course, ep, self.tables))
            if review is not None:
                computed = f">={ep.max_grade}" if ep.max_is_lower_bound else str(ep.max_grade)
                summary, level = _reviewed(review, crit.name, computed, ep.onset_day, resolved, lines, level)
        return self._card(tox, f"episode-{ep.number}", summary, lines, level)

    # ---- events (IEC-HS, ICAHT, infections, other neurotoxicity) -----------------------------

    def event_card(self, ev: Event) -> dict[str, Any]:
        crit = self.criteria[ev.toxicity]
        term = ev.term[2] if ev.term else ev.detail("ctcae_term") or ev.detail("category") or ev.detail("lineage")
        name = f"{self.criteria[ev.toxicity].name} ({term})" if term else self.criteria[ev.toxicity].name
        resolved = ev.resolved_day if ev.resolved_day is not None and ev.resolved_day <= self.today else None
        shown = _event_grade(ev)
        ungraded = ev.max_grade is None and ev.state == State.GRADED  # an effect no grade applies to (IAGO)
        if ungraded:
            summary = (f"{name} since day {ev.onset_day}" if resolved is None
                       else f"{name}, day {ev.onset_day}, resolved day {resolved}")
        elif ev.max_grade is None:
            summary = f"{name} day {ev.onset_day}: grade not assessable ({crit.short})"
        elif resolved is not None:
            summary = f"{name} grade {shown} ({crit.short}), day {ev.onset_day}, resolved day {resolved}"
        else:
            summary = f"{name} grade {shown} ({crit.short}) since day {ev.onset_day}"
        level = Indicator.INFO if resolved is not None else indicator(ev.max_grade)
        if ungraded and ev.serious:  # a new malignancy: the review actions on the card need attention
            level = Indicator.WARNING
        a = ev.assessment
        lines = [f"**{self._display(ev.toxicity)}**" + (f": {term}" if term else "") + f" ({crit.short})", "",
                 *self._course_lines(), f"- Onset: day {ev.onset_day}, {_when(ev.onset)}",
                 f"- Grade: {shown if ev.max_grade is not None else 'none applies' if ungraded else 'not assessable'}"]
        keys = ("site", "type", "category") if ev.toxicity in (Toxicity.ICAHT_EARLY, Toxicity.ICAHT_LATE) else \
            ("window", "site", "type", "category")  # an ICAHT event's name already says its window
        extra = [f"{k} {ev.detail(k)}" for k in keys if ev.detail(k)]
        if ev.detail("prophylaxis"):
            extra.append("under prophylaxis at onset")
        if extra:
            lines.append(f"- Event: {', '.join(extra)}")
        if a is not None:
            lines.extend(_why("the grade", a.reasons, a.evidence + a.supporting))
            if a.missing:
                what = "not assessable, missing" if a.state == State.NOT_ASSESSABLE else "could be higher, missing"
                lines.append(f"- Grade {what}: {'; '.join(a.missing)}")
        elif ev.evidence:
            lines.append(f"- Evidence: {', '.join(ev.evidence)}")
        lines.append(f"- Status: resolved on day {resolved}" if resolved is not None else "- Status: ongoing")
        review = self.reviews.get(event_key(self.cr.course, ev)) if self.reviews and ev.condition_ref is None \
            else None
        if review is not None:
            summary, level = _reviewed(review, name, shown, ev.onset_day, resolved, lines, level)
        return self._card(ev.toxicity, f"event-{ev.key}", summary, lines, level)

    # ---- CAR-HEMATOTOX: a pre-infusion risk score --------------------------------------------

    def hematotox_card(self, hx: Assessment) -> dict[str, Any]:
        crit = self.criteria[Toxicity.CAR_HEMATOTOX]
        risk = hx.interpretation or "unknown"
        summary = f"CAR-HEMATOTOX score {hx.value} ({crit.short}): {risk} risk of hematotoxicity"
        lines = [f"**CAR-HEMATOTOX score {hx.value}: {risk} risk** ({crit.short})", "", *self._course_lines(),
                 *_why("the score", hx.reasons, hx.evidence)]
        if hx.missing:
            lines.append(f"- Missing inputs: {'; '.join(hx.missing)}")
        return self._card(Toxicity.CAR_HEMATOTOX, "score", summary, lines,
                          Indicator.WARNING if risk == "high" else Indicator.INFO)

    # ---- shared -----------------------------------------------------------------------------

    def _display(self, tox: Toxicity) -> str:
        return self.criteria[tox].topic["display"]

    def _course_lines(self) -> list[str]:
        c = self.cr.course
        return [(f"- Infusion {c.number}: {c.infusion.ref}, day 0 = {c.infusion.day0.isoformat()} "
                 f"(today is day {self.today})")]

    def _card(self, tox: Toxicity, key: str, summary: str, lines: list[str], level: Indicator) -> dict[str, Any]:
        crit = self.criteria[tox]
        lines = [*lines, f"- Criteria: {crit.citation}; table {crit.table}",
                 "", f"Graded by [cart-fhir]({self.source_url}) from the data in the record; review before acting."]
        ref = self.cr.course.infusion.ref
        return {
            "uuid": str(uuid.uuid5(NAMESPACE, f"{self.patient_id}|{ref}|{tox.value}|{key}")),
            "summary": _clip(summary),
            "detail": "\n".join(lines),
            "indicator": level.value,
            "source": {"label": f"cart-fhir: {_first_clause(crit.citation)}", "url": crit.url, "topic": crit.topic},
            "links": [{
                "label": "CAR-T toxicity timeline", "url": self.timeline_url, "type": "smart",
                # appContext is an opaque string the SMART app receives at launch (CDS Hooks 2.0 Link).
                "appContext": orjson.dumps({"patient": self.patient_id, "infusion": ref,
                                            "toxicity": tox.value}).decode(),
            }] if self.timeline_url else [],  # no timeline app configured: no link (never a placeholder)
        }


def _reviewed(review: Review, name: str, computed: str, onset_day: int, resolved: int | None, lines: list[str],
              level: Indicator) -> tuple[str, Indicator]:
    """A result a clinician reviewed on the record (reviews.py): their word in the summary and the indicator,
    cart-fhir's computation beside it; a refuted one is not shown as an active toxicity. `lines` gains the
    review as its third line (after the heading)."""
    ours = f"cart-fhir computes {'grade ' if computed[0].isdigit() else ''}{computed}"
    lines.insert(2, f"- Clinician review: {review.verdict.value} on the record ({review.ref}); {ours}")
    if review.verdict == Verdict.REFUTED:
        return f"{name} from day {onset_day} refuted by a clinician ({ours})", Indicator.INFO
    grade = "unreadable grade" if review.grade is None else f"grade {review.grade}"
    when = f"day {onset_day}, resolved day {resolved}" if resolved is not None else f"since day {onset_day}"
    summary = f"{name} {grade} ({review.verdict.value} by a clinician; {ours}), {when}"
    return summary, Indicator.INFO if resolved is not None else indicator(review.grade) if review.grade else level


def _grade(d: DayGrade | None) -> str:
    if d is None or d.grade is None:
        return "n/a"
    return f">={d.grade}" if d.state == State.AT_LEAST else str(d.grade)


def _event_grade(ev: Event) -> str:
    if ev.max_grade is None:
        return "n/a"
    return f">={ev.max_grade}" if ev.state == State.AT_LEAST else str(ev.max_grade)


def _when(at: datetime) -> str:
    return at.isoformat(timespec="minutes").replace("T", " ")


def _trend_line(days: Sequence[DayGrade]) -> str:
    shown = list(days)[-DAYS_SHOWN:]
    text = " -> ".join(f"d{d.day} {_grade(d)}" for d in shown)
    earlier = len(days) - len(shown)
    return f"({earlier} earlier days) {text}" if earlier else text


def _why(what: str, reasons: Sequence[str], evidence: Sequence[str]) -> list[str]:
    out = []
    if reasons:
        out.append(f"- What set {what}: {'; '.join(reasons)}")
    if evidence:
        out.append(f"- Evidence: {', '.join(dict.fromkeys(evidence))}")
    return out


def _not_assessable(days: Sequence[DayGrade]) -> list[str]:
    return [f"- Day {d.day} not assessable: missing {'; '.join(d.missing) or 'data for the day'}"
            for d in days if d.state == State.NOT_ASSESSABLE]


def _treatment_lines(tr: TreatmentResponse, today: int) -> list[str]:
    if not tr.treatments or tr.first_treatment_day is None or tr.first_treatment_day > today:
        return []
    line = f"- Treated with {', '.join(tr.treatments)} from day {tr.first_treatment_day}"
    return [line + (", steroid-refractory" if tr.steroid_refractory else "")]


def _screen_lines(assessments: Sequence[Assessment]) -> list[str]:
    """An IEC-HS screen that could not run during CRS says what it lacks (grading.md 3.3)."""
    return [f"- IEC-HS screen not assessable: missing {'; '.join(a.missing)}" for a in assessments
            if a.toxicity == Toxicity.IEC_HS and a.state == State.NOT_ASSESSABLE and a.missing]


def _first_clause(citation: str) -> str:
    """The citation up to its first top-level ';' (a journal's "2019;25:625" inside parentheses stays)."""
    depth = 0
    for i, ch in enumerate(citation):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == ";" and depth == 0:
            return citation[:i].strip()
    return citation


def _clip(text: str) -> str:
    return text if len(text) <= SUMMARY_MAX else text[:SUMMARY_MAX - 3].rstrip(" ,") + "..."

