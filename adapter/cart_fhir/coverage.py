"""The coverage gate: which inputs the registered graders read had no usable reading in days 0-14 (issue 13 item 1).

"No CRS" and "could not read your temperatures" must not look alike: per infusion, each group of
mappings/coverage.yaml that a registered grader reads (GraderSpec.concepts) is looked up in the course's
readings of the window. Pure: facts in, names of what is missing out; the run report, the summary rows, the
CLI's `warning:` line and `--require` read the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import ConfigError
from .grading.registry import GraderSpec
from .tables import Tables
from .timeline import Course


@dataclass(frozen=True, slots=True)
class Need:
    """An input the graders read: a coverage group (any of its concepts will do), or one concept."""

    name: str
    concepts: frozenset[str]
    graders: tuple[str, ...]  # the registered graders that read it
    routine: bool = True  # charted for every patient: a run where most infusions lack it is a warning


class CoverageGate:
    """Built once per engine from the coverage table and the registered graders."""

    def __init__(self, tables: Tables, specs: Sequence[GraderSpec]) -> None:
        cov = tables.coverage
        self.from_day, self.to_day = cov.from_day, cov.to_day
        read_by: dict[str, list[str]] = {}
        for spec in specs:
            for concept in spec.concepts:
                read_by.setdefault(concept, []).append(spec.name)
        grouped = {c for r in cov.rows for c in r.concepts} | set(cov.events)
        loose = sorted(set(read_by) - grouped)
        if loose:  # a new grader's concept must be placed: a gap in it would otherwise pass unnoticed
            raise ConfigError(f"coverage.yaml: concepts {loose} are read by registered graders but are in no "
                              "group and not in `events`")
        self.needs: tuple[Need, ...] = tuple(
            Need(r.id, frozenset(r.concepts), _graders(r.concepts, read_by), r.routine)
            for r in cov.rows if any(c in read_by for c in r.concepts))
        self.concepts: tuple[str, ...] = tuple(c for c in read_by if c not in cov.events)
        self._names: dict[str, Need] = {}
        for r in cov.rows:
            need = next((n for n in self.needs if n.name == r.id), None)
            if need is not None:
                self._names.update((name, need) for name in (r.id, *r.aliases))
        for concept, graders in read_by.items():
            if concept not in cov.events:
                self._names.setdefault(concept, Need(concept, frozenset({concept}), tuple(graders)))

    def resolve(self, names: Iterable[str]) -> tuple[Need, ...]:
        """--require names (group ids, aliases, concept names) as needs; ConfigError naming the known ones."""
        out: list[Need] = []
        for name in names:
            need = self._names.get(name.strip().lower())
            if need is None:
                raise ConfigError(f"--require: unknown input {name!r}; known: {', '.join(sorted(self._names))}")
            out.append(need)
        return tuple(dict.fromkeys(out))

    def seen(self, course: Course) -> frozenset[str]:
        """The concepts with at least one reading in the window (day 0 counts from the infusion on)."""
        lo, hi = self.from_day, self.to_day
        # From the course's concept index (the graders build it anyway): a concept is seen at its first
        # reading in the window, instead of testing every reading of the course (that scan took 0.013 s
        # under cProfile for 200 patients; the pipeline asks twice per course with a gap).
        return frozenset(concept for index in (course.by_concept(), course.pre_by_concept())
                         for concept, pairs in index.items() if any(lo <= day <= hi for day, _ in pairs))

    def missing(self, course: Course) -> tuple[str, ...] | None:
        """The needs without a reading in the window, in table order; None when the course has no reading
        in the window at all (nothing to compare with: reported as such, not as a list of every input)."""
        seen = self.seen(course)
        if not seen:
            return None
        return tuple(n.name for n in self.needs if not n.concepts & seen)

    def missing_concepts(self, course: Course) -> tuple[str, ...]:
        """Each concept the graders read (events aside) without a reading in the window (--require CONCEPT)."""
        seen = self.seen(course)
        return tuple(c for c in self.concepts if c not in seen)

    def is_group(self, need: Need) -> bool:
        return any(n is need for n in self.needs)

    def unmet(self, course: Course, required: Iterable[Need]) -> list[Need]:
        seen = self.seen(course)
        return [n for n in required if not n.concepts & seen]

    @property
    def routine(self) -> frozenset[str]:
        return frozenset(n.name for n in self.needs if n.routine)

    @property
    def window(self) -> str:
        return f"days {self.from_day}-{self.to_day}"


def _graders(concepts: Iterable[str], read_by: dict[str, list[str]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(g for c in concepts for g in read_by.get(c, ())))
