"""The fixed parts of output resources (profiles, categories, codings, methods, components), built once per
engine and shared read-only by every resource that carries them (output/shared.py says why that is safe)."""

from __future__ import annotations

from typing import Any

from ..constants import (
    AE_CAUSALITY_METHOD,
    COND_CATEGORY,
    COND_VERIFICATION,
    CS_TOXICITY,
    OBS_CATEGORY,
    PROFILE_AE,
    PROFILE_EPISODE,
    PROFILE_GRADE,
    UCUM,
    cs,
)
from ..grading.result import Component
from .codes import ANSWER_SYSTEMS, OutputCodes, coding
from .shared import SharedDict, SharedList, shared


class Fixed:
    """The fixed parts of output resources for one engine (its tables and versions), each built once and
    shared (read-only) by every resource that carries it."""

    def __init__(self, codes: OutputCodes) -> None:
        self.codes = codes
        self.meta = {p: shared({"profile": [p]}) for p in (PROFILE_GRADE, PROFILE_EPISODE, PROFILE_AE)}
        self.survey = shared([{"coding": [coding(OBS_CATEGORY, "survey", "Survey")]}])
        self.encounter_diagnosis = shared([{"coding": [coding(COND_CATEGORY, "encounter-diagnosis",
                                                              "Encounter Diagnosis")]}])
        self.provisional = shared({"coding": [coding(COND_VERIFICATION, "provisional", "Provisional")]})
        self.causality_method = shared({"coding": [coding(AE_CAUSALITY_METHOD, "ProbabilityScale",
                                                          "Probability Scale")]})
        self._codings: dict[tuple[str, str | None], SharedList] = {}
        self._methods: dict[str, SharedDict] = {}
        self._components: dict[tuple[str, str, type, object], SharedDict] = {}
        self._toxicity: dict[tuple[str, int | None, tuple[str, str, str] | None], SharedList] = {}
        self._grades: dict[int, SharedDict] = {}
        self._concepts: dict[tuple[str, str, str], SharedDict] = {}
        self._offsets: dict[int, SharedDict] = {}

    def toxicity_coding(self, code: str, display: str | None) -> SharedList:
        """[project toxicity coding] of an Observation.code or a Condition stage type."""
        key = (code, display)
        hit = self._codings.get(key)
        if hit is None:
            hit = _keep(self._codings, key, [coding(CS_TOXICITY, code, display)])
        return hit

    def method(self, text: str) -> SharedDict:
        """Observation.method: automated grading, with the criteria and table versions as its text."""
        hit = self._methods.get(text)
        if hit is None:
            hit = _keep(self._methods, text, {"coding": [coding(CS_TOXICITY, "automated-grading",
                                                                "Automated grading")], "text": text})
        return hit

    def component(self, c: Component) -> SharedDict:
        """One Observation.component; keyed by the value's type too (True == 1 but renders differently)."""
        key = (c.code, c.kind, type(c.value), c.value)
        hit = self._components.get(key)
        if hit is None:
            hit = _keep(self._components, key, self._component(c))
        return hit

    def _component(self, c: Component) -> dict[str, Any]:
        out: dict[str, Any] = {"code": {"coding": [coding(CS_TOXICITY, c.code,
                                                          self.codes.component_display(c.code))]}}
        if c.kind == "celsius":
            out["valueQuantity"] = {"value": round(float(c.value), 2), "unit": "°C", "system": UCUM, "code": "Cel"}
        elif c.kind == "boolean":
            out["valueBoolean"] = bool(c.value)
        elif c.kind == "integer":
            out["valueInteger"] = int(c.value)
        elif c.kind == "decimal":  # a ratio or other unitless number
            out["valueQuantity"] = {"value": float(c.value), "unit": "ratio", "system": UCUM, "code": "1"}
        else:  # a coded answer from one of the project's answer lists
            out["valueCodeableConcept"] = {"coding": [coding(ANSWER_SYSTEMS.get(c.kind, cs(c.kind)), str(c.value))]}
        return out

    def toxicity_codings(self, toxicity: str, grade: int | None,
                         term: tuple[str, str, str] | None = None) -> SharedList:
        """OutputCodes.toxicity_codings, shared."""
        key = (toxicity, grade, term)
        hit = self._toxicity.get(key)
        if hit is None:
            hit = _keep(self._toxicity, key, self.codes.toxicity_codings(toxicity, grade, term))
        return hit

    def grade_concept(self, grade: int) -> SharedDict:
        """OutputCodes.grade_concept, shared."""
        hit = self._grades.get(grade)
        if hit is None:
            hit = _keep(self._grades, grade, self.codes.grade_concept(grade))
        return hit

    def concept(self, system: str, code: str, display: str) -> SharedDict:
        """A CodeableConcept of one coding (statuses, severity, outcome, causality ...)."""
        key = (system, code, display)
        hit = self._concepts.get(key)
        if hit is None:
            hit = _keep(self._concepts, key, {"coding": [coding(system, code, display)]})
        return hit

    def offset(self, day: int) -> SharedDict:
        """The `offset` part of a cqf-relativeDateTime extension: day N (output-contract.md section 1)."""
        hit = self._offsets.get(day)
        if hit is None:
            hit = _keep(self._offsets, day, {"url": "offset", "valueDuration": {"value": day, "unit": "d",
                                                                                "system": UCUM, "code": "d"}})
        return hit


def _keep(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    """Freeze `value` and keep it (bounded: the keys come from the tables and grades, but a bug must never
    grow a cache without limit; past the bound, the value is built each time)."""
    out = shared(value)
    if len(cache) < 4096:
        cache[key] = out
    return out
