"""The fast Observation reader (issue 18 item 1): a plain Observation becomes its Reading as soon as it is read.

The index keeps every resource until its patient is extracted; for most input (vital signs and labs) all the
extractor would do is look up the code, parse the time and check the value. `FastReader.compact` does that
when the item is read and hands the index a `FastItem`: a slim stand-in as its resource (the elements the index
and the extractor's patient-level steps read) and the finished Readings, so the full parsed resource is freed
at once.

Only a *plain* Observation takes this path; anything else keeps its parsed dict and goes through the
extractor (`Extractor._observation`), decided per resource. Plain means: a non-empty id; not one of
cart-fhir's own results (ours.is_ours); no modifierExtension, implicitRules or dataAbsentReason (nor in a
component); a status string (one the graders do not read, e.g. entered-in-error, is counted as ignored and
nothing else is read, as the extractor does); a first coding whose (system, code), ConceptMap translations
included, is a concept, and for a panel (a BP panel) components whose first codings are concepts too; an
effectiveDateTime with a time and a UTC offset; values that pass the checks without an error, at least one
reading, and a reference range (if any) without a warning. The checks are `values.ValueChecks`, the same code
the extractor runs: the fast path only decides "plain", and any message a check would give is left for the
extractor to give in its place in the run report. Readings keep their order: the stand-in goes through the
index (versions, subject join) like the resource it replaces.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from datetime import timedelta, timezone
from typing import Any

from ..errors import BadInput, Location
from ..model import Moment, Reading
from ..ours import is_ours
from ..tables import ConceptRow
from .codes import Terminology
from .read import Item
from .timeparse import TimeError, has_offset, parse_moment
from .units import UnitConverter
from .values import ValueChecks, component_path

ENV = "CART_FHIR_FAST_READ"  # "0": every Observation through the extractor (the equivalence tests compare)
# A stand-in keeps what build_index (resourceType, id, meta, subject), Item.loc (resourceType, id) and
# Extractor._charting_offset (effectiveDateTime) read of the Observation (_stand_in). An Observation or
# component with an element that changes its meaning (modifierExtension, implicitRules, dataAbsentReason:
# _unusual) is read by the extractor; other time shapes and value[x] types are caught by the checks below.
OBS_USABLE = frozenset({"preliminary", "final", "amended", "corrected"})  # Observation.status read (both paths)
_SUBJECTS_MAX = 1 << 16
_CACHE_MAX = 4096  # timestamps and values repeat within a patient; lines of many patients interleave
# Given to parse_moment as the patient's offset, which a time with its own offset never takes: a Moment that
# carries it had none after all (a string has_offset misjudged), and the extractor reads that resource.
_PROBE = timezone(timedelta(0), "fast-read probe")


def enabled() -> bool:
    """The fast path is on unless CART_FHIR_FAST_READ=0 (or false/no/off) is set."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class FastItem(Item, gc=False):
    """An Observation read on the fast path (see the module docstring): its StandIn as the resource and what
    the extractor would have made of it, for Extractor._observation to add to the patient and the run report.
    The finished parts ride on the Item the step builds anyway (a Struct: cheap), not as slots of the stand-in
    dict written one by one after it is built (issue 18)."""

    key: str = ""  # "Observation/<id>": build_index's key, and the ref of the readings
    readings: tuple[Reading, ...] = ()
    unverified: tuple[str, ...] = ()  # input-concepts rows used that are not yet verified (run report)
    ignored: str | None = None  # the run report's reason when the Observation is not used (a status not read)


