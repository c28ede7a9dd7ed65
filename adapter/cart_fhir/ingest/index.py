"""Index input resources: resolve references (Type/id, urn:uuid fullUrls, absolute URLs) and group by patient."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from ..errors import BadInput, Location
from ..ours import is_ours
from ..report import RunReport
from .fast import FastItem
from .read import Item

# Resource types the adapter reads; everything else is counted as ignored in the run report.
USED_TYPES = frozenset({"Patient", "Observation", "MedicationAdministration", "MedicationStatement", "Procedure",
                        "Condition", "Medication"})
# Types joined to a patient through this element (FHIR R4).
SUBJECT_ELEMENT = {"Observation": "subject", "MedicationAdministration": "subject", "Procedure": "subject",
                   "Condition": "subject", "MedicationStatement": "subject"}
# Types read only when they are cart-fhir's own results coming back ($everything, an EHR export): a clinician's
# edit of them is a review (reviews.py); any other resource of these types is ignored like an unused type.
RESULT_TYPES = {"AdverseEvent": "subject"}


def used(res: dict[str, Any]) -> bool:
    """Whether the grading reads this resource at all (its type, or a result of ours of RESULT_TYPES)."""
    rtype = res.get("resourceType")
    return rtype in USED_TYPES or rtype in RESULT_TYPES and is_ours(res)


def ref_key(ref: str) -> str:
    """Normalise a literal reference to 'Type/id': drop a server base and a /_history/ version."""
    if ref.startswith(("urn:uuid:", "urn:oid:", "#")):
        return ref
    if "/_history/" in ref:
        ref = ref.split("/_history/", 1)[0]
    parts = ref.rstrip("/").split("/")
    if len(parts) >= 2:
        return f"{parts[-2]}/{parts[-1]}"
    return ref


_NO_TIME = datetime.min.replace(tzinfo=UTC)


def _version(meta: Any) -> tuple[datetime, int]:
    """(meta.lastUpdated as an instant, meta.versionId as a number): later versions compare greater."""
    if not isinstance(meta, dict):
        return (_NO_TIME, -1)
    last, vid = meta.get("lastUpdated"), meta.get("versionId")
    when = _NO_TIME
    if isinstance(last, str):
        try:
            when = datetime.fromisoformat(last)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
        except ValueError:
            when = _NO_TIME
    try:
        v = int(vid) if vid is not None else -1
    except (TypeError, ValueError):
        v = -1
    return (when, v)


def _meta(item: Item) -> Any:
    """The resource's meta (a fast-read Observation keeps it on its FastItem, ingest/fast.py)."""
    return item.meta if type(item) is FastItem else item.resource.get("meta")


class Indexed(msgspec.Struct, gc=False):
    """A resource kept by the index, with its key and where it was read. One per input resource: a msgspec
    Struct, like read.Item (a third of a slots dataclass's build time); it never refers back to itself."""

    resource: dict[str, Any]
    key: str
    item: Item

    @property
    def loc(self) -> Location:
        return self.item.loc


@dataclass(slots=True)
class InputIndex:
    """All used resources by key, with fullUrl aliases, and the clinical resources grouped by patient."""

    by_key: dict[str, Indexed] = field(default_factory=dict)
    alias: dict[str, str] = field(default_factory=dict)
    by_patient: dict[str, list[Indexed]] = field(default_factory=dict)
    medications: list[str] = field(default_factory=list)  # keys of the Medications, in by_key order

    def resolve(self, ref: str) -> Indexed | None:
        key = self.alias.get(ref) or ref_key(ref)
        return self.by_key.get(key)

    def key_of(self, ref: str) -> str:
        return self.alias.get(ref) or ref_key(ref)


