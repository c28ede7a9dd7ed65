"""Codings the writers put on resources, from mappings/output-codes.yaml and the project CodeSystems."""

from __future__ import annotations

from typing import Any

from ..constants import (
    CS_CONSCIOUSNESS,
    CS_EDEMA,
    CS_GRADE,
    CS_HYPOTENSION_TIER,
    CS_MOTOR,
    CS_OXYGEN_TIER,
    CS_SEIZURE,
    CS_TOXICITY,
    ICD10CM,
    NCIT,
)
from ..tables import Tables
from .shared import SharedDict

ANSWER_SYSTEMS = {
    "hypotension-tier": CS_HYPOTENSION_TIER,
    "oxygen-tier": CS_OXYGEN_TIER,
    "consciousness-level": CS_CONSCIOUSNESS,
    "seizure-type": CS_SEIZURE,
    "motor-finding": CS_MOTOR,
    "cerebral-edema-finding": CS_EDEMA,
}

_CODINGS: dict[tuple[str, str, str | None], SharedDict] = {}


def coding(system: str, code: str, display: str | None = None) -> SharedDict:
    """A Coding, built once per (system, code, display) and shared, read-only (output/shared.py), by every
    resource that carries it (a run repeats a few hundred codings ~100,000 times)."""
    key = (system, code, display)
    c = _CODINGS.get(key)
    if c is None:
        c = SharedDict({"system": system, "code": code, **({"display": display} if display else {})})
        if len(_CODINGS) < 4096:  # codes come from the tables: bounded, but never let a bug grow it
            _CODINGS[key] = c
    return c


class OutputCodes:
    def __init__(self, tables: Tables) -> None:
        self.t = tables.output

    def toxicity_codings(self, toxicity: str, grade: int | None,
                         term: tuple[str, str, str] | None = None) -> list[dict[str, Any]]:
        """Local toxicity code; ICD-10-CM graded code of the maximum grade where the toxicity has one
        (CRS, ICANS); the NCIt/CTCAE term of the toxicity, or of the event (`term`) where one exists."""
        tox = self.t.toxicities[toxicity]
        out: list[dict[str, Any]] = [coding(CS_TOXICITY, tox.code, tox.display)]
        if tox.icd10cm:
            icd = (tox.icd10cm.get(str(grade)) if grade else None) or tox.icd10cm["unspecified"]
            out.append(coding(ICD10CM, icd.code, icd.display))
        if term is not None:
            out.append(coding(*term))
        elif tox.ncit is not None:
            out.append(coding(NCIT, tox.ncit.code, tox.ncit.display))
        return out

    def grade_concept(self, grade: int) -> dict[str, Any]:
        """NCIt AE grade + project toxicity-grade code (output-contract.md sections 2 and 3)."""
        n = self.t.ncit_grades[str(grade)]
        return {"coding": [coding(NCIT, n.code, n.display), coding(CS_GRADE, str(grade), f"Grade {grade}")],
                "text": f"Grade {grade}"}

    def scale(self, toxicity: str) -> tuple[str, str, str]:
        """(scale code, display, criteria citation) for a toxicity."""
        tox = self.t.toxicities[toxicity]
        return tox.scale, tox.scale_display, tox.criteria

    def display(self, toxicity: str) -> str:
        return self.t.toxicities[toxicity].display

    def assessment_display(self, code: str) -> str | None:
        """Display of an assessment's Observation.code (output-codes.yaml `assessment_displays`)."""
        return self.t.assessment_displays.get(code)

    def component_display(self, code: str) -> str | None:
        """Display of a component code, where the published CodeSystem gives one the writers repeat."""
        return self.t.component_displays.get(code)
