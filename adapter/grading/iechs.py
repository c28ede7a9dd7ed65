"""IEC-HS screen and suggested grade (Hines MR et al., Transplant Cell Ther 2023;29(7):438.e1-438.e16: the
IEC-HS criteria table and grading table, as restated UNVERIFIED in grading.md section 3; CTCAE v5.0 lab
bands of grading.md 9.2). Thresholds, windows and codes are data in mappings/astct-iechs-2023.yaml.

Two layers (grading.md 3.3), never a diagnosis:
- Screen (3.3 item 1): on a day >= first-screen-day, ferritin meets the key finding (> 2 x ULN, > 2 x the
  baseline at infusion, optionally doubling within 48 h) AND, within concurrence-hours of it, a second
  criterion (ALT/AST > 5 x ULN or abnormal baseline, fibrinogen < 150 mg/dL or < LLN, new or worsening
  cytopenia by CTCAE grade) AND the day is timing-compatible (CRS resolving, within N days after CRS,
  ferritin/CRP re-worsening after a fall, or no CRS at all; never the rise of a CRS episode to its peak).
  The positive screen opens an episode that lasts until a later ferritin no longer meets the key finding;
  findings inside an open episode extend it without a new timing check.
- Grade (3.3 item 2): 1, raised by IEC-HS-directed treatment started on or after the screen day (2), new
  oxygen or a new creatinine rise (3), new vasopressors or positive-pressure ventilation (4). Grade 5 is
  never suggested (decision 2). Every result is provisional: flagged clinician-confirmation-required.
A lab bound that straddles a threshold (">500" against 600) does not meet the criterion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, cast, get_args

from ..errors import ConfigError
from ..model import DrugAdmin, Quantity, Reading
from ..tables import Row, Table, load_tables, load_yaml_table
from ..timeline import Course
from .result import Assessment, Component, DayGrade, Episode, Event, Findings, State, Toxicity

TABLE_FILE = "astct-iechs-2023.yaml"
OXYGEN_SYSTEM = "https://cart-fhir.org/fhir/CodeSystem/oxygen-delivery"
ALWAYS_FLAGS = ("clinician-confirmation-required", "attribution-unconfirmed", "unverified-criteria")

SettingKey = Literal["first-screen-day", "concurrence-hours", "baseline-lookback-days",
                     "support-lookback-hours"]
FerritinKey = Literal["ferritin-uln", "ferritin-baseline", "ferritin-doubling"]
TimingKey = Literal["crs-onset-phase", "timing-crs-resolving", "timing-after-crs", "timing-reworsening",
                    "timing-no-crs"]


# ---- the table (mappings/astct-iechs-2023.yaml) ---------------------------------------------------

class Setting(Row):
    value: float
    unit: str
    verified: bool
    source: str


class FerritinRule(Row):
    key: FerritinKey
    factor: float
    enabled: bool
    require_above_uln: bool = False
    within_hours: float | None = None
    verified: bool
    source: str


class TransaminaseRule(Row):
    key: Literal["transaminases"]
    concepts: tuple[str, ...]
    factor_uln: float
    factor_baseline: float
    verified: bool
    source: str


class FibrinogenRule(Row):
    key: Literal["fibrinogen"]
    below_mg_dl: float
    below_lln: bool
    verified: bool
    source: str


class CytopeniaRule(Row):
    key: Literal["cytopenia"]
    concepts: tuple[str, ...]
    new_grade_at_least: int
    worsening_grades: int
    prior_hours: float
    verified: bool
    source: str


class CtcaeBand(Row):
    concept: str
    grade: int
    below: float | None  # None: below the lower limit of normal
    unit: str
    verified: bool
    source: str


class DefaultLimit(Row):
    concept: str
    bound: Literal["low", "high"]
    value: float
    unit: str
    verified: bool
    source: str


class TimingRule(Row):
    key: TimingKey
    enabled: bool
    days: int | None = None
    concepts: tuple[str, ...] = ()
    fall_fraction: float | None = None
    rise_fraction: float | None = None
    verified: bool
    source: str


class GradeRule(Row):
    key: str
    kind: Literal["screen", "drug", "oxygen", "creatinine"]
    grade: int
    agents: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    exclude_routes: tuple[str, ...] = ()
    factor: float | None = None
    flag: str | None = None  # review flag raised when the rule is met
    verified: bool
    source: str


class IecHsTable(Table):
    settings: dict[SettingKey, Setting]
    ferritin_rules: tuple[FerritinRule, ...]
    transaminases: TransaminaseRule
    fibrinogen: FibrinogenRule
    cytopenia: CytopeniaRule
    ctcae_bands: tuple[CtcaeBand, ...]
    default_limits: tuple[DefaultLimit, ...]
    timing: tuple[TimingRule, ...]
    grade_rules: tuple[GradeRule, ...]
    inputs: dict[Literal["ferritin", "second-criterion"], str]


def check_table(t: IecHsTable) -> None:
    """Start-up checks (house style habit 4): every rule present once, grades 1-4, bands from grade 1,
    oxygen devices known to mappings/concepts.yaml. Raises ConfigError naming the table."""
    def fail(msg: str) -> None:
        raise ConfigError(f"{TABLE_FILE}: {msg}")

    def once(name: str, keys: list[str], expected: set[str]) -> None:
        if len(keys) != len(set(keys)) or set(keys) != expected:
            fail(f"{name} needs each of {sorted(expected)} exactly once, got {keys}")
    once("settings", list(t.settings), set(get_args(SettingKey)))
    once("ferritin_rules", [r.key for r in t.ferritin_rules], set(get_args(FerritinKey)))
    once("timing", [r.key for r in t.timing], set(get_args(TimingKey)))
    once("grade_rules", [r.key for r in t.grade_rules], {r.key for r in t.grade_rules})
    kinds = [r.kind for r in t.grade_rules]
    if kinds.count("screen") != 1 or any(not 1 <= r.grade <= 4 for r in t.grade_rules):
        fail("grade_rules need one 'screen' row and grades 1-4 only (grade 5 is never suggested)")
    for c in t.cytopenia.concepts:
        if sorted(b.grade for b in t.ctcae_bands if b.concept == c)[:1] != [1]:
            fail(f"ctcae_bands: {c} needs bands from grade 1")
    timing = {r.key: r for r in t.timing}
    rew = timing["timing-reworsening"]
    if timing["timing-after-crs"].days is None or rew.fall_fraction is None or rew.rise_fraction is None:
        fail("timing-after-crs needs days; timing-reworsening needs fall_fraction and rise_fraction")
    known = set(load_tables().concepts.values.get(OXYGEN_SYSTEM, ()))
    unknown = {d for r in t.grade_rules for d in r.devices} - known
    if unknown:
        fail(f"grade_rules name unknown oxygen devices {sorted(unknown)}")


# ---- intermediate facts ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Hit:
    """One reading meeting a screen criterion; `criteria` are the table row keys it met."""

    criteria: tuple[str, ...]
    reading: Reading
    day: int
    text: str
    flags: tuple[str, ...] = ()

    @property
    def at(self) -> datetime:
        return self.reading.when.at


@dataclass(frozen=True, slots=True)
class Pair:
    """A screen-positive moment: a ferritin hit and a second-criterion hit within concurrence-hours."""

    at: datetime
    day: int
    ferritin: Hit
    plus: Hit


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """What one grade rule found: the input references, a sentence (None: not met), review flags."""

    refs: tuple[str, ...] = ()
    text: str | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Suggestion:
    grade: int
    reasons: tuple[str, ...]
    evidence: tuple[str, ...]
    supporting: tuple[str, ...]
    flags: tuple[str, ...]


def _q(r: Reading) -> Quantity:
    return cast(Quantity, r.value)  # _Labs keeps only readings with a Quantity value


def _unique(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class _Labs:
    """Quantity readings by concept, as (day, reading): at/after the infusion (`post`), before it (`pre`)."""

    post: dict[str, list[tuple[int, Reading]]]
    pre: dict[str, list[tuple[int, Reading]]]

    @classmethod
    def of(cls, course: Course) -> _Labs:
        post: dict[str, list[tuple[int, Reading]]] = {}
        pre: dict[str, list[tuple[int, Reading]]] = {}
        for target, source in ((post, course.readings), (pre, course.pre_readings)):
            for day, r in sorted(source, key=lambda x: x[1].when.at):
                if isinstance(r.value, Quantity):
                    target.setdefault(r.concept, []).append((day, r))
        return cls(post, pre)

    def after(self, concept: str, first_day: int) -> list[tuple[int, Reading]]:
        return [(d, r) for d, r in self.post.get(concept, []) if d >= first_day]

    def series(self, concept: str) -> list[tuple[int, Reading, bool]]:
        """Every reading of a concept in time order; the flag says it is at/after the infusion."""
        return ([(d, r, False) for d, r in self.pre.get(concept, [])]
                + [(d, r, True) for d, r in self.post.get(concept, [])])


def _reworsening(readings: list[tuple[int, Reading]], fall: float, rise: float) -> list[tuple[Reading, str]]:
    """Readings at least `rise` above the lowest value reached after a fall of `fall` from the post-infusion
    peak (grading.md 3.3: re-worsening after initial improvement), each with a sentence."""
    out: list[tuple[Reading, str]] = []
    peak: float | None = None
    nadir: float | None = None
    for day, r in readings:
        v = _q(r).value
        if peak is None or (nadir is None and v > peak):
            peak = v
        elif nadir is None:
            if v <= peak * (1 - fall):
                nadir = v
        elif v >= nadir * (1 + rise):
            out.append((r, f"{r.concept} {v:g} on day {day} rose again after falling from {peak:g} "
                           f"to {nadir:g}"))
        else:
            nadir = min(nadir, v)
    return out


@dataclass(frozen=True, slots=True)
class TimingMatch:
    """Why a day is timing-compatible: the timing row key, a sentence, and the readings that show it."""

    key: str
    text: str
    refs: tuple[str, ...] = ()


class _Timing:
    """Is a day timing-compatible with IEC-HS (grading.md 3.1 'Timing', 3.3 item 1)?

    Re-worsening of ferritin/CRP after a fall counts first (it is the IEC-HS picture even when CRS signs
    return); otherwise the rise of any CRS episode to its peak excludes the day (crs-onset-phase), and the
    day must be in a resolving CRS, within N days after one, or in a course without CRS.
    """

    def __init__(self, rules: dict[str, TimingRule], labs: _Labs, crs_days: Sequence[DayGrade],
                 crs_episodes: Sequence[Episode]) -> None:
        self.rules = {k: r for k, r in rules.items() if r.enabled}
        self.by_day = {d.day: d for d in crs_days}
        self.episodes = list(crs_episodes)
        rew = rules["timing-reworsening"]
        self.series = {c: labs.post.get(c, []) for c in rew.concepts}
        fall, rise = rew.fall_fraction or 0, rew.rise_fraction or 0
        self.marks = {c: {id(r): text for r, text in _reworsening(s, fall, rise)}
                      for c, s in self.series.items()}

    def __call__(self, day: int) -> TimingMatch | None:
        if "timing-reworsening" in self.rules:
            for concept, series in self.series.items():
                latest = [r for d, r in series if d <= day][-1:]
                if latest and id(latest[0]) in self.marks[concept]:
                    text = self.marks[concept][id(latest[0])]
                    return TimingMatch("timing-reworsening", text, (latest[0].ref,))
        rising = any(e.onset_day <= day <= e.max_day.day for e in self.episodes)
        if "crs-onset-phase" in self.rules and rising:
            return None  # a CRS rising to its peak explains the labs (grading.md 3.1: not IEC-HS)
        after = self.rules.get("timing-after-crs")
        for ep in self.episodes:
            if "timing-crs-resolving" in self.rules and self._resolving(ep, day):
                text = (f"CRS resolving: grade {self.by_day[day].grade} on day {day} after its peak grade "
                        f"{ep.max_grade} on day {ep.max_day.day}")
                return TimingMatch("timing-crs-resolving", text)
            done = ep.resolved_day
            if after is not None and done is not None and done <= day <= done + (after.days or 0):
                return TimingMatch("timing-after-crs", f"day {day} is {day - done} day(s) after CRS resolved "
                                   f"on day {done} (window {after.days} days)")
        if "timing-no-crs" in self.rules and not self.episodes:
            return TimingMatch("timing-no-crs", "no CRS episode in this course: timing not judged by CRS")
        return None

    def _resolving(self, ep: Episode, day: int) -> bool:
        """After the episode's peak day, before its resolution, graded below the peak that day."""
        dg = self.by_day.get(day)
        return (ep.max_day.day < day and (ep.resolved_day is None or day < ep.resolved_day) and dg is not None
                and dg.state == State.GRADED and dg.grade is not None and dg.grade < ep.max_grade)


