"""A patient's write planned against what the server holds: one batch of searches reads our results there,
then each resource is created, updated (If-Match), left unchanged, retracted or kept (remote/changes.py).
Also the reference order every write follows: a resource after the resources it refers to."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..constants import ID_EPISODE, ID_GRADE
from ..output.ids import full_url
from ..output.resources import PatientResources, Written
from .changes import (
    Kept,
    business_key,
    clinician_owned,
    content_hash,
    hash_tags,
    retracted,
    retraction,
    summary,
    version_of,
    with_hash,
)
from .client import FhirClient, next_link, page_resources
from .errors import ServerError
from .outcome import PatientWrite, WriteFailed

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Op:
    """One entry of a patient's write: PUT (create or update) or DELETE (a retracted AdverseEvent)."""

    full_url: str
    body: dict[str, Any] | None  # before reference rewriting (urn:uuid references to our own resources)
    url: str  # conditional key, Type/stable-id or Type/server-id
    method: str = "PUT"
    if_match: str | None = None
    existed: bool = False
    retract: bool = False
    label: str = ""  # the business key, for messages


def read_existing(client: FhirClient, group: PatientResources, pw: PatientWrite) -> dict[str, dict[str, Any]]:
    """Our results for this patient on the server, by business key (one batch of searches)."""
    if not group.patient_key.startswith("Patient/"):
        return {}
    queries = [f"Observation?subject={group.patient_key}&identifier={ID_GRADE}|",
               f"Condition?subject={group.patient_key}&identifier={ID_EPISODE}|",
               f"AdverseEvent?subject={group.patient_key}"]
    queries += [w.condition for w in group.resources if w.condition.startswith("Provenance?")]
    found: dict[str, dict[str, Any]] = {}
    dupes: dict[str, list[str]] = {}
    for res in _search_all(client, queries):
        key = business_key(res)
        if key is None or not isinstance(res.get("id"), str):
            continue
        ref = f"{res['resourceType']}/{res['id']}"
        if key in found and f"{found[key]['resourceType']}/{found[key]['id']}" != ref:
            dupes.setdefault(key, [f"{found[key]['resourceType']}/{found[key]['id']}"]).append(ref)
        found[key] = res
    if dupes:
        pw.duplicates = [f"{k.partition('?')[0]} {k.partition('?')[2].replace('=', ' ', 1)}: {', '.join(v)}"
                         for k, v in dupes.items()]
        raise WriteFailed("GET", client.base_url, 412, detail="a business identifier matches several "
                          "resources on the server; nothing was written for this patient")
    return found

def _search_all(client: FhirClient, queries: list[str]) -> list[dict[str, Any]]:
    sep = "&" if client.page_size else ""
    entries = [{"request": {"method": "GET", "url": f"{q}{sep}_count={client.page_size}"}} for q in queries]
    out: list[dict[str, Any]] = []
    try:
        answer = client.bundle({"resourceType": "Bundle", "type": "batch", "entry": entries})
        replies = answer.get("entry") or []
        if len(replies) != len(queries):
            raise ServerError("POST", client.base_url, 200, detail="batch of searches: wrong entry count")
        for q, reply in zip(queries, replies, strict=True):
            page = reply.get("resource") if isinstance(reply, dict) else None
            if not str((reply.get("response") or {}).get("status", "")).startswith("2") or \
                    not isinstance(page, dict) or page.get("resourceType") != "Bundle":
                raise ServerError("POST", client.base_url, 200, detail=f"batch search {q.split('?')[0]}")
            out.extend(page_resources(page))
            nxt = next_link(page)
            if nxt is not None:
                out.extend(client.pages(nxt, None))
    except ServerError as exc:
        if exc.status is None or exc.status in (401, 403) or (exc.status or 0) >= 500:
            raise
        log.info("no batch of searches (%s): searching one type at a time", exc.status)
        out = []
        for q in queries:
            rtype, _, query = q.partition("?")
            out.extend(client.pages(rtype, dict(p.split("=", 1) for p in query.split("&"))))
    return out

