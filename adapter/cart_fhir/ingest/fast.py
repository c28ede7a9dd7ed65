"""The fast Observation reader (issue 18 item 1): a plain Observation becomes its Reading as soon as it is read.

The index keeps every resource until its patient is extracted; for most input (vital signs and labs) all the
extractor would do is look up the code, parse the time and check the value. `FastReader.compact` does that
when the item is read and hands the index a slim stand-in (`FastObservation`: the elements the index and the
extractor's patient-level steps read, and the finished Reading), so the full parsed resource is freed at once.

Only a *plain* Observation takes this path; anything else keeps its parsed dict and goes through the
extractor (`Extractor._observation`), decided per resource. Plain means: an id; a usable status; a first
coding whose (system, code), ConceptMap translations included, is a concept with one value (not a panel);
no component, no modifierExtension or implicitRules; an effectiveDateTime with a time and a UTC offset; a
value that passes the checks without an error, and a reference range (if any) without a warning. The value
checks are `values.ValueChecks`, the same code the extractor runs: the fast path only decides "plain", and any
message a check would give is left for the extractor to give in its place in the run report. Readings keep
their order: the stand-in goes through the index (versions, subject join) like the resource it replaces.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from datetime import timedelta, timezone
from typing import Any

from ..errors import BadInput, Location
from ..model import Moment, Reading
from .codes import Terminology
from .read import Item
from .timeparse import TimeError, has_offset, parse_moment
from .units import UnitConverter
from .values import ValueChecks

ENV = "CART_FHIR_FAST_READ"  # "0": every Observation through the extractor (the equivalence tests compare)
# Elements of a plain Observation kept in its stand-in: what build_index (resourceType, id, meta, subject),
# Item.loc (resourceType, id) and Extractor._charting_offset (effectiveDateTime) read.
_KEPT = ("resourceType", "id", "meta", "subject", "effectiveDateTime")
# Elements that would change what the resource means or how the extractor reads it: such an Observation
# is read by the extractor (components, other time shapes and value[x] types are caught by the checks below).
_UNUSUAL = frozenset({"component", "modifierExtension", "implicitRules", "dataAbsentReason"})
OBS_USABLE = frozenset({"preliminary", "final", "amended", "corrected"})  # Observation.status read (both paths)
_CACHE_MAX = 4096  # timestamps and values repeat within a patient; lines of many patients interleave
# Given to parse_moment as the patient's offset, which a time with its own offset never takes: a Moment that
# carries it had none after all (a string has_offset misjudged), and the extractor reads that resource.
_PROBE = timezone(timedelta(0), "fast-read probe")


def enabled() -> bool:
    """The fast path is on unless CART_FHIR_FAST_READ=0 (or false/no/off) is set."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class FastObservation(dict[str, Any]):
    """The slim stand-in of a plain Observation (see the module docstring), with its finished Reading."""

    __slots__ = ("reading", "unverified")

    reading: Reading
    unverified: str | None  # the input-concepts row the Reading used, when not yet verified (run report)


class _NotPlain(Exception):
    """A check would have left a message in the run report: the extractor reads this resource."""


def _not_plain(message: str, location: Location) -> None:
    raise _NotPlain


class FastReader:
    """Built once per run from the engine's terminology and units; `compact` is the per-item step."""

    def __init__(self, terminology: Terminology, units: UnitConverter) -> None:
        self._concepts = terminology.first_coding_concepts()
        self._values = ValueChecks(terminology, units)
        self._moments: dict[str, Moment] = {}
        self.fast = 0  # plain Observations read here
        self.fallback = 0  # Observations left to the extractor

    def compact(self, items: Iterable[Item | BadInput]) -> Iterator[Item | BadInput]:
        """The items, each plain Observation replaced by its stand-in; everything else passed through as is."""
        plain = self._plain
        for item in items:
            if type(item) is Item and item.resource.get("resourceType") == "Observation":
                slim = plain(item)
                if slim is None:
                    self.fallback += 1
                else:
                    self.fast += 1
                    item = Item(slim, item.full_url, item.file, item.line, item.entry)
            yield item

    def _plain(self, item: Item) -> FastObservation | None:
        res = item.resource
        rid = res.get("id")
        status = res.get("status")
        if type(rid) is not str or type(status) is not str or status not in OBS_USABLE \
                or not _UNUSUAL.isdisjoint(res):
            return None
        try:
            c0 = res["code"]["coding"][0]
            row = self._concepts.get((c0["system"], c0["code"]))
        except (TypeError, KeyError, IndexError):
            return None
        if row is None or row.kind == "panel":
            return None
        when = self._moment(res.get("effectiveDateTime"))
        if when is None:
            return None
        values = self._values
        if len(values.quantities) > _CACHE_MAX:
            values.quantities.clear()
        try:
            value = values.observation_value(res, row, "Observation", item)
            if value is None:
                return None
            low, high = values.reference_range(res, row, item, _not_plain) \
                if row.kind == "quantity" and "referenceRange" in res else (None, None)
        except (BadInput, _NotPlain):
            return None
        key = f"Observation/{rid}"  # build_index's key for a resource with an id
        slim = FastObservation((k, res[k]) for k in _KEPT if k in res)
        slim.reading = Reading(row.concept, when, value, key, key, low, high)
        slim.unverified = None if row.verified else f"input-concepts:{row.system}|{row.code}"
        return slim

    def _moment(self, value: Any) -> Moment | None:
        """The Moment of an effectiveDateTime with a time and an offset (the patient's offset plays no part);
        None for anything else (a bare date, no offset, not a string, not valid): the extractor reads those."""
        hit = self._moments.get(value) if type(value) is str else None
        if hit is not None:
            return hit
        if type(value) is not str or len(value) <= 10 or not has_offset(value):
            return None
        try:
            m = parse_moment(value, _PROBE)
        except TimeError:
            return None
        if m.at.tzinfo is _PROBE:
            return None
        if len(self._moments) > _CACHE_MAX:
            self._moments.clear()
        self._moments[value] = m
        return m
