"""The fast Observation reader (issue 18 item 1): a plain Observation becomes its Reading as soon as it is read.

The index keeps every resource until its patient is extracted; for most input (vital signs and labs) all the
extractor would do is look up the code, parse the time and check the value. `FastReader.item` does that as
each line is parsed (it takes Item's place in read.read_all), `FastReader.compact` for items already made, and
hands the index a `FastItem`: the finished Readings and the few elements the index and the extractor's
patient-level steps read, so the full parsed resource is freed at once.

Only a *plain* Observation takes this path; anything else keeps its parsed dict and goes through the
extractor (`Extractor._observation`), decided per resource. Plain means: a non-empty id; not one of
cart-fhir's own results (ours.is_ours); no modifierExtension, implicitRules or dataAbsentReason (nor in a
component); a status string (one the graders do not read, e.g. entered-in-error, is counted as ignored and
nothing else is read, as the extractor does); a first coding whose (system, code), ConceptMap translations
included, is a concept, and for a panel (a BP panel) components whose first codings are concepts too; an
effectiveDateTime with a time and a UTC offset; values that pass the checks without an error, at least one
reading, and a reference range (if any) without a warning. The checks are `values.ValueChecks`, the same code
the extractor runs: the fast path only decides "plain", and any message a check would give is left for the
extractor to give in its place in the run report. Readings keep their order: the FastItem goes through the
index (versions, subject join) like the resource it replaces."""

from __future__ import annotations

import os
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
# What the index and the extractor read of a fast-read Observation: its key, meta (build_index's order of
# versions), subject (the patient join) and effectiveDateTime (Extractor._charting_offset) ride on its FastItem;
# its `resource` is a stand-in shared by all of one subject's (see FastItem). An Observation or component with
# an element that changes its meaning (modifierExtension, implicitRules, dataAbsentReason: _unusual) is read by
# the extractor; other time shapes and value[x] types are caught by the checks below.
OBS_USABLE = frozenset({"preliminary", "final", "amended", "corrected"})  # Observation.status read (both paths)
_SUBJECTS_MAX = 1 << 16
_CACHE_MAX = 4096  # timestamps repeat within a patient; lines of many patients interleave
# Given to parse_moment as the patient's offset, which a time with its own offset never takes: a Moment that
# carries it had none after all (a string has_offset misjudged), and the extractor reads that resource.
_PROBE = timezone(timedelta(0), "fast-read probe")