def build_index(items: Iterable[Item | BadInput], report: RunReport) -> InputIndex:
    """First pass: keep the latest version of each resource; second: join clinical resources to patients."""
    idx = InputIndex()
    by_key, alias, ignored = idx.by_key, idx.alias, report.ignored  # hoisted: the loop runs per resource
    read = report.resources_read
    try:
        for item in items:
            if type(item) is FastItem:  # most of a run: a plain Observation, read as it was parsed (ingest/fast.py)
                read += 1
                key = item.key
                if item.full_url:
                    alias[item.full_url] = key
                prev = by_key.get(key)
                if prev is not None:
                    ignored["superseded version"] += 1  # as below
                    if _version(item.meta) < _version(_meta(prev.item)):
                        continue
                by_key[key] = Indexed(item.resource, key, item)
                continue
            if isinstance(item, BadInput):  # a bad file, line or entry read_all went past (one pass)
                report.error(item)
                continue
            read += 1
            res = item.resource
            rtype = res["resourceType"]
            if rtype not in USED_TYPES and not (rtype in RESULT_TYPES and is_ours(res)):
                if rtype == "OperationOutcome":
                    report.warn("OperationOutcome in the input skipped", item.loc)
                ignored[rtype] += 1
                continue
            rid = res.get("id")
            full_url = item.full_url
            if rid:
                key = f"{rtype}/{rid}"
            elif full_url and not full_url.startswith("urn:") and ref_key(full_url).startswith(rtype + "/"):
                key = ref_key(full_url)  # a server address ending in Type/id: relative references resolve to it
            else:
                # No id: the fullUrl, or else a key unique to this occurrence (two id-less resources never merge).
                key = full_url or f"{rtype}@{item.file}:{item.line}:{item.entry}#{read}"
            if full_url:
                alias[full_url] = key
            prev = by_key.get(key)
            if prev is not None:
                # The same resource twice (e.g. preliminary then amended): the latest version wins
                # (input-contract.md, "Everything else"); on a tie the later one in the input.
                ignored["superseded version"] += 1
                if _version(res.get("meta")) < _version(_meta(prev.item)):
                    continue
            by_key[key] = Indexed(res, key, item)
    finally:
        report.resources_read = read
    # One pass over every resource finds the Patients and the Medications (Engine counts those it used).
    for ent in by_key.values():
        rtype = ent.resource["resourceType"]
        if rtype == "Patient":
            idx.by_patient.setdefault(ent.key, [])
        elif rtype == "Medication":
            idx.medications.append(ent.key)
    subject_keys: dict[str, str] = {}  # a patient's resources all name the same subject: normalise it once
    # Fast-read Observations of one subject share one stand-in resource (ingest/fast.py): once one of them has
    # joined a patient, the next with that very resource joins the same list without the checks (they read
    # nothing but the resource). Only a join is remembered; a resource the checks refuse is checked each time.
    joined: dict[str, Any] | None = None
    joined_to: list[Indexed] = []
    for ent in by_key.values():
        if ent.resource is joined:
            joined_to.append(ent)
            continue
        rtype = ent.resource["resourceType"]
        element = SUBJECT_ELEMENT.get(rtype) or RESULT_TYPES.get(rtype)
        if element is None:
            continue
        subj = ent.resource.get(element)
        ref = subj.get("reference") if isinstance(subj, dict) else None
        if subj is not None and not isinstance(subj, dict):
            report.error(BadInput(f"{rtype}.{element} must be a Reference object", ent.loc))
            continue
        if not isinstance(ref, str):
            report.ignored[f"{rtype} without subject"] += 1
            report.warn(f"{rtype}.{element} has no literal reference: not joined to a patient", ent.loc)
            continue
        known = subject_keys.get(ref)
        key = known if known is not None else subject_keys.setdefault(ref, idx.key_of(ref))
        if key.startswith("urn:") and key not in by_key:
            report.error(BadInput(f"{element} refers to {ref}, which is not in the input", ent.loc))
            continue
        if not key.startswith("Patient/") and not (key in idx.by_key and
                                                   idx.by_key[key].resource["resourceType"] == "Patient"):
            report.ignored[f"{rtype} about a non-patient subject"] += 1
            continue
        if key not in idx.by_patient:
            report.error(BadInput(f"{element} refers to {ref}, which is not in the input", ent.loc))
            continue
        joined, joined_to = ent.resource, idx.by_patient[key]
        joined_to.append(ent)
    return idx
