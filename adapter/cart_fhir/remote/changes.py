"""What a write must do to each of a patient's results: create, update, leave alone, retract, or keep the
clinician's version. Pure: the server's copies come in, the plan goes out.

Each resource cart-fhir writes carries its content hash as a `meta.tag` (CONTENT_TAG). On the next run:
- same hash as now computed -> unchanged, not written again (no new version, no audit noise);
- the server's copy still hashes to its tag, the new result differs -> updated (If-Match on its version);
- the server's copy no longer hashes to its tag (edited by someone else: a clinician's grade, a Condition
  confirmed or refuted, an AdverseEvent's outcome or seriousness) -> kept: never overwritten or retracted;
  the run report names it beside cart-fhir's own computation (clinician authority);
- ours on the server but no longer produced (the data were corrected) -> retracted: Observation `status`
  and Condition `verificationStatus` `entered-in-error` with a note naming the run; AdverseEvent, which has
  no status in R4, is deleted (README "Corrections").
The hash leaves out what the server owns (id, meta, narrative) and what changes every run (AdverseEvent
`recordedDate`, Provenance `recorded`), and reads references to our own resources as their business keys,
so a urn:uuid in the Bundle and the server id it became hash the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..constants import BASE, COND_VERIFICATION, ID_RUN

CONTENT_TAG = f"{BASE}/CodeSystem/content-hash"  # meta.tag: code = content hash of what cart-fhir wrote
VOLATILE = {"AdverseEvent": ("recordedDate",), "Provenance": ("recorded",)}
SERVER_OWNED = ("id", "meta", "text")


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


def with_hash(resource: dict[str, Any], digest: str) -> dict[str, Any]:
    """A copy carrying `digest` as its only content-hash tag (other tags kept)."""
    meta = dict(resource.get("meta") or {})
    meta["tag"] = [t for t in meta.get("tag") or [] if t.get("system") != CONTENT_TAG] + \
        [{"system": CONTENT_TAG, "code": digest}]
    return {**resource, "meta": meta}


def version_of(resource: Mapping[str, Any]) -> str | None:
    v = (resource.get("meta") or {}).get("versionId")
    return str(v) if v is not None else None


def business_key(resource: Mapping[str, Any]) -> str | None:
    """"Type?identifier=system|value" (or Provenance's run tag) as output/resources.py spells conditions."""
    rtype = resource.get("resourceType")
    if rtype == "Provenance":
        tags = [t for t in (resource.get("meta") or {}).get("tag") or [] if t.get("system") == ID_RUN]
        return f"Provenance?_tag={ID_RUN}|{tags[0].get('code')}" if tags else None
    ids = resource.get("identifier")
    ids = ids if isinstance(ids, list) else [ids] if isinstance(ids, dict) else []
    ours = [i for i in ids if isinstance(i, dict) and str(i.get("system", "")).startswith(f"{BASE}/identifier/")]
    return f"{rtype}?identifier={ours[0]['system']}|{ours[0].get('value')}" if ours else None


def clinician_owned(stored: Mapping[str, Any], to_key: Mapping[str, str]) -> bool:
    """True when someone else has changed or reviewed our result: it no longer hashes to any of its tags,
    or a person set a Condition's verification to confirmed/refuted (cart-fhir writes only provisional)."""
    tags = hash_tags(stored)
    if stored.get("resourceType") == "Condition":
        codes = {c.get("code") for c in (stored.get("verificationStatus") or {}).get("coding") or []
                 if isinstance(c, dict) and c.get("system") == COND_VERIFICATION}
        if codes & {"confirmed", "refuted"}:
            return True
    if not tags:
        return False  # written before content hashes (or by the transaction file): ours to update
    return content_hash(stored, to_key) not in tags


def retracted(stored: Mapping[str, Any]) -> bool:
    rtype = stored.get("resourceType")
    if rtype == "Observation":
        return stored.get("status") == "entered-in-error"
    if rtype == "Condition":
        return any(c.get("code") == "entered-in-error"
                   for c in (stored.get("verificationStatus") or {}).get("coding") or [] if isinstance(c, dict))
    return False


def retraction(stored: Mapping[str, Any], run: str) -> dict[str, Any] | None:
    """The entered-in-error version of a stored result (None: the type is deleted instead, AdverseEvent)."""
    note = {"text": f"Retracted by cart-fhir grading run {run}: no longer produced from the current data "
                    "(the source data were corrected)."}
    body = {k: v for k, v in stored.items() if k != "meta"}
    body["meta"] = {k: v for k, v in (stored.get("meta") or {}).items() if k in ("profile", "tag")}
    rtype = stored.get("resourceType")
    if rtype == "Observation":
        body["status"] = "entered-in-error"
    elif rtype == "Condition":
        body["verificationStatus"] = {"coding": [{"system": COND_VERIFICATION, "code": "entered-in-error",
                                                  "display": "Entered in Error"}]}
        # R4 con-5: no clinicalStatus when entered-in-error; con-4: an abatement needs a resolved clinicalStatus,
        # so the abatement goes too (the earlier version keeps both in the resource's history)
        body.pop("clinicalStatus", None)
        for k in [k for k in body if k.startswith("abatement")]:
            body.pop(k)
    else:
        return None
    body["note"] = [*(stored.get("note") or []), note]
    return body


@dataclass(frozen=True, slots=True)
class Kept:
    """A result a clinician changed: kept as the server holds it; cart-fhir's differing value beside it."""

    ref: str  # "Condition/123"
    server: str  # what the server holds, e.g. "grade 2"
    ours: str  # what cart-fhir computes now

    def line(self) -> str:
        return (f"{self.ref}: changed on the server by someone else, kept ({self.server}); "
                f"cart-fhir computes {self.ours}")


def summary(resource: Mapping[str, Any]) -> str:
    """A short, PHI-free description of a result's grade for the run report."""
    if "valueInteger" in resource:
        return f"grade {resource['valueInteger']}"
    stage = (resource.get("stage") or [{}])[0].get("summary") if resource.get("stage") else None
    for cc in [stage, *[e.get("valueCodeableConcept") for e in resource.get("extension") or []
                        if isinstance(e, dict)]]:
        for c in (cc or {}).get("coding") or []:
            if str(c.get("system", "")).endswith("/toxicity-grade"):
                return f"grade {c.get('code')}"
    status = resource.get("status") or (resource.get("outcome") or {}).get("coding", [{}])[0].get("code")
    return str(status or "a different result")
