"""CRS fever (ASTCT 2019, Lee et al. 2019, CRS grading table; grading.md 1.2 R1, R2 and decision 3)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter
from typing import cast

from ...model import DrugAdmin, Quantity, Reading
from ..result import Component
from .finding import Finding, Gate

GATE_LIFTING_ROLES = frozenset({"anti-cytokine", "corticosteroid", "antipyretic"})  # R2
TEMPERATURE_MISSING = "body temperature (LOINC 8310-5)"


def _celsius(r: Reading) -> float:
    # Ingest converts every body temperature to a Quantity in Cel (mappings/concepts.yaml kind quantity).
    return cast(Quantity, r.value).value


_CELSIUS = attrgetter("value.value")  # _celsius as max()'s key: no Python call per temperature


def fever(temps: Sequence[Reading], threshold: float) -> Finding:
    """R1: a temperature >= threshold (38.0 C, inclusive, after unit conversion) is fever, grade 1.

    A bound that straddles the threshold decides nothing (flagged); a day whose temperatures decide
    nothing can still be fever: low 0, high 1, the temperature named as missing."""
    fevers: list[Reading] = []
    decided = 0
    for r in temps:  # one test per temperature
        q = r.value
        if isinstance(q, Quantity):
            hot = q.value >= threshold if q.comparator is None else q.at_least(threshold)  # the usual case inline
            if hot is not None:
                decided += 1
                if hot:
                    fevers.append(r)
    flags = ("temperature-bound-straddles-threshold",) if decided < len(temps) else ()
    met = bool(fevers)
    components: tuple[Component, ...] = ()
    evidence: list[str] = []
    reasons: tuple[str, ...] = ()
    if temps:
        hottest = max(temps, key=_CELSIUS)
        components = (Component("max-temperature", "celsius", _celsius(hottest)),
                      Component("fever", "boolean", met, 1 if met else 0))
        evidence.append(hottest.ref)
        if met:
            evidence.extend(r.ref for r in fevers[:1])
            reasons = (f"fever {_celsius(hottest):g} C >= {threshold:g} C (ASTCT R1)",)
    return Finding(1 if met else 0, 1 if met or not decided else 0,
                   min(r.when.at for r in fevers) if fevers else None, components, tuple(evidence),
                   reasons=reasons, flags=flags, missing=() if decided else (TEMPERATURE_MISSING,))


def gate(fever: Finding, open_since: datetime | None, lifting: Sequence[DrugAdmin], start: datetime,
         end: datetime) -> Gate:
    """R1/R2 (decision 3): hypotension and hypoxia count on a day with fever, or inside an episode opened
    by an earlier fever; a gate-lifting drug (tocilizumab, siltuximab, anakinra, a corticosteroid, an
    antipyretic) given after the episode opened masks the fever and is named. Drugs given before the
    episode opened never lift the gate; outside an episode, hypotension/hypoxia without fever are not CRS."""
    if open_since is None:
        return Gate(fever.low >= 1)
    masking = [d for d in lifting if d.start.at >= open_since and d.start.at < end]
    reasons: tuple[str, ...] = ()
    if masking and not fever.low:
        reasons = ("no fever needed inside the episode: fever masked by "
                   + ", ".join(sorted({d.agent for d in masking})) + " (ASTCT R2)",)
    return Gate(True, tuple(d.ref for d in masking if start <= d.start.at < end), reasons)
