"""Combining the CRS domains of a day (ASTCT 2019, Lee et al. 2019, CRS grading table; grading.md 1.2 R3)."""

from __future__ import annotations

from datetime import datetime

from ..result import State
from .finding import Finding, Gate, Outcome

NOT_CRS = "hypotension/hypoxia without fever and outside a CRS episode: not CRS (ASTCT R1)"


def combine(fever: Finding, hypotension: Finding, hypoxia: Finding, gate: Gate, start: datetime) -> Outcome:
    """R3: the grade is the most severe of fever (1), hypotension (2-4) and hypoxia (2-4), never a sum,
    counted only behind an open fever gate (R1, R2). Grade 5 is never assigned (decision 2).

    Ranges combine the same way: the day is GRADED when the lowest and highest possible grades agree,
    AT_LEAST when the data prove >= 1 but a missing input could raise it, else NOT_ASSESSABLE."""
    if not gate.open:
        return _outside_episode(fever, hypotension, hypoxia, gate)
    lo, hi = max(fever.low, hypotension.low, hypoxia.low), max(fever.high, hypotension.high, hypoxia.high)
    onset = fever.onset
    if onset is None and lo >= 1:  # no fever today: the first sign present (gate lifted or earlier fever)
        onset = min((t for t in (hypotension.onset, hypoxia.onset) if t is not None), default=start)
    if lo == hi:
        reasons = ("no fever, vasopressor or oxygen support: CRS signs absent",) if lo == 0 else ()
        return Outcome(State.GRADED, lo, onset, (), reasons)
    missing = fever.missing + hypotension.missing + hypoxia.missing
    if lo == 0:
        return Outcome(State.NOT_ASSESSABLE, None, onset, missing, ())
    return Outcome(State.AT_LEAST, lo, onset, missing, ())


def _outside_episode(fever: Finding, hypotension: Finding, hypoxia: Finding, gate: Gate) -> Outcome:
    """R1: no fever and no open episode. Without any decisive temperature the day is not assessable;
    otherwise it is grade 0, hypotension or hypoxia notwithstanding."""
    if fever.missing:
        missing = fever.missing + hypotension.missing + hypoxia.missing
        return Outcome(State.NOT_ASSESSABLE, None, None, missing,
                       ("no temperature recorded and no open CRS episode",))
    reasons = (NOT_CRS,) if hypotension.low or hypoxia.low else ()
    if not (reasons or fever.reasons or hypotension.reasons or hypoxia.reasons or gate.reasons):
        reasons = ("afebrile",)
    return Outcome(State.GRADED, 0, None, (), reasons)