class IecHsGrader:
    """Screens one infusion course for IEC-HS and suggests a provisional grade per screen-positive episode."""

    def __init__(self, table: IecHsTable | None = None) -> None:
        self.t = table if table is not None else load_yaml_table(TABLE_FILE, IecHsTable)
        check_table(self.t)
        self.s = {k: v.value for k, v in self.t.settings.items()}
        self.timing_rules = {r.key: r for r in self.t.timing}
        self.bands = {c: sorted((b for b in self.t.ctcae_bands if b.concept == c), key=lambda b: -b.grade)
                      for c in self.t.cytopenia.concepts}
        self.defaults = {(d.concept, d.bound): d.value for d in self.t.default_limits}
        self.screen_grade = next(r.grade for r in self.t.grade_rules if r.kind == "screen")

    @property
    def table_id(self) -> str:
        return f"{self.t.table} v{self.t.version}"

    # ---- reference limits and baselines ---------------------------------------------------------

    def limit(self, r: Reading, bound: Literal["low", "high"]) -> tuple[float | None, tuple[str, ...]]:
        """The result's own LLN/ULN, else the table default (flagged default-lln-/default-uln-<concept>)."""
        own = r.high if bound == "high" else r.low
        if own is not None:
            return own, ()
        value = self.defaults.get((r.concept, bound))
        flag = f"default-{'uln' if bound == 'high' else 'lln'}-{r.concept}"
        return value, ((flag,) if value is not None else ())

    def baseline(self, labs: _Labs, concept: str) -> tuple[int, Reading] | None:
        """The last value at or before the infusion within baseline-lookback-days, else the first of day 0."""
        lookback = self.s["baseline-lookback-days"]
        pre = [(d, r) for d, r in labs.pre.get(concept, []) if d >= -lookback]
        if pre:
            return pre[-1]
        return next(((d, r) for d, r in labs.post.get(concept, []) if d == 0), None)

    # ---- screen criteria (grading.md 3.1, 3.3 item 1) --------------------------------------------

    def ferritin_hit(self, labs: _Labs, day: int, r: Reading) -> Hit | None:
        """Key finding: ferritin > factor x ULN, > factor x baseline, or (if enabled) doubling in 48 h."""
        q = _q(r)
        uln, flags = self.limit(r, "high")
        base = self.baseline(labs, "ferritin")
        met: list[tuple[str, str]] = []
        for rule in self.t.ferritin_rules:
            ref: float | None = None
            label = ""
            if not rule.enabled:
                continue
            if rule.key == "ferritin-uln":
                ref, label = uln, f"ULN ({uln:g})" if uln is not None else ""
            elif rule.key == "ferritin-baseline" and base is not None and base[1] is not r:
                ref, label = _q(base[1]).value, f"baseline ({_q(base[1]).value:g} on day {base[0]})"
            elif rule.key == "ferritin-doubling":
                span = timedelta(hours=rule.within_hours or 0)
                earlier = [_q(x).value for _, x, _ in labs.series("ferritin")
                           if timedelta(0) < r.when.at - x.when.at <= span]
                if earlier:
                    ref = min(earlier)
                    label = f"the lowest value of the previous {rule.within_hours:g} h ({ref:g})"
            if ref is None or q.above(rule.factor * ref) is not True:
                continue
            if rule.require_above_uln and (uln is None or q.above(uln) is not True):
                continue
            met.append((rule.key, f"> {rule.factor:g} x {label}"))
        if not met:
            return None
        text = f"ferritin {q.value:g} ng/mL {' and '.join(m[1] for m in met)} on day {day}"
        return Hit(tuple(k for k, _ in met), r, day, text, flags)

    def transaminase_hits(self, labs: _Labs, first: int) -> list[Hit]:
        """ALT or AST > 5 x ULN, or > 5 x the baseline when the baseline was above its ULN."""
        rule = self.t.transaminases
        out: list[Hit] = []
        for concept in rule.concepts:
            base = self.baseline(labs, concept)
            for day, r in labs.after(concept, first):
                uln, flags = self.limit(r, "high")
                ref, factor, label = uln, rule.factor_uln, f"ULN ({uln:g})" if uln is not None else ""
                if base is not None:
                    b_uln = base[1].high if base[1].high is not None else uln
                    if b_uln is not None and _q(base[1]).above(b_uln) is True:
                        ref, factor, flags = _q(base[1]).value, rule.factor_baseline, ()
                        label = f"the abnormal baseline ({_q(base[1]).value:g} on day {base[0]})"
                if ref is not None and _q(r).above(factor * ref) is True:
                    text = f"{concept.upper()} {_q(r).value:g} U/L > {factor:g} x {label} on day {day}"
                    out.append(Hit((rule.key,), r, day, text, flags))
        return out

    def fibrinogen_hits(self, labs: _Labs, first: int) -> list[Hit]:
        """Fibrinogen < 150 mg/dL, or below the result's own LLN when below_lln is set."""
        rule = self.t.fibrinogen
        out: list[Hit] = []
        for day, r in labs.after("fibrinogen", first):
            q = _q(r)
            if q.below(rule.below_mg_dl) is True:
                limit = f"{rule.below_mg_dl:g} mg/dL"
            elif rule.below_lln and r.low is not None and q.below(r.low) is True:
                limit = f"the LLN ({r.low:g} mg/dL)"
            else:
                continue
            out.append(Hit((rule.key,), r, day, f"fibrinogen {q.value:g} mg/dL < {limit} on day {day}"))
        return out

    def ctcae_grade(self, r: Reading) -> tuple[int | None, tuple[str, ...]]:
        """CTCAE v5.0 grade of a platelet, ANC or hemoglobin value (grading.md 9.2); None when undecidable."""
        flags: tuple[str, ...] = ()
        for band in self.bands[r.concept]:  # most severe first
            threshold = band.below
            if threshold is None:
                threshold, flags = self.limit(r, "low")
                if threshold is None:
                    return None, ()
            below = _q(r).below(threshold)
            if below is None:
                return None, ("lab-bound-straddles-threshold",)
            if below:
                return band.grade, flags
        return 0, flags

    def cytopenia_hits(self, labs: _Labs, first: int) -> list[Hit]:
        """New CTCAE grade >= 3 (no value in the prior 72 h; the last earlier one lower), or worse by >= 1
        grade than every value of the prior 72 h (grading.md 3.3 item 1)."""
        rule = self.t.cytopenia
        prior = timedelta(hours=rule.prior_hours)
        out: list[Hit] = []
        for concept in rule.concepts:
            unit = self.bands[concept][0].unit
            graded = [(d, r, post, *self.ctcae_grade(r)) for d, r, post in labs.series(concept)]
            for i, (day, r, post, g, flags) in enumerate(graded):
                if not post or day < first or g is None:
                    continue
                earlier = [(x, gx) for _, x, _, gx, _ in graded[:i] if gx is not None]
                recent = [gx for x, gx in earlier if r.when.at - x.when.at <= prior]
                value = f"{_q(r).value:g}{'' if unit.startswith('/') else ' '}{unit}"
                what = f"{concept} {value} (CTCAE grade {g}) on day {day}"
                if recent and g >= max(recent) + rule.worsening_grades:
                    text = f"{what}: worse than grade {max(recent)} in the prior {rule.prior_hours:g} h"
                elif not recent and earlier and earlier[-1][1] < rule.new_grade_at_least <= g:
                    text = (f"{what}: new grade >= {rule.new_grade_at_least} "
                            f"(last earlier value grade {earlier[-1][1]})")
                else:
                    continue
                out.append(Hit((rule.key,), r, day, text, flags))
        return out

    # ---- the course -----------------------------------------------------------------------------

    def grade(self, course: Course, crs_days: Sequence[DayGrade],
              crs_episodes: Sequence[Episode]) -> Findings:
        """One GRADED Assessment and Event per screen-positive episode; NOT_ASSESSABLE when the labs cannot
        decide the screen; empty when the screen is negative, or without ferritin and without CRS."""
        labs = _Labs.of(course)
        first = int(self.s["first-screen-day"])
        ferritins = labs.after("ferritin", first)
        if not ferritins:
            return self._no_ferritin(crs_episodes)
        f_hits = [h for day, r in ferritins if (h := self.ferritin_hit(labs, day, r)) is not None]
        hit_ids = {id(h.reading) for h in f_hits}
        negatives = [r for _, r in ferritins if id(r) not in hit_ids]
        plus = [*self.transaminase_hits(labs, first), *self.fibrinogen_hits(labs, first),
                *self.cytopenia_hits(labs, first)]
        near = timedelta(hours=self.s["concurrence-hours"])
        pairs = sorted((Pair(max(f.at, p.at), f.day if f.at >= p.at else p.day, f, p)
                        for f in f_hits for p in plus if abs(f.at - p.at) <= near),
                       key=lambda x: (x.at, x.plus.at))
        timing = _Timing(self.timing_rules, labs, crs_days, crs_episodes)
        assessments: list[Assessment] = []
        events: list[Event] = []
        spans: list[tuple[datetime, datetime | None]] = []  # [start, end) of each episode's readings
        for n, (members, resolved, when) in enumerate(_group(pairs, negatives, timing), start=1):
            a, e = self._episode(course, labs, n, members, resolved, when, crs_days)
            assessments.append(a)
            events.append(e)
            spans.append((min(p.ferritin.at for p in members), resolved.when.at if resolved else None))
        lone = [h for h in f_hits if not any(s <= h.at and (e is None or h.at < e) for s, e in spans)]
        return Findings(tuple(assessments) + self._undecided(labs, lone, timing, first), tuple(events))

    def _no_ferritin(self, crs_episodes: Sequence[Episode]) -> Findings:
        """No ferritin after day 0: not assessable after a CRS; without CRS no screen is expected."""
        if not crs_episodes:
            return Findings()
        ep = crs_episodes[0]
        return Findings(assessments=(Assessment(
            Toxicity.IEC_HS, "iec-hs-grade", State.NOT_ASSESSABLE, None, ep.onset,
            missing=(self.t.inputs["ferritin"],),
            reasons=(f"CRS from day {ep.onset_day} but no ferritin measured after day 0: the IEC-HS screen "
                     "cannot run (grading.md 3.3)",),
            flags=("unverified-criteria",), table=self.table_id),))

    def _undecided(self, labs: _Labs, f_hits: list[Hit], timing: _Timing,
                   first: int) -> tuple[Assessment, ...]:
        """Raised ferritin on a timing-compatible day with no second-criterion lab near it: not assessable."""
        near = timedelta(hours=self.s["concurrence-hours"])
        concepts = (*self.t.transaminases.concepts, "fibrinogen", *self.t.cytopenia.concepts)
        others = [r.when.at for c in concepts for _, r in labs.after(c, first)]
        lone = [h for h in f_hits if not any(abs(h.at - at) <= near for at in others) and timing(h.day)]
        if not lone:
            return ()
        missing = self.t.inputs["second-criterion"].format(hours=f"{self.s['concurrence-hours']:g}")
        return (Assessment(
            Toxicity.IEC_HS, "iec-hs-grade", State.NOT_ASSESSABLE, None, lone[0].at,
            lone[-1].at if lone[-1].at > lone[0].at else None,
            evidence=_unique([h.reading.ref for h in lone]), missing=(missing,),
            reasons=(f"{lone[0].text}, timing compatible, but no second-criterion lab near it",),
            flags=_unique(["unverified-criteria", *(f for h in lone for f in h.flags)]),
            table=self.table_id),)

    def _episode(self, course: Course, labs: _Labs, n: int, members: list[Pair], resolved: Reading | None,
                 when: TimingMatch, crs_days: Sequence[DayGrade]) -> tuple[Assessment, Event]:
        """The Assessment (suggested grade, components, evidence) and the Event of one positive episode."""
        first, last = members[0], members[-1]
        hits = list({id(h.reading): h for p in members for h in (p.ferritin, p.plus)}.values())
        start = course.window(first.day)[0]  # treatment "on or after the screen day" (grading.md 3.3 item 2)
        end = resolved.when.at if resolved is not None else None
        sug = self.suggest(course, labs, start, end)
        span = (min([start, *(h.at for h in hits)]), end or course.window(max(p.day for p in members))[1])
        criteria = _unique([k for h in hits for k in h.criteria] + [when.key])
        flags = [*ALWAYS_FLAGS, *(f for h in hits for f in h.flags), *sug.flags]
        if when.key == "timing-no-crs":
            flags.append("iec-hs-without-crs")
            if not any(d.state == State.GRADED for d in crs_days):
                flags.append("crs-not-assessed")
        firsts: dict[str, str] = {}
        for p in members:
            firsts.setdefault(p.plus.criteria[0], p.plus.text)
        reasons = (first.ferritin.text, *firsts.values(), f"timing: {when.text}", *sug.reasons)
        lab_refs = [h.reading.ref for h in hits] + list(when.refs)
        a = Assessment(Toxicity.IEC_HS, "iec-hs-grade", State.GRADED, sug.grade, first.at,
                       end if end is not None else (last.at if last.at > first.at else None),
                       components=self._components(labs, span, criteria),
                       evidence=_unique(lab_refs + list(sug.evidence)), supporting=sug.supporting,
                       reasons=reasons, flags=_unique(flags), table=self.table_id)
        resolved_day = course.day_of(resolved.when) if resolved is not None else None
        event = Event(Toxicity.IEC_HS, f"iec-hs-{n}", State.GRADED, sug.grade, first.at, first.day,
                      abatement=end, resolved_day=resolved_day, assessment=a,
                      details=(("screen", "positive"),), evidence=_unique(lab_refs))
        return a, event

    def _components(self, labs: _Labs, span: tuple[datetime, datetime],
                    criteria: tuple[str, ...]) -> tuple[Component, ...]:
        """Peak ferritin (and its ratio to the ULN and the baseline), peak ALT/AST, lowest fibrinogen over the
        episode, whether cytopenia counted, and every screen criterion met (its table row key)."""
        def within(concept: str) -> list[Reading]:
            return [r for _, r in labs.post.get(concept, []) if span[0] <= r.when.at < span[1]]

        out: list[Component] = []
        if ferritin := within("ferritin"):
            peak = max(ferritin, key=lambda r: _q(r).value)
            top = _q(peak).value
            out.append(Component("ferritin", "integer", round(top)))
            uln, _ = self.limit(peak, "high")
            if uln:
                out.append(Component("ferritin-ratio", "decimal", round(top / uln, 2)))
            base = self.baseline(labs, "ferritin")
            if base is not None and _q(base[1]).value > 0:
                out.append(Component("ferritin-baseline-ratio", "decimal", round(top / _q(base[1]).value, 2)))
        for concept in self.t.transaminases.concepts:
            if values := [_q(r).value for r in within(concept)]:
                out.append(Component(concept, "integer", round(max(values))))
        if values := [_q(r).value for r in within("fibrinogen")]:
            out.append(Component("fibrinogen", "integer", round(min(values))))
        out.append(Component("cytopenia", "boolean", self.t.cytopenia.key in criteria))
        out.extend(Component("screen-criterion", "iec-hs-screen-criterion", k) for k in criteria)
        return tuple(out)

    # ---- suggested grade (grading.md 3.2, 3.3 item 2, 8.2) ---------------------------------------

    def suggest(self, course: Course, labs: _Labs, start: datetime, end: datetime | None) -> Suggestion:
        """Grade 1, raised by the highest grade rule met in [start, end); treatment and support count when
        new (absent in the support-lookback-hours before start). Grade 5 is never suggested (decision 2)."""
        lookback = start - timedelta(hours=self.s["support-lookback-hours"])
        grade = self.screen_grade
        reasons: list[str] = []
        evidence: list[str] = []
        supporting: list[str] = []
        flags: list[str] = []
        for rule in sorted(self.t.grade_rules, key=lambda r: r.grade):
            if rule.kind == "drug":
                m = self._drug_rule(course, rule, lookback, start, end)
            elif rule.kind == "oxygen":
                m = self._oxygen_rule(course, rule, lookback, start, end)
            elif rule.kind == "creatinine":
                m = self._creatinine_rule(labs, rule, lookback, start, end)
            else:
                continue
            flags.extend(m.flags)
            if m.text:
                grade = max(grade, rule.grade)
                reasons.append(f"{m.text}: suggests grade >= {rule.grade} ({rule.key})")
                (supporting if rule.kind == "drug" else evidence).extend(m.refs)
        if grade == self.screen_grade:
            reasons.append("no IEC-HS-directed treatment or new organ support found: "
                           f"suggested grade {grade}")
        dead = course.patient.deceased
        if dead is not None and dead.at >= start:
            flags.append("death-attribution-unconfirmed")
            reasons.append(f"death recorded on day {course.day_of(dead)}: grade 5 only from a "
                           "clinician-entered cause of death (grading.md decision 2)")
        return Suggestion(grade, tuple(reasons), _unique(evidence), _unique(supporting), _unique(flags))

    def _drug_rule(self, course: Course, rule: GradeRule, lookback: datetime, start: datetime,
                   end: datetime | None) -> RuleMatch:
        """Agents of the rule first given on or after the screen day: not as prophylaxis, not by an excluded
        route (intrathecal), and not already given in the lookback before it."""
        match = [d for d in course.drugs if (d.agent in rule.agents or d.role in rule.roles)
                 and d.intent != "prophylaxis" and (d.route or "") not in rule.exclude_routes]
        started = [d for d in match if _inside(d.start.at, start, end)]
        horizon = course.patient.horizon
        before = {d.agent for d in match if d.start.at < start and _last_at(d, horizon) >= lookback}
        new = [d for d in started if d.agent not in before]
        flags = ["treatment-or-support-before-screen"] if len(new) < len(started) else []
        if not new:
            return RuleMatch(flags=tuple(flags))
        if rule.flag:
            flags.append(rule.flag)
        agents = ", ".join(_unique([d.agent for d in new]))
        return RuleMatch((*(d.ref for d in new),), f"{agents} started from day {course.day_of(new[0].start)}",
                         tuple(flags))

    def _oxygen_rule(self, course: Course, rule: GradeRule, lookback: datetime, start: datetime,
                     end: datetime | None) -> RuleMatch:
        """New oxygen support by one of the rule's devices (a flow with no device is a nasal cannula); it is
        not new when the same or a higher tier was in use in the lookback before the screen day."""
        same_or_higher = {d for r in self.t.grade_rules if r.kind == "oxygen" and r.grade >= rule.grade
                          for d in r.devices}
        support = _oxygen_support(course)
        now = [(at, dev, r) for at, dev, r in support if dev in rule.devices and _inside(at, start, end)]
        if not now:
            return RuleMatch()
        if any(dev in same_or_higher and lookback <= at < start for at, dev, _ in support):
            return RuleMatch(flags=("treatment-or-support-before-screen",))
        _, device, first = now[0]
        return RuleMatch((*(r.ref for _, _, r in now),), f"new {device} on day {course.day_of(first.when)}")

    def _creatinine_rule(self, labs: _Labs, rule: GradeRule, lookback: datetime, start: datetime,
                         end: datetime | None) -> RuleMatch:
        """A new creatinine rise above factor x the pre-infusion baseline (not already above it before)."""
        series = labs.post.get("creatinine", [])
        base = self.baseline(labs, "creatinine")
        if base is None:
            return RuleMatch(flags=("creatinine-baseline-missing",) if series else ())
        b = _q(base[1]).value
        high = [(d, r) for d, r in series if _q(r).above((rule.factor or 0) * b) is True]
        now = [(d, r) for d, r in high if _inside(r.when.at, start, end)]
        if not now:
            return RuleMatch()
        if any(lookback <= r.when.at < start for _, r in high):
            return RuleMatch(flags=("treatment-or-support-before-screen",))
        d, r = now[0]
        return RuleMatch((*(x.ref for _, x in now),),
                         f"creatinine {_q(r).value:g} mg/dL on day {d} > {rule.factor:g} x baseline ({b:g})")


