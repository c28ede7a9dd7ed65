"""Hypogammaglobulinemia after CAR-T, an IAGO long-term effect (Rejeski, Hill, Dahiya, Jain, Nat Med 2025;
grading.md 6.4): serum IgG at or below the severe threshold of Hill et al., Blood Rev 2019;38:100596 (as cited
in PMC11272770 Table 1: IgG <= 400 mg/dL), immunoglobulin replacement, onset, duration and the infections of
the same period.

Combining rules (threshold and conventions are rows of mappings/hypogammaglobulinemia.yaml):
- The effect opens on the first IgG <= the threshold after `from_day`; it ends on the first later IgG above the
  threshold that no immunoglobulin dose in the `replacement_masks_days` before explains (then resolved).
  A later low IgG opens a new period. A bound that straddles the threshold (e.g. "<500") decides nothing.
- Replacement: any immune-globulin administration from day 0 to the end of the period (or of follow-up).
- Infections (the infection grader's events: Conditions, positive cultures) with onset inside the period are
  linked; two or more are flagged recurrent-infections, one of CTCAE grade >= 3 serious-infection.
- No grade applies (IAGO reports the effect, not a CTCAE grade): the Observation carries its components.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from ..model import DrugAdmin, Quantity, Reading
from ..tables import Row, Table
from ..timeline import Course
from .periods import low_periods
from .result import Assessment, Component, Event, Findings, State, Toxicity, not_measured

HYPOGAMMA = Toxicity("hypogammaglobulinemia")
CODE = "hypogammaglobulinemia-iago"


class SevereRow(Row, frozen=True, kw_only=True):
    max_mg_dl: float
    verified: bool
    source: str


class HypogammaSettings(Row, frozen=True, kw_only=True):
    from_day: int
    replacement_agents: tuple[str, ...]
    replacement_masks_days: int
    verified: bool
    source: str


class HypogammaTable(Table, frozen=True, kw_only=True):
    severe: SevereRow
    settings: HypogammaSettings


@dataclass(frozen=True, slots=True)
class _Period:
    low: list[tuple[int, Reading]]
    end: tuple[int, Reading] | None  # the recovering IgG, if any


class HypogammaGrader:
    def __init__(self, table: HypogammaTable) -> None:
        self.t = table
        self.label = f"{table.table} v{table.version}"

    def grade(self, course: Course, infections: Sequence[Event] = ()) -> Findings:
        """`infections`: the infection grader's events of the course (linked by onset within a period)."""
        s, limit = self.t.settings, self.t.severe.max_mg_dl
        masks = timedelta(days=s.replacement_masks_days)
        doses = [d for d in course.drugs if d.agent in s.replacement_agents and course.day_of(d.start) >= 0]

        def at_most(q: Quantity) -> bool | None:
            above = q.above(limit)
            return None if above is None else not above

        def recovered(r: Reading) -> bool:  # an IgG raised by replacement is not recovery
            return not any(r.when.at - masks <= d.start.at <= r.when.at for d in doses)

        periods = [_Period(low, end) for low, end in low_periods(course.of("igg"), s.from_day, at_most, recovered)]
        if not any(day >= s.from_day for day, _ in course.of("igg")):
            # Never a silent "no hypogammaglobulinemia": without an IgG the effect cannot be assessed.
            return Findings((not_measured(course.infusion.when.at, HYPOGAMMA, CODE, self.label,
                                          f"serum IgG (LOINC 2465-3) from day {s.from_day}"),))
        events = [self._event(course, n, p, doses, infections) for n, p in enumerate(periods, 1)]
        return Findings(tuple(e.assessment for e in events if e.assessment is not None), tuple(events))

    def _event(self, course: Course, n: int, p: _Period, doses: list[DrugAdmin], all_infections: Sequence[Event]
               ) -> Event:
        limit = self.t.severe.max_mg_dl
        (day0, first), (last_day, _) = p.low[0], p.low[-1]
        nadir_day, nadir = min(p.low, key=lambda dr: dr[1].value.value if isinstance(dr[1].value, Quantity) else 0)
        nadir_value = nadir.value.value if isinstance(nadir.value, Quantity) else 0.0
        end_day = p.end[0] if p.end else None
        end_at = p.end[1].when.at if p.end else None
        given = [d for d in doses if end_at is None or d.start.at <= end_at]
        infections = [e for e in all_infections if e.onset_day >= day0 and (end_day is None or e.onset_day <= end_day)]
        duration = (end_day if end_day is not None else last_day) - day0
        reasons = [(f"IgG {nadir_value:g} mg/dL on day {nadir_day} (nadir); IgG <= {limit:g} mg/dL from day {day0} "
                   f"(row {self.t.severe.id}: {self.t.severe.source})")]
        reasons.append(f"resolved: IgG {p.end[1].value.value:g} mg/dL on day {end_day}"  # type: ignore[union-attr]
                       if p.end else f"not resolved by the last IgG (day {last_day})")
        if given:
            reasons.append(f"immunoglobulin replacement: {len(given)} administration(s) from day "
                           f"{course.day_of(given[0].start)}")
        if infections:
            reasons.append("infections in the same period: " + ", ".join(
                f"{_infection_name(e)} day {e.onset_day}, grade {e.max_grade if e.max_grade is not None else 'n/a'}"
                f" ({e.condition_ref or e.key})" for e in infections))
        flags = ["attribution-unconfirmed"]
        if len(infections) >= 2:
            flags.append("recurrent-infections")
        if any((e.max_grade or 0) >= 3 for e in infections):
            flags.append("serious-infection")  # CTCAE grade >= 3 (IV treatment, organ support)
        comps = (Component("igg-nadir", "decimal", round(nadir_value, 1)),
                 Component("igg-replacement", "boolean", bool(given)),
                 Component("duration-days", "integer", duration),
                 Component("linked-infections", "integer", len(infections)))
        refs = tuple(dict.fromkeys([r.ref for _, r in p.low] + ([p.end[1].ref] if p.end else [])))
        linked = tuple(dict.fromkeys(e.condition_ref or e.key for e in infections))
        a = Assessment(HYPOGAMMA, CODE, State.GRADED, None, first.when.at, end_at, components=comps,
                       evidence=refs + tuple(r for r in linked if r not in refs),
                       supporting=tuple(d.ref for d in given), reasons=tuple(reasons), flags=tuple(flags),
                       table=self.label)
        return Event(HYPOGAMMA, f"period-{n}", State.GRADED, None, first.when.at, day0, abatement=end_at,
                     resolved_day=end_day, assessment=a,
                     details=(("nadir_igg_mg_dl", round(nadir_value, 1)), ("replacement", bool(given)),
                              ("duration_days", duration),
                              ("infections", list(linked))),
                     evidence=refs)


def _infection_name(e: Event) -> str:
    return e.term[2] if e.term else str(e.detail("type") or "infection")
