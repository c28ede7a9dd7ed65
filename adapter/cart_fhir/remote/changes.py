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
The hash, the business key and `clinician_owned` live in ours.py (ingest and the summaries need them too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..constants import COND_VERIFICATION
from ..ours import CONTENT_TAG, business_key, clinician_owned, content_hash, hash_tags, with_hash

__all__ = ["CONTENT_TAG", "Kept", "business_key", "clinician_owned", "content_hash", "hash_tags", "retracted",
           "retraction", "summary", "version_of", "with_hash"]


def version_of(resource: Mapping[str, Any]) -> str | None:
    v = (resource.get("meta") or {}).get("versionId")
    return str(v) if v is not None else None


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
