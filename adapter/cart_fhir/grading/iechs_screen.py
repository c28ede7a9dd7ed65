"""IEC-HS screen criteria (grading.md 3.1, 3.3 item 1): a course's labs and the readings meeting each."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, cast

from ..model import Quantity, Reading
from ..timeline import Course
from .iechs_table import CtcaeBand, IecHsTable, SettingKey

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


def _q(r: Reading) -> Quantity:
    return cast(Quantity, r.value)  # _Labs keeps only readings with a Quantity value


class _Labs:
    """Quantity readings by concept, as (day, reading) in time order: at/after the infusion (`post`), before
    it (`pre`). Built per concept on first use from the course's per-concept index: the screen asks for
    about ten concepts, so this no longer walks every reading of the course (~780 at 30 days)."""

    __slots__ = ("_course", "_post", "_pre")

    def __init__(self, course: Course) -> None:
        self._course = course
        self._post: dict[str, list[tuple[int, Reading]]] = {}
        self._pre: dict[str, list[tuple[int, Reading]]] = {}

    @classmethod
    def of(cls, course: Course) -> _Labs:
        return cls(course)

    def post(self, concept: str) -> list[tuple[int, Reading]]:
        found = self._post.get(concept)
        if found is None:
            found = self._post[concept] = _quantities(self._course.of(concept))
        return found

    def pre(self, concept: str) -> list[tuple[int, Reading]]:
        found = self._pre.get(concept)
        if found is None:
            found = self._pre[concept] = _quantities(self._course.pre_of(concept))
        return found

    def after(self, concept: str, first_day: int) -> list[tuple[int, Reading]]:
        return [(d, r) for d, r in self.post(concept) if d >= first_day]

    def series(self, concept: str) -> list[tuple[int, Reading, bool]]:
        """Every reading of a concept in time order; the flag says it is at/after the infusion."""
        return ([(d, r, False) for d, r in self.pre(concept)]
                + [(d, r, True) for d, r in self.post(concept)])


def _quantities(pairs: list[tuple[int, Reading]]) -> list[tuple[int, Reading]]:
    return [(d, r) for d, r in pairs if isinstance(r.value, Quantity)]


class ScreenCriteria:
    """The screen criteria and the reference limits they use; part of IecHsGrader, whose constructor
    sets the table and the lookups declared here."""

    t: IecHsTable
    s: dict[SettingKey, float]
    bands: dict[str, list[CtcaeBand]]
    defaults: dict[tuple[str, str], float]

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
        pre = [(d, r) for d, r in labs.pre(concept) if d >= -lookback]
        if pre:
            return pre[-1]
        return next(((d, r) for d, r in labs.post(concept) if d == 0), None)

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