def plan(group: PatientResources, existing: dict[str, dict[str, Any]], pw: PatientWrite, *,
         resolved: dict[str, str], url_of: Callable[[Written], str], run: str) -> list[Op]:
    """What to do with each of the patient's resources (module docstring); `resolved` learns the server ids
    of the results already there (fullUrl -> "Type/id")."""
    to_key = {v: k for k, v in resolved.items()}
    for key, res in existing.items():
        to_key[f"{res['resourceType']}/{res['id']}"] = _full_url_of(key)
        resolved[_full_url_of(key)] = f"{res['resourceType']}/{res['id']}"
    produced = {w.condition for w in group.resources}
    writes: list[Op] = []
    provenance: list[Op] = []
    for w in by_level(group.resources):
        digest = content_hash(w.resource)
        stored = existing.get(w.condition)
        body = with_hash(w.resource, digest)
        if stored is None:
            writes.append(Op(w.full_url, body, url_of(w), label=w.condition))
            resolved.pop(w.full_url, None)
            continue
        ref = f"{stored['resourceType']}/{stored['id']}"
        if clinician_owned(stored, to_key, w.resource):
            if digest not in hash_tags(stored):
                pw.kept.append(Kept(ref, summary(stored), summary(w.resource)))
            else:
                pw.kept.append(Kept(ref, summary(stored), "the same as before"))
            continue
        if digest in hash_tags(stored) or not hash_tags(stored):  # untagged here: holds exactly this
            pw.unchanged += 1
            continue
        version = version_of(stored)
        op = Op(w.full_url, body, ref, if_match=f'W/"{version}"' if version else None, existed=True,
                label=w.condition)
        (provenance if w.condition.startswith("Provenance?") else writes).append(op)
    for key, stored in existing.items():
        if key in produced or key.startswith("Provenance?") or retracted(stored):
            continue
        ref = f"{stored['resourceType']}/{stored['id']}"
        if clinician_owned(stored, to_key) or not hash_tags(stored):  # untagged: someone removed our tag
            pw.kept.append(Kept(ref, summary(stored), "no such result any more (not retracted)"))
            continue
        version = version_of(stored)
        void = retraction(stored, run)
        if_match = f'W/"{version}"' if version else None
        if void is None:
            writes.append(Op(_full_url_of(key), None, ref, "DELETE", if_match, True, True, key))
        else:
            void = with_hash(void, content_hash(void, to_key))
            writes.append(Op(_full_url_of(key), void, ref, "PUT", if_match, True, True, key))
    # The Provenance records the run: written whenever anything else is (or it changed, or is missing).
    prov = [w for w in group.resources if w.condition.startswith("Provenance?")]
    if writes and prov and not provenance:
        stored = existing.get(prov[0].condition)
        if stored is not None:
            version = version_of(stored)
            pw.unchanged -= 1
            provenance.append(Op(prov[0].full_url, with_hash(prov[0].resource, content_hash(prov[0].resource)),
                                 f"Provenance/{stored['id']}", if_match=f'W/"{version}"' if version else None,
                                 existed=True, label=prov[0].condition))
    pw.complete = not prov or prov[0].condition in existing
    tail = [o for o in writes if o.label.startswith("Provenance?")]
    return [o for o in writes if o not in tail] + tail + provenance


def _full_url_of(key: str) -> str:
    """The fullUrl output/resources.py gives the resource with this business key."""
    return full_url(*key.partition("=")[2].split("|", 1))


def op_levels(ops: list[Op]) -> list[list[Op]]:
    """Ops grouped by reference depth among themselves (batches: referenced resources first)."""
    as_written = [Written(o.full_url, o.body or {}, o.label) for o in ops]
    by_url = {o.full_url: o for o in ops}
    return [[by_url[w.full_url] for w in level] for level in levels(as_written)]


def by_level(resources: list[Written]) -> list[Written]:
    return [w for level in levels(resources) for w in level]


def levels(resources: list[Written]) -> list[list[Written]]:
    """Resources grouped by reference depth within the list (0: refers to none of the others), order kept."""
    urls = {w.full_url for w in resources}
    depth: dict[str, int] = {}

    def level(w: Written, trail: frozenset[str]) -> int:
        if w.full_url in depth:
            return depth[w.full_url]
        deps = [by_url[u] for u in _urn_refs(w.resource) if u in urls and u != w.full_url and u not in trail]
        d = 1 + max((level(dep, trail | {w.full_url}) for dep in deps), default=-1)
        depth[w.full_url] = d
        return d

    by_url = {w.full_url: w for w in resources}
    out: dict[int, list[Written]] = {}
    for w in resources:
        out.setdefault(level(w, frozenset()), []).append(w)
    return [out[k] for k in sorted(out)]


def _urn_refs(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "reference" and isinstance(v, str) and v.startswith("urn:uuid:"):
                yield v
            elif isinstance(v, (dict, list)):
                yield from _urn_refs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _urn_refs(v)
