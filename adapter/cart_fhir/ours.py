"""cart-fhir's own results, wherever they come back (a server's $everything, an EHR export, a CDS prefetch):
recognised by our identifier systems, hashed as written, and whether someone else has changed them since.

Pure and at the base: ingest uses it to leave our results out of the input findings, remote/ to plan writes
(remote/changes.py) and the summaries to show a clinician's review (reviews.py).

Each resource cart-fhir writes to a server carries its content hash as a `meta.tag` (CONTENT_TAG). The hash
leaves out what the server owns (id, meta, narrative) and what changes every run (AdverseEvent
`recordedDate`, Provenance `recorded`), and reads references to our own resources as their business keys,
so a urn:uuid in the Bundle and the server id it became hash the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from .constants import BASE, COND_VERIFICATION, ID_RUN

CONTENT_TAG = f"{BASE}/CodeSystem/content-hash"  # meta.tag: code = content hash of what cart-fhir wrote
OUR_IDENTIFIERS = f"{BASE}/identifier/"  # every business identifier system of ours starts so
VOLATILE = {"AdverseEvent": ("recordedDate",), "Provenance": ("recorded",)}
SERVER_OWNED = ("id", "meta", "text")
REVIEWED = frozenset({"confirmed", "refuted"})  # Condition.verificationStatus a person sets (we write provisional)


def is_ours(resource: Mapping[str, Any]) -> bool:
    """A result cart-fhir wrote: a business identifier of ours (every Observation, Condition and AdverseEvent
    output/resources.py builds has one)."""
    ids = resource.get("identifier")
    if not ids:
        return False
    for i in ids if isinstance(ids, list) else (ids,):
        if isinstance(i, dict):
            system = i.get("system")
            if isinstance(system, str) and system.startswith(OUR_IDENTIFIERS):
                return True
    return False


def content_hash(resource: Mapping[str, Any], to_key: Mapping[str, str] | None = None) -> str:
    """SHA-256 (32 hex) of the resource without server-owned and per-run elements; references found in
    `to_key` (server "Type/id" -> our fullUrl) read as that key."""
    skip = set(SERVER_OWNED) | set(VOLATILE.get(str(resource.get("resourceType")), ()))
    body = {k: v for k, v in resource.items() if k not in skip}
    canon = orjson.dumps(_normalise(body, to_key or {}), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canon).hexdigest()[:32]


def _normalise(obj: Any, to_key: Mapping[str, str]) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "reference" and isinstance(v, str):
                ref = v.split("/_history/")[0]
                ref = "/".join(ref.split("/")[-2:]) if not ref.startswith("urn:") else ref
                out[k] = to_key.get(ref, ref)
            else:
                out[k] = _normalise(v, to_key)
        return out
    if isinstance(obj, list):
        return [_normalise(v, to_key) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)  # a server may store 39.0 as 39
    return obj


def hash_tags(resource: Mapping[str, Any]) -> list[str]:
    """Our content-hash tags (some servers keep the tags of earlier versions: R4 meta.tag is additive)."""
    tags = (resource.get("meta") or {}).get("tag") or []
    return [str(t.get("code")) for t in tags if isinstance(t, dict) and t.get("system") == CONTENT_TAG]


def with_hash(resource: Mapping[str, Any], digest: str) -> dict[str, Any]:
    """A copy carrying `digest` as its only content-hash tag (other tags kept)."""
    meta = dict(resource.get("meta") or {})
    meta["tag"] = [t for t in meta.get("tag") or [] if t.get("system") != CONTENT_TAG] + \
        [{"system": CONTENT_TAG, "code": digest}]
    return {**resource, "meta": meta}


def business_key(resource: Mapping[str, Any]) -> str | None:
    """"Type?identifier=system|value" (or Provenance's run tag) as output/resources.py spells conditions."""
    rtype = resource.get("resourceType")
    if rtype == "Provenance":
        tags = [t for t in (resource.get("meta") or {}).get("tag") or [] if t.get("system") == ID_RUN]
        return f"Provenance?_tag={ID_RUN}|{tags[0].get('code')}" if tags else None
    ids = resource.get("identifier")
    ids = ids if isinstance(ids, list) else [ids] if isinstance(ids, dict) else []
    ours = [i for i in ids if isinstance(i, dict) and str(i.get("system", "")).startswith(OUR_IDENTIFIERS)]
    return f"{rtype}?identifier={ours[0]['system']}|{ours[0].get('value')}" if ours else None


def verification(resource: Mapping[str, Any]) -> set[str]:
    """A Condition's verificationStatus codes (condition-ver-status)."""
    return {str(c.get("code")) for c in (resource.get("verificationStatus") or {}).get("coding") or []
            if isinstance(c, dict) and c.get("system") == COND_VERIFICATION}


def clinician_owned(stored: Mapping[str, Any], to_key: Mapping[str, str], now: Mapping[str, Any] | None = None
                    ) -> bool:
    """True when someone else has changed or reviewed our result: it no longer hashes to any of its tags,
    or a person set a Condition's verification to confirmed/refuted (cart-fhir writes only provisional).

    Every writer of cart-fhir tags what it writes (write-back, push, the service, and the transaction file
    `grade --bundle-type transaction` hands out), so a result of ours without a content-hash tag had it
    removed by someone else's edit. Given `now`, what cart-fhir produces for it now, such a result is ours
    to touch only while it holds exactly that (then there is nothing to write anyway): never overwritten on
    a guess. Without `now` (the summaries), only a tag or a confirmed/refuted status tells."""
    tags = hash_tags(stored)
    if stored.get("resourceType") == "Condition" and verification(stored) & REVIEWED:
        return True
    if not tags:
        return now is not None and content_hash(stored, to_key) != content_hash(now)
    return content_hash(stored, to_key) not in tags