def _inside(at: datetime, start: datetime, end: datetime | None) -> bool:
    return start <= at and (end is None or at < end)


def _last_at(d: DrugAdmin, horizon: datetime | None) -> datetime:
    """When an administration stops running (an effectiveDateTime runs at that moment only)."""
    if d.instant:
        return d.start.at
    if d.end is not None:
        return d.end.at
    return horizon if horizon is not None and horizon > d.start.at else d.start.at


def _oxygen_support(course: Course) -> list[tuple[datetime, str, Reading]]:
    """(time, device, reading) of every oxygen record; a flow without a device at that time is a cannula."""
    devices = [(r.when.at, str(r.value), r) for _, r in course.readings if r.concept == "oxygen-device"]
    times = {at for at, _, _ in devices}
    flows = [(r.when.at, "nasal-cannula", r) for _, r in course.readings
             if r.concept == "oxygen-flow" and isinstance(r.value, Quantity) and r.value.value > 0
             and r.when.at not in times]
    return sorted(devices + flows, key=lambda x: x[0])


def _group(pairs: list[Pair], negatives: list[Reading], timing: _Timing
           ) -> list[tuple[list[Pair], Reading | None, TimingMatch]]:
    """Screen-positive episodes: opened by the first pair on a timing-compatible day, joined by every later
    pair whose ferritin came before the first later ferritin that no longer meets the key finding (which
    resolves the episode). A new episode needs a new timing-compatible pair after that."""
    out: list[tuple[list[Pair], Reading | None, TimingMatch]] = []
    floor: datetime | None = None
    while True:
        cands = [p for p in pairs if floor is None or p.ferritin.at > floor]
        opener = next(((p, t) for p in cands if (t := timing(p.day)) is not None), None)
        if opener is None:
            return out
        first, when = opener
        last_f = first.ferritin.at
        while True:  # grow until no member's ferritin is later than the last one seen
            resolved = next((r for r in negatives if r.when.at > last_f), None)
            members = [p for p in cands if p.at >= first.at
                       and (resolved is None or p.ferritin.at < resolved.when.at)]
            newest = max(p.ferritin.at for p in members)
            if newest == last_f:
                break
            last_f = newest
        out.append((members, resolved, when))
        if resolved is None:
            return out
        floor = resolved.when.at