def enabled() -> bool:
    """The fast path is on unless CART_FHIR_FAST_READ=0 (or false/no/off) is set."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class FastItem(Item, gc=False):
    """An Observation read on the fast path (see the module docstring): what the extractor would have made of
    it, for Extractor._observation to add to the patient and the run report, and what the index reads of it.

    `resource` is not the Observation (which is freed once read): it is a stand-in holding its resourceType
    and subject, the elements build_index joins on, shared read-only by every fast-read Observation of that
    subject (one dict per patient, not one per Observation: issue 18). Everything else the index and the
    extractor read of a fast-read Observation is a field here (key, meta, effective) or its `loc`."""

    key: str = ""  # "Observation/<id>": build_index's key, the ref of the readings, and the label of loc
    readings: tuple[Reading, ...] = ()
    unverified: tuple[str, ...] = ()  # input-concepts rows used that are not yet verified (run report)
    ignored: str | None = None  # the run report's reason when the Observation is not used (a status not read)
    meta: Any = None  # Observation.meta as read (build_index orders versions of one key by it)
    effective: Any = None  # Observation.effectiveDateTime as read (Extractor._charting_offset)

    @property
    def loc(self) -> Location:
        return Location(self.file, self.line, self.entry, self.key)


class _NotPlain(Exception):
    """A check would have left a message in the run report: the extractor reads this resource."""


def _not_plain(message: str, location: Location) -> None:
    raise _NotPlain


class _Unplaced:
    """The `at` of the checks on the fast path: a message they would give is never shown from here (the
    extractor reads that resource again and gives it with its place), so no Location is built per line."""

    loc = Location("fast-read")


_UNPLACED = _Unplaced()


class FastReader:
    """Built once per run from the engine's terminology and units. `item` takes the place of Item's
    constructor for a reader (read.read_all's `make`): a plain Observation becomes its FastItem as its line
    is parsed; `compact` does the same for items already made (a Bundle from the service, a stream bucket)."""

    def __init__(self, terminology: Terminology, units: UnitConverter) -> None:
        self._concepts = terminology.first_coding_concepts()
        self._values = ValueChecks(terminology, units)
        self._moments: dict[str, Moment] = {}
        self._subjects: dict[str, dict[str, Any]] = {}
        self.fast = 0  # plain Observations read here
        self.fallback = 0  # Observations left to the extractor

    def item(self, res: dict[str, Any], full_url: str | None, file: str, line: int | None = None,
             entry: int | None = None) -> Item:
        """Item(...) for any resource, a FastItem for a plain Observation."""
        if res["resourceType"] == "Observation":
            slim = self.plain(res, full_url, file, line, entry)
            if slim is not None:
                self.fast += 1
                return slim
            self.fallback += 1
        return Item(res, full_url, file, line, entry)

    def compact(self, items: Iterable[Item | BadInput]) -> Iterator[Item | BadInput]:
        """The items, each plain Observation replaced by its FastItem; everything else passed through as is."""
        plain = self.plain
        for item in items:
            # (type() is Item: a FastItem, already compacted, passes as it is)
            if type(item) is Item and item.resource.get("resourceType") == "Observation":
                slim = plain(item.resource, item.full_url, item.file, item.line, item.entry)
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

    def plain(self, res: dict[str, Any], full_url: str | None, file: str, line: int | None,
              entry: int | None) -> FastItem | None:
        """The FastItem of a plain Observation (see the module docstring), or None: the extractor reads it.
        Per input Observation: the common shapes (one value, or a BP panel's two components) take no more
        calls than the checks themselves."""
        rid = res.get("id")
        status = res.get("status")
        if type(rid) is not str or not rid or type(status) is not str or "modifierExtension" in res \
                or "dataAbsentReason" in res or "implicitRules" in res or "identifier" in res and is_ours(res):
            return None  # (cart-fhir's own results: the extractor keeps them whole for reviews.py)
        key = "Observation/" + rid  # build_index's key for a resource with an id
        if status not in OBS_USABLE:  # e.g. entered-in-error: counted as ignored, nothing else read
            return FastItem(self._stand_in(res), full_url, file, line, entry, key, (), (),
                            f"Observation status {status}", res.get("meta"), res.get("effectiveDateTime"))
        try:
            c0 = res["code"]["coding"][0]
            concept = self._concepts.get((c0["system"], c0["code"]))
        except (TypeError, KeyError, IndexError):
            return None
        if concept is None:
            return None
        v = res.get("effectiveDateTime")
        when = self._moments.get(v) if type(v) is str else None
        if when is None and (when := self._moment(v)) is None:
            return None
        values = self._values
        components = res.get("component")
        try:  # the extractor's steps (Extractor._observation), in its order, through the same checks
            if components is None:
                if concept.kind == "panel" or (value := values.observation_value(res, concept, "Observation",
                                                                                 _UNPLACED)) is None:
                    return None
                low, high = values.reference_range(res, concept, _UNPLACED, _not_plain) \
                    if concept.kind == "quantity" and "referenceRange" in res else (None, None)
                readings: tuple[Reading, ...] = (Reading(concept.concept, when, value, key, key, low, high),)
                unverified = () if concept.verified else _unverified((concept,))
            else:
                found = self._panel(res, key, concept, when, components)
                if found is None:
                    return None
                readings, unverified = found
        except (BadInput, _NotPlain):
            return None
        return FastItem(self._stand_in(res), full_url, file, line, entry, key, readings, unverified, None,
                        res.get("meta"), v)

    def _panel(self, res: dict[str, Any], key: str, concept: ConceptRow, when: Moment, components: Any
               ) -> tuple[tuple[Reading, ...], tuple[str, ...]] | None:
        """An Observation with components (a BP panel): the readings of its own value and of each component."""
        if type(components) is not list:
            return None
        values = self._values
        own = concept.kind != "panel"
        readings: list[Reading] = []
        rows = [concept]  # the rows read (the run report names those not yet verified)
        if own:
            value = values.observation_value(res, concept, "Observation", _UNPLACED)
            if value is not None:
                low, high = values.reference_range(res, concept, _UNPLACED, _not_plain) \
                    if concept.kind == "quantity" and "referenceRange" in res else (None, None)
                readings.append(Reading(concept.concept, when, value, key, key, low, high))
        for comp in components:  # in order, as the extractor reads them; one that is not plain: None
            row = self._row(comp.get("code")) if type(comp) is dict and not _unusual(comp) else None
            if row is None:
                return None
            if row.kind == "panel":
                continue
            rows.append(row)
            value = values.observation_value(comp, row, component_path(row.code), _UNPLACED)
            if value is not None:
                readings.append(Reading(row.concept, when, value, key, key))
        if not readings:  # (also: a panel without a value of its own or of a component)
            return None
        return tuple(readings), () if all(r.verified for r in rows) else _unverified(tuple(rows))

    def _stand_in(self, res: dict[str, Any]) -> dict[str, Any]:
        """The FastItem's resource: resourceType and subject. A subject that is only a literal reference is
        shared by all its Observations (the index reads nothing else of it); any other is kept as it is."""
        subject = res.get("subject")
        if type(subject) is dict and type(ref := subject.get("reference")) is str:
            shared = self._subjects.get(ref)
            if shared is None:
                if len(self._subjects) > _SUBJECTS_MAX:
                    self._subjects.clear()
                shared = self._subjects[ref] = {"resourceType": "Observation", "subject": {"reference": ref}}
            return shared
        return {"resourceType": "Observation"} if subject is None else \
            {"resourceType": "Observation", "subject": subject}

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
