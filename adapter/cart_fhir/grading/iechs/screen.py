"""IEC-HS screen criteria (grading.md 3.1, 3.3 item 1): the readings meeting the key finding (ferritin) and
each second criterion (transaminases, fibrinogen, cytopenia by CTCAE v5.0 grade, grading.md 9.2)."""

from __future__ import annotations

from datetime import datetime, timedelta

from ...model import Reading
from .labs import Hit, Labs, baseline, limit, quantity
from .table import CytopeniaRule, Lookups


def ferritin_hit(lk: Lookups, labs: Labs, day: int, r: Reading) -> Hit | None:
    """Key finding: ferritin > factor x ULN, > factor x baseline, or (if enabled) doubling in 48 h."""
    q = quantity(r)
    uln, flags = limit(lk, r, "high")
    base = baseline(lk, labs, "ferritin")
    base_day = base[0] if base is not None else 0
    met: list[tuple[str, str]] = []
    for rule in lk.t.ferritin_rules:
        ref: float | None = None
        if not rule.enabled:
            continue
        if rule.key == "ferritin-uln":
            ref = uln
        elif rule.key == "ferritin-baseline" and base is not None and base[1] is not r:
            ref = quantity(base[1]).value
        elif rule.key == "ferritin-doubling":
            span = timedelta(hours=rule.within_hours or 0)
            earlier = [quantity(x).value for _, x, _ in labs.series("ferritin")
                       if timedelta(0) < r.when.at - x.when.at <= span]
            if earlier:
                ref = min(earlier)
        if ref is None or q.above(rule.factor * ref) is not True:
            continue
        if rule.require_above_uln and (uln is None or q.above(uln) is not True):
            continue
        # The text only for a rule met (most ferritins meet none).
        if rule.key == "ferritin-uln":
            label = f"ULN ({ref:g})"
        elif rule.key == "ferritin-baseline":
            label = f"baseline ({ref:g} on day {base_day})"
        else:
            label = f"the lowest value of the previous {rule.within_hours:g} h ({ref:g})"
        met.append((rule.key, f"> {rule.factor:g} x {label}"))
    if not met:
        return None
    text = f"ferritin {q.value:g} ng/mL {' and '.join(m[1] for m in met)} on day {day}"
    return Hit(tuple(k for k, _ in met), r, day, text, flags)


def transaminase_hits(lk: Lookups, labs: Labs, first: int) -> list[Hit]:
    """ALT or AST > 5 x ULN, or > 5 x the baseline when the baseline was above its ULN."""
    rule = lk.t.transaminases
    out: list[Hit] = []
    for concept in rule.concepts:
        base = baseline(lk, labs, concept)
        for day, r in labs.after(concept, first):
            uln, flags = limit(lk, r, "high")
            ref, factor, label = uln, rule.factor_uln, f"ULN ({uln:g})" if uln is not None else ""
            if base is not None:
                b_uln = base[1].high if base[1].high is not None else uln
                if b_uln is not None and quantity(base[1]).above(b_uln) is True:
                    ref, factor, flags = quantity(base[1]).value, rule.factor_baseline, ()
                    label = f"the abnormal baseline ({quantity(base[1]).value:g} on day {base[0]})"
            if ref is not None and quantity(r).above(factor * ref) is True:
                text = f"{concept.upper()} {quantity(r).value:g} U/L > {factor:g} x {label} on day {day}"
                out.append(Hit((rule.key,), r, day, text, flags))
    return out


def fibrinogen_hits(lk: Lookups, labs: Labs, first: int) -> list[Hit]:
    """Fibrinogen < 150 mg/dL, or below the result's own LLN when below_lln is set."""
    rule = lk.t.fibrinogen
    out: list[Hit] = []
    for day, r in labs.after("fibrinogen", first):
        q = quantity(r)
        if q.below(rule.below_mg_dl) is True:
            limit = f"{rule.below_mg_dl:g} mg/dL"
        elif rule.below_lln and r.low is not None and q.below(r.low) is True:
            limit = f"the LLN ({r.low:g} mg/dL)"
        else:
            continue
        out.append(Hit((rule.key,), r, day, f"fibrinogen {q.value:g} mg/dL < {limit} on day {day}"))
    return out


def ctcae_grade(lk: Lookups, r: Reading) -> tuple[int | None, tuple[str, ...]]:
    """CTCAE v5.0 grade of a platelet, ANC or hemoglobin value (grading.md 9.2); None when undecidable."""
    flags: tuple[str, ...] = ()
    q = quantity(r)
    for band in lk.bands[r.concept]:  # most severe first
        threshold = band.below
        if threshold is None:
            threshold, flags = limit(lk, r, "low")
            if threshold is None:
                return None, ()
        below = q.below(threshold)
        if below is None:
            return None, ("lab-bound-straddles-threshold",)
        if below:
            return band.grade, flags
    return 0, flags


def cytopenia_hits(lk: Lookups, labs: Labs, first: int) -> list[Hit]:
    """New CTCAE grade >= 3 (no value in the prior 72 h; the last earlier one lower), or worse by >= 1
    grade than every value of the prior 72 h (grading.md 3.3 item 1)."""
    rule = lk.t.cytopenia
    prior = timedelta(hours=rule.prior_hours)
    out: list[Hit] = []
    for concept in rule.concepts:
        unit = lk.bands[concept][0].unit
        graded = [(d, r, r.when.at, post, *ctcae_grade(lk, r)) for d, r, post in labs.series(concept)]
        # The graded readings before the current one (their times and grades), kept as we go (was: rebuilt per
        # reading, quadratic). In time order (as series() gives them) those of the prior 72 h are a suffix: a
        # moving start finds it.
        times: list[datetime] = []
        grades: list[int] = []
        start = 0
        ordered = all(a[2] <= b[2] for a, b in zip(graded, graded[1:], strict=False))
        for day, r, at, post, g, flags in graded:
            if g is None:
                continue
            if post and day >= first:
                if ordered:
                    while start < len(times) and at - times[start] > prior:
                        start += 1
                    recent = grades[start:]
                else:
                    recent = [gx for t, gx in zip(times, grades, strict=True) if at - t <= prior]
                why = _cytopenia_why(rule, g, recent, grades[-1] if grades else None)
                if why:  # the text is built for hits only (most readings are not one)
                    value = f"{quantity(r).value:g}{'' if unit.startswith('/') else ' '}{unit}"
                    out.append(Hit((rule.key,), r, day, f"{concept} {value} (CTCAE grade {g}) on day {day}: {why}",
                                   flags))
            times.append(at)
            grades.append(g)
    return out


def _cytopenia_why(rule: CytopeniaRule, g: int, recent: list[int], last: int | None) -> str | None:
    """Why a reading of CTCAE grade g is a cytopenia hit, or None."""
    if recent and g >= max(recent) + rule.worsening_grades:
        return f"worse than grade {max(recent)} in the prior {rule.prior_hours:g} h"
    if not recent and last is not None and last < rule.new_grade_at_least <= g:
        return f"new grade >= {rule.new_grade_at_least} (last earlier value grade {last})"
    return None
