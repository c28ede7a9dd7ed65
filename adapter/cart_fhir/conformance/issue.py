"""One conformance problem, as the profile checker and the invariant evaluator both report it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Issue:
    """One conformance problem; entry and resource are filled in when the resource sits in a Bundle."""

    path: str  # FHIRPath-like: AdverseEvent.extension[0].valueCodeableConcept
    message: str
    severity: str = "error"
    entry: int | None = None
    resource: str | None = None  # "Observation/o1", or the entry's fullUrl when there is no id
