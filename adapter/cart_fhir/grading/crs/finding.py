"""What one ASTCT 2019 CRS domain (fever, hypotension, hypoxia) shows on one day, and the day's outcome."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..result import Component, State


@dataclass(frozen=True, slots=True)
class Finding:
    """One domain on one day: the lowest and highest grade its data can mean (equal when decided), when it
    was first present, and what the day's Observation reports for it."""

    low: int
    high: int
    onset: datetime | None = None
    components: tuple[Component, ...] = ()
    evidence: tuple[str, ...] = ()  # references that drive the grade
    supporting: tuple[str, ...] = ()  # references that support it (drugs)
    reasons: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Gate:
    """The fever gate on one day (R1, R2): open, and what the lifted gate adds to the day's Observation."""

    open: bool
    supporting: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """The day's result once the domains are combined behind the gate (R3)."""

    state: State
    grade: int | None
    onset: datetime | None
    missing: tuple[str, ...]
    reasons: tuple[str, ...]
