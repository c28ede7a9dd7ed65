"""The value checks of an Observation (or component) for a concept: type, unit conversion, plausibility and
reference range. One copy, called by the extractor and by the fast Observation reader (ingest/fast.py), so
the two paths cannot drift."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeGuard

from ..errors import BadInput, Location, json_type, shown
from ..model import Comparator, Quantity
from ..tables import ConceptRow, PlausibilityRow, UnitMixupRow
from . import shape
from .codes import Terminology, codings
from .shape import Located
from .units import UnitConverter, UnitError

COMPARATORS = frozenset({"<", "<=", ">=", ">"})
_QUANTITIES_MAX = 4096  # checked Quantities kept (values repeat within a patient; lines of many interleave)
Warn = Callable[[str, Location], None]  # RunReport.warn, or the fast reader's "not plain" signal


@functools.lru_cache(maxsize=256)
def component_path(code: str) -> str:
    """Message path of a component (one per concept code in the tables: built once, not per Observation)."""
    return f"Observation.component[{code}]"


def _is_comparator(value: object) -> TypeGuard[Comparator]:
    """None (an exact value) or one of FHIR's Quantity comparators."""
    return value is None or (type(value) is str and value in COMPARATORS)


class ValueChecks:
    """Reads and checks values against a concept row; holds a cache of checked Quantities (see quantity())."""

    def __init__(self, terminology: Terminology, units: UnitConverter) -> None:
        self.term = terminology
        self.units = units
        self.quantities: dict[tuple[Any, ...], Quantity] = {}  # see quantity(); bounded there
        plaus = terminology.tables.plausibility
        self._limits: dict[str, PlausibilityRow] = {r.concept: r for r in plaus.rows}
        self._mixups: dict[tuple[str, str], list[UnitMixupRow]] = {}
        for m in plaus.mixups:
            self._mixups.setdefault((m.concept, m.unit), []).append(m)

    def observation_value(self, holder: dict[str, Any], row: ConceptRow, path: str, at: Located) -> Any:
        """The value of an Observation or a component: quantities (most readings) go straight to quantity()
        (the checks value() would make first are the two conditions here), anything else through value()."""
        if row.kind == "quantity" and type(q := holder.get("valueQuantity")) is dict \
                and "dataAbsentReason" not in holder:
            return self.quantity(q, row, path, at)
        return self.value(holder, row, path, at)

    def value(self, holder: dict[str, Any], row: ConceptRow, path: str, at: Located) -> Any:
        """The value of an Observation or component for a concept, converted and range-checked."""
        if "dataAbsentReason" in holder and not any(k.startswith("value") for k in holder):
            return None
        kind = row.kind
        if kind == "quantity":
            q = holder.get("valueQuantity")
            if q is None:
                return _no_value(holder, row, "valueQuantity", path, at)
            return self.quantity(q, row, path, at)
        if kind == "integer":
            v = holder.get("valueInteger")
            if v is None and isinstance(holder.get("valueQuantity"), dict):
                v = holder["valueQuantity"].get("value")
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
            if v is None:
                return _no_value(holder, row, "valueInteger", path, at)
            if not isinstance(v, int) or isinstance(v, bool):
                raise BadInput(f"{path}: {row.concept} must be an integer, got {json_type(v)}", at.loc, shown(v))
            if (row.min is not None and v < row.min) or (row.max is not None and v > row.max):
                raise BadInput(f"{path}: {row.concept} is outside {row.min}-{row.max}", at.loc, shown(v))
            return v
        if kind == "code":
            cc = holder.get("valueCodeableConcept")
            if cc is None:
                return _no_value(holder, row, "valueCodeableConcept", path, at)
            if not isinstance(cc, dict):
                raise BadInput(f"{path}: valueCodeableConcept must be an object", at.loc)
            assert row.value_system is not None
            code = self.term.answer(cc, row.value_system)
            if code is None or not self.term.is_answer(row.value_system, code):
                answer: list[Any] = [f"{c.get('system')}|{c.get('code')}" for c in codings(cc)] or [cc.get("text")]
                # Codes, not values: the unmapped system|code is what a site needs to write its ConceptMap.
                raise BadInput(f"{path}: {row.concept} answer {answer} is not in {row.value_system} "
                               "(map site codes with --concept-map)", at.loc)
            return code
        if kind == "boolean":
            v = holder.get("valueBoolean")
            if v is None:
                return None
            if not isinstance(v, bool):
                raise BadInput(f"{path}: {row.concept} must be a valueBoolean, got {json_type(v)}", at.loc, shown(v))
            return v
        return None

    def quantity(self, q: Any, row: ConceptRow, path: str, at: Located) -> Quantity:
        # Values repeat within a patient (SpO2 98 %, 37.0 Cel): the checked, converted Quantity for one
        # (value, comparator, code, unit, target unit) is kept, so a repeat costs one dict lookup instead of
        # the checks, the unit conversion and a frozen dataclass (~1.8 us). Bools are excluded (True == 1) and
        # so is zero (0.0 == -0.0, whose sign must survive); unhashable parts (malformed input) take the slow path.
        if type(q) is dict:
            value = q.get("value")
            if value and value.__class__ is not bool:
                key = (value, q.get("comparator"), q.get("code"), q.get("unit"), row.unit, row.concept)
                try:
                    found = self.quantities.get(key)
                except TypeError:
                    return self._convert(q, row, path, at)
                if found is None:
                    if len(self.quantities) >= _QUANTITIES_MAX:  # values come from the input: never unbounded
                        self.quantities.clear()
                    found = self.quantities[key] = self._convert(q, row, path, at)
                return found
        return self._convert(q, row, path, at)

    def _convert(self, q: Any, row: ConceptRow, path: str, at: Located) -> Quantity:
        if not isinstance(q, dict):
            raise BadInput(f"{path}.valueQuantity must be an object", at.loc)
        value = q.get("value")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BadInput(f"{path}.valueQuantity.value must be a number, got {json_type(value)}", at.loc, shown(value))
        comparator = q.get("comparator")
        if not _is_comparator(comparator):
            raise BadInput(f"{path}.valueQuantity.comparator is not one of < <= >= >", at.loc, shown(comparator))
        code = q.get("code")
        if not isinstance(code, str):
            code = None
        unit = code
        if not unit:
            unit = q.get("unit")
            if not isinstance(unit, str):
                unit = None
        assert row.unit is not None
        if unit is None:
            raise BadInput(f"{path}: {row.concept} ({row.system}|{row.code}) has no unit; expected {row.unit}", at.loc)
        try:
            v = self.units.convert(float(value), unit, row.unit)
        except UnitError as exc:
            # A UCUM code that fails may still carry a recognisable display unit (e.g. code "degF", unit "°F").
            alt = q.get("unit")
            if code is not None and isinstance(alt, str) and alt != code:
                try:
                    v = self.units.convert(float(value), alt, row.unit)
                except UnitError:
                    raise BadInput(f"{path}: {row.concept}: {exc}", at.loc) from exc
            else:
                raise BadInput(f"{path}: {row.concept}: {exc}", at.loc) from exc
        limits = self._limits.get(row.concept)
        if limits is not None and ((limits.min is not None and v < limits.min)
                                   or (limits.max is not None and v > limits.max)):
            raise self._implausible(limits, float(value), unit, path, at)
        return Quantity(v, comparator)

    def _implausible(self, limits: PlausibilityRow, raw: float, unit: str, path: str, at: Located) -> BadInput:
        """Bad input for a value outside the concept's plausible range, naming a likely unit mix-up."""
        written = self.units.canonical_code(unit)
        hint = next((m.hint for m in self._mixups.get((limits.concept, written), ())
                     if m.min <= raw <= m.max), None)
        converted = f" after conversion from {written}" if written != limits.unit else ""
        message = (f"{path}.valueQuantity: {limits.concept}{converted} is outside the plausible range "
                   f"{limits.allowed()} (mappings/plausibility.yaml row {limits.id})")
        if hint:
            message += f": {hint}"
        return BadInput(message, at.loc, f"{raw} {unit}")

    def reference_range(self, res: dict[str, Any], row: ConceptRow, at: Located, warn: Warn
                        ) -> tuple[float | None, float | None]:
        """referenceRange[0] low/high in the concept's unit (labs judge ULN/LLN from the result's own range,
        grading.md 0.4). A range whose unit cannot be converted is dropped with a warning, not guessed."""
        ranges = res.get("referenceRange")
        shape.objects(ranges, "Observation.referenceRange", at)
        if not ranges:
            return None, None
        out: list[float | None] = []
        for end in ("low", "high"):
            q = ranges[0].get(end)
            if not isinstance(q, dict) or not isinstance(q.get("value"), (int, float)) \
                    or isinstance(q.get("value"), bool):
                out.append(None)
                continue
            unit = q.get("code") if isinstance(q.get("code"), str) else q.get("unit")
            try:
                out.append(self.units.convert(float(q["value"]), unit, row.unit or "") if unit else None)
            except UnitError as exc:
                warn(f"referenceRange.{end} ignored: {exc}", at.loc)
                out.append(None)
        return out[0], out[1]


def _no_value(holder: dict[str, Any], row: ConceptRow, expected: str, path: str, at: Located) -> None:
    """No value of the concept's type: None (nothing to read), or bad input when another value[x] stands there."""
    other = next((k for k in holder if k.startswith("value")), None)
    if other:
        raise BadInput(f"{path}: {row.concept} must be a {expected}, got {other}", at.loc)
