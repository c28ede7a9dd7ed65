"""IEC-HS lab facts: a course's Quantity readings by concept, the readings meeting a criterion, and the
reference limits and baselines the criteria compare against (grading.md 3.1, 3.3 item 1)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, cast

from ...model import Quantity, Reading
from ...timeline import Course
from .table import Lookups


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


def quantity(r: Reading) -> Quantity:
    return cast(Quantity, r.value)  # Labs keeps only readings with a Quantity value


class Labs:
    """Quantity readings by concept, as (day, reading) in time order: at/after the infusion (`post`), before
    it (`pre`). Built per concept on first use from the course's per-concept index: the screen asks for
    about ten concepts, so this no longer walks every reading of the course (~780 at 30 days)."""

    __slots__ = ("_baselines", "_course", "_post", "_pre")

    def __init__(self, course: Course) -> None:
        self._course = course
        self._post: dict[str, list[tuple[int, Reading]]] = {}
        self._pre: dict[str, list[tuple[int, Reading]]] = {}
        self._baselines: dict[str, tuple[int, Reading] | None] = {}  # baseline() by concept

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


# ---- reference limits and baselines ---------------------------------------------------------------

def limit(lk: Lookups, r: Reading, bound: Literal["low", "high"]) -> tuple[float | None, tuple[str, ...]]:
    """The result's own LLN/ULN, else the table default (flagged default-lln-/default-uln-<concept>)."""
    own = r.high if bound == "high" else r.low
    if own is not None:
        return own, ()
    value = lk.defaults.get((r.concept, bound))
    flag = f"default-{'uln' if bound == 'high' else 'lln'}-{r.concept}"
    return value, ((flag,) if value is not None else ())


def baseline(lk: Lookups, labs: Labs, concept: str) -> tuple[int, Reading] | None:
    """The last value at or before the infusion within baseline-lookback-days, else the first of day 0."""
    known = labs._baselines
    if concept not in known:  # once per course and concept: the screen asks again for each reading it tests
        lookback = lk.settings["baseline-lookback-days"]
        pre = [(d, r) for d, r in labs.pre(concept) if d >= -lookback]
        known[concept] = pre[-1] if pre else next(((d, r) for d, r in labs.post(concept) if d == 0), None)
    return known[concept]
