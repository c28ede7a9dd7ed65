"""UCUM unit conversion: ucumvert decides each (unit, target) pair once; values then convert by a cached line."""

from __future__ import annotations

import functools
import threading
from typing import Any

from ..errors import AdapterError


class UnitError(AdapterError):
    """A unit that is not UCUM (nor a known EHR alias), or cannot be converted to the needed unit."""


_lock = threading.Lock()
_registry: Any = None


def _ureg() -> Any:
    # PintUcumRegistry costs ~0.5 s to build (python-libraries.md section 4): build it only when a unit
    # other than the canonical one is actually met, and only once per process.
    global _registry
    with _lock:
        if _registry is None:
            from ucumvert import PintUcumRegistry

            _registry = PintUcumRegistry()
    return _registry


class UnitConverter:
    """Converts quantities to a concept's canonical UCUM unit; aliases come from mappings/units.yaml."""

    def __init__(self, aliases: dict[str, str], lines: dict[tuple[str, str], tuple[float, float]] | None = None
                 ) -> None:
        self._aliases = dict(aliases)
        self._known = dict(lines or {})  # (from, to) -> (scale, offset), checked against ucumvert in tests
        self._canonical: dict[str, str] = {}  # unit as written -> canonical code (bounded, see canonical_code)

    def canonical_code(self, code: str) -> str:
        # Memoised: the same few unit strings come with every quantity (~0.3 µs saved per Observation).
        found = self._canonical.get(code)
        if found is None:
            if len(self._canonical) > 4096:  # odd input must not grow a long-lived engine without bound
                self._canonical.clear()
            stripped = code.strip()
            found = self._canonical[code] = self._aliases.get(code, self._aliases.get(stripped, stripped))
        return found

    def convert(self, value: float, unit: str, target: str) -> float:
        """value in `unit` (UCUM code or alias) expressed in `target` (UCUM)."""
        src = self.canonical_code(unit)
        if src == target:
            return value
        line = self._known.get((src, target))
        scale, offset = line if line is not None else self._line(src, target)
        # Round away binary noise (100.4 degF must be 38.0 Cel, not 37.99999999999877, or the inclusive
        # 38.0 boundary of ASTCT R1 would be missed): 10 significant digits is far beyond any
        # reported clinical precision.
        return float(f"{value * scale + offset:.10g}")

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one converter per engine, alive for the process
    def _line(self, src: str, target: str) -> tuple[float, float]:
        """Every UCUM conversion we meet is affine (degF -> Cel has an offset): find it from two points."""
        import pint  # noqa: PLC0415 (only reached when a conversion is really needed)
        from ucumvert import InvalidUcumError

        ureg = _ureg()
        try:
            su, tu = ureg.from_ucum(src), ureg.from_ucum(target)
            at0 = ureg.Quantity(0.0, su).to(tu).magnitude
            at1 = ureg.Quantity(1.0, su).to(tu).magnitude
        except InvalidUcumError as exc:
            raise UnitError(f"unit {src!r} is not a UCUM unit (nor a known alias)") from exc
        except (pint.DimensionalityError, pint.UndefinedUnitError) as exc:
            raise UnitError(f"unit {src!r} cannot be converted to {target!r}") from exc
        except Exception as exc:  # ucumvert/lark raise assorted parse errors for garbage input
            raise UnitError(f"unit {src!r} is not a UCUM unit (nor a known alias)") from exc
        return float(at1 - at0), float(at0)
