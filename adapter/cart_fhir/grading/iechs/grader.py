"""IecHsGrader: screens a course and builds the Assessments and Events (rules in the package __init__)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

from ...model import Reading
from ...timeline import Course
from ..result import Assessment, Component, DayGrade, Episode, Event, Findings, State, Toxicity
from .labs import Hit, Labs, Pair, baseline, limit, quantity
from .screen import cytopenia_hits, ferritin_hit, fibrinogen_hits, transaminase_hits
from .suggest import suggest, unique
from .table import IecHsTable, Lookups, check_table
from .timing import Timing, TimingMatch, group_episodes

ALWAYS_FLAGS = ("clinician-confirmation-required", "attribution-unconfirmed", "unverified-criteria")


class IecHsGrader:
    """Screens one infusion course for IEC-HS and suggests a provisional grade per screen-positive episode."""

    def __init__(self, table: IecHsTable, oxygen_devices: Collection[str]) -> None:
        """`oxygen_devices`: the oxygen-delivery codes of concepts.yaml, which the table's rules must name."""
        self.t = table
        check_table(self.t, oxygen_devices)
        self.lk = Lookups.of(self.t)
        self.s = self.lk.settings

    @property
    def table_id(self) -> str:
        return f"{self.t.table} v{self.t.version}"

    # ---- the course -----------------------------------------------------------------------------

    def grade(self, course: Course, crs_days: Sequence[DayGrade],
              crs_episodes: Sequence[Episode]) -> Findings:
        """One GRADED Assessment and Event per screen-positive episode; NOT_ASSESSABLE when the labs cannot
        decide the screen; empty when the screen is negative, or without ferritin and without CRS."""
        labs = Labs(course)
        first = int(self.s["first-screen-day"])
        ferritins = labs.after("ferritin", first)
        if not ferritins:
            return self._no_ferritin(crs_episodes)
        f_hits = [h for day, r in ferritins if (h := ferritin_hit(self.lk, labs, day, r)) is not None]
        hit_ids = {id(h.reading) for h in f_hits}
        negatives = [r for _, r in ferritins if id(r) not in hit_ids]
        plus = [*transaminase_hits(self.lk, labs, first), *fibrinogen_hits(self.lk, labs, first),
                *cytopenia_hits(self.lk, labs, first)]
        near = timedelta(hours=self.s["concurrence-hours"])
        pairs = sorted((Pair(max(f.at, p.at), f.day if f.at >= p.at else p.day, f, p)
                        for f in f_hits for p in plus if abs(f.at - p.at) <= near),
                       key=lambda x: (x.at, x.plus.at))
        timing = Timing(self.lk.timing, labs, crs_days, crs_episodes)
        assessments: list[Assessment] = []
        events: list[Event] = []
        spans: list[tuple[datetime, datetime | None]] = []  # [start, end) of each episode's readings
        for n, (members, resolved, when) in enumerate(group_episodes(pairs, negatives, timing), start=1):
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
            reasons=((f"CRS from day {ep.onset_day} but no ferritin measured after day 0: the IEC-HS screen "
                     "cannot run (grading.md 3.3)"),),
            flags=("unverified-criteria",), table=self.table_id),))

    def _undecided(self, labs: Labs, f_hits: list[Hit], timing: Timing,
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
            evidence=unique([h.reading.ref for h in lone]), missing=(missing,),
            reasons=(f"{lone[0].text}, timing compatible, but no second-criterion lab near it",),
            flags=unique(["unverified-criteria", *(f for h in lone for f in h.flags)]),
            table=self.table_id),)

    def _episode(self, course: Course, labs: Labs, n: int, members: list[Pair], resolved: Reading | None,
                 when: TimingMatch, crs_days: Sequence[DayGrade]) -> tuple[Assessment, Event]:
        """The Assessment (suggested grade, components, evidence) and the Event of one positive episode."""
        first, last = members[0], members[-1]
        hits = list({id(h.reading): h for p in members for h in (p.ferritin, p.plus)}.values())
        start = course.window(first.day)[0]  # treatment "on or after the screen day" (grading.md 3.3 item 2)
        end = resolved.when.at if resolved is not None else None
        sug = suggest(self.lk, course, labs, start, end)
        span = (min([start, *(h.at for h in hits)]), end or course.window(max(p.day for p in members))[1])
        criteria = unique([k for h in hits for k in h.criteria] + [when.key])
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
                       evidence=unique(lab_refs + list(sug.evidence)), supporting=sug.supporting,
                       reasons=reasons, flags=unique(flags), table=self.table_id)
        resolved_day = course.day_of(resolved.when) if resolved is not None else None
        event = Event(Toxicity.IEC_HS, f"iec-hs-{n}", State.GRADED, sug.grade, first.at, first.day,
                      abatement=end, resolved_day=resolved_day, assessment=a,
                      details=(("screen", "positive"),), evidence=unique(lab_refs))
        return a, event

    def _components(self, labs: Labs, span: tuple[datetime, datetime],
                    criteria: tuple[str, ...]) -> tuple[Component, ...]:
        """Peak ferritin (and its ratio to the ULN and the baseline), peak ALT/AST, lowest fibrinogen over the
        episode, whether cytopenia counted, and every screen criterion met (its table row key)."""
        def within(concept: str) -> list[Reading]:
            return [r for _, r in labs.post(concept) if span[0] <= r.when.at < span[1]]

        out: list[Component] = []
        if ferritin := within("ferritin"):
            peak = max(ferritin, key=lambda r: quantity(r).value)
            top = quantity(peak).value
            out.append(Component("ferritin", "integer", round(top)))
            uln, _ = limit(self.lk, peak, "high")
            if uln:
                out.append(Component("ferritin-ratio", "decimal", round(top / uln, 2)))
            base = baseline(self.lk, labs, "ferritin")
            if base is not None and quantity(base[1]).value > 0:
                ratio = top / quantity(base[1]).value
                out.append(Component("ferritin-baseline-ratio", "decimal", round(ratio, 2)))
        for concept in self.t.transaminases.concepts:
            if values := [quantity(r).value for r in within(concept)]:
                out.append(Component(concept, "integer", round(max(values))))
        if values := [quantity(r).value for r in within("fibrinogen")]:
            out.append(Component("fibrinogen", "integer", round(min(values))))
        out.append(Component("cytopenia", "boolean", self.t.cytopenia.key in criteria))
        out.extend(Component("screen-criterion", "iec-hs-screen-criterion", k) for k in criteria)
        return tuple(out)