class StandIn(dict[str, Any]):
    """The resource of a FastItem: the elements of the Observation that the index and the extractor's
    patient-level steps read. A dict subclass built from keywords, though it adds nothing to a dict: measured
    on /tmp/perf-D (min of 7), build_index over 131k of these takes 0.12-0.14 s, over dict literals or
    dicts filled key by key 0.16-0.19 s; the likely cause is where the allocator places them (the index and
    the extractor walk them in reading order), so keep this form unless a measurement says otherwise."""

    __slots__ = ()


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
        self._subjects: dict[str, dict[str, Any]] = {}
        self.fast = 0  # plain Observations read here
        self.fallback = 0  # Observations left to the extractor

    def compact(self, items: Iterable[Item | BadInput]) -> Iterator[Item | BadInput]:
        """The items, each plain Observation replaced by its FastItem; everything else passed through as is."""
        plain = self._plain
        for item in items:
            # (type() is Item: a FastItem, already compacted, passes as it is)
            if type(item) is Item and item.resource.get("resourceType") == "Observation":
                slim = plain(item)
                if slim is None:
                    self.fallback += 1
                else:
                    self.fast += 1
                    item = slim
            yield item

    def _row(self, cc: Any) -> ConceptRow | None:
        """concept(cc) when cc's first coding is a well-formed (system, code) the table holds; else None (the
        extractor then reads the resource, checking the shape)."""
        try:
            c0 = cc["coding"][0]
            return self._concepts.get((c0["system"], c0["code"]))
        except (TypeError, KeyError, IndexError):
            return None

    def _plain(self, item: Item) -> FastItem | None:
        # Per input Observation: the common shapes (one value, or a BP panel's two components) take no more
        # calls than the checks themselves; a None anywhere leaves the resource to the extractor.
        res = item.resource
        rid = res.get("id")
        status = res.get("status")
        if type(rid) is not str or not rid or type(status) is not str or "modifierExtension" in res \
                or "dataAbsentReason" in res or "implicitRules" in res or "identifier" in res and is_ours(res):
            return None  # (cart-fhir's own results: the extractor keeps them whole for reviews.py)
        key = f"Observation/{rid}"  # build_index's key for a resource with an id
        if status not in OBS_USABLE:  # e.g. entered-in-error: counted as ignored, nothing else read
            return self._stand_in(item, rid, key, (), (), f"Observation status {status}")
        concept = self._row(res.get("code"))
        if concept is None:
            return None
        when = self._moments.get(v) if type(v := res.get("effectiveDateTime")) is str else None
        if when is None and (when := self._moment(v)) is None:
            return None
        values = self._values
        if len(values.quantities) > _CACHE_MAX:
            values.quantities.clear()
        components = res.get("component")
        try:  # the extractor's steps (Extractor._observation), in its order, through the same checks
            if components is None:
                if concept.kind == "panel" or (value := values.observation_value(res, concept, "Observation",
                                                                                 item)) is None:
                    return None
                low, high = values.reference_range(res, concept, item, _not_plain) \
                    if concept.kind == "quantity" and "referenceRange" in res else (None, None)
                reading = Reading(concept.concept, when, value, key, key, low, high)
                return self._stand_in(item, rid, key, (reading,),
                                      () if concept.verified else _unverified((concept,)), None)
            return self._panel(res, rid, key, concept, when, components, item)
        except (BadInput, _NotPlain):
            return None

    def _panel(self, res: dict[str, Any], rid: str, key: str, concept: ConceptRow, when: Moment,
               components: Any, item: Item) -> FastItem | None:
        """An Observation with components (a BP panel): the readings of its own value and of each component."""
        if type(components) is not list:
            return None
        sub: list[tuple[ConceptRow, dict[str, Any]]] = []
        for comp in components:
            row = self._row(comp.get("code")) if type(comp) is dict and not _unusual(comp) else None
            if row is None:
                return None
            if row.kind != "panel":
                sub.append((row, comp))
        own = concept.kind != "panel"
        if not (own or sub):
            return None
        values = self._values
        readings: list[Reading] = []
        if own:
            value = values.observation_value(res, concept, "Observation", item)
            if value is not None:
                low, high = values.reference_range(res, concept, item, _not_plain) \
                    if concept.kind == "quantity" and "referenceRange" in res else (None, None)
                readings.append(Reading(concept.concept, when, value, key, key, low, high))
        for row, comp in sub:
            value = values.observation_value(comp, row, component_path(row.code), item)
            if value is not None:
                readings.append(Reading(row.concept, when, value, key, key))
        if not readings:
            return None
        rows = (concept, *(r for r, _ in sub))
        unverified = () if all(r.verified for r in rows) else _unverified(rows)
        return self._stand_in(item, rid, key, tuple(readings), unverified, None)

    def _stand_in(self, item: Item, rid: str, key: str, readings: tuple[Reading, ...],
                  unverified: tuple[str, ...], ignored: str | None) -> FastItem:
        # An absent element and one set to None read the same to every reader of the stand-in (.get()). The
        # stand-ins of one patient share one subject object, and one string per time: nothing writes to them.
        res = item.resource
        subject = res.get("subject")
        if type(subject) is dict and len(subject) == 1 and type(ref := subject.get("reference")) is str:
            if len(self._subjects) > _SUBJECTS_MAX:
                self._subjects.clear()
            subject = self._subjects.setdefault(ref, subject)
        when = res.get("effectiveDateTime")
        slim = StandIn(resourceType="Observation", id=rid, meta=res.get("meta"), subject=subject,
                       effectiveDateTime=sys.intern(when) if type(when) is str else when)
        return FastItem(slim, item.full_url, item.file, item.line, item.entry, key, readings, unverified, ignored)

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


def _unverified(rows: tuple[ConceptRow, ...]) -> tuple[str, ...]:
    """The run report's names of the input-concepts rows used that are not yet verified."""
    return tuple(f"input-concepts:{r.system}|{r.code}" for r in rows if not r.verified)


def _unusual(holder: dict[str, Any]) -> bool:
    return "modifierExtension" in holder or "dataAbsentReason" in holder or "implicitRules" in holder
