"""CDS Hooks 2.0 feedback: an accepted or overridden card recorded as the clinician's review of the result.

The service remembers which result each card it issued is about (card uuid -> the episode Condition's
business key; card_store.py: one store shared by all workers of `cart-fhir serve`): CDS Hooks feedback
carries only the card's uuid. On feedback the Condition is
read from the upstream FHIR server and its `verificationStatus` set by the clinician's decision (accepted:
`confirmed`, overridden: `refuted`), with a note giving the outcome, its time and the override reason. A
Condition confirmed or refuted by a person is never overwritten or retracted by a later run
(remote/changes.py, clinician authority). Cards without a Condition of ours (a CAR-HEMATOTOX score, an
event recorded by an input Condition) and cards this service did not issue (or has forgotten) are acknowledged,
not recorded.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from ..constants import COND_VERIFICATION
from ..pipeline import RunResult
from ..remote.client import FhirClient
from ..remote.errors import ServerError
from ..reviews import episode_key, event_key
from .cards import NAMESPACE
from .errors import ServiceError

log = logging.getLogger("cart_fhir.cds")

DECISION = {"accepted": ("confirmed", "Confirmed"), "overridden": ("refuted", "Refuted")}
FEEDBACK_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["feedback"], "properties": {"feedback": {"type": "array", "minItems": 1,
        "maxItems": 100, "items": {"type": "object", "required": ["card", "outcome", "outcomeTimestamp"],
        "properties": {
            "card": {"type": "string", "minLength": 1, "maxLength": 64},
            "outcome": {"enum": ["accepted", "overridden"]},
            "outcomeTimestamp": {"type": "string", "maxLength": 64},
            "acceptedSuggestions": {"type": "array"},
            "overrideReason": {"type": "object", "properties": {
                "reason": {"type": "object"}, "userComment": {"type": "string", "maxLength": 2000}}}}}}}}


def card_keys(result: RunResult, patient_id: str) -> dict[str, str]:
    """For every card toxicity_cards can issue: its uuid -> the business key of the episode Condition, the
    same identifiers output/resources.py writes (daily episodes and events with a Condition of our own)."""
    out: dict[str, str] = {}
    for pr in result.patients:
        if pr.patient.id != patient_id:
            continue
        for cr in pr.courses:
            ref = cr.course.infusion.ref
            for tox, eps in cr.episodes.items():
                for ep in eps:
                    card = str(uuid.uuid5(NAMESPACE, f"{patient_id}|{ref}|{tox.value}|episode-{ep.number}"))
                    out[card] = episode_key(cr.course, ep, result.tables)
            for ev in cr.events:
                if ev.condition_ref is None:  # an event an input Condition records has no Condition of ours
                    card = str(uuid.uuid5(NAMESPACE, f"{patient_id}|{ref}|{ev.toxicity.value}|event-{ev.key}"))
                    out[card] = event_key(cr.course, ev)
    return out


def record(client: FhirClient, key: str, item: dict[str, Any]) -> str:
    """Set the Condition's verificationStatus and note; If-Match on the version read (re-read once on 412)."""
    rtype, _, query = key.partition("?")
    for attempt in range(2):
        found = list(client.search(rtype, identifier=query.partition("=")[2]))
        if len(found) != 1:
            return f"not recorded: {len(found)} Conditions hold this card's identifier"
        cond = found[0]
        code, display = DECISION[item["outcome"]]
        cond["verificationStatus"] = {"coding": [{"system": COND_VERIFICATION, "code": code, "display": display}]}
        cond["note"] = [*(cond.get("note") or []), {"time": item["outcomeTimestamp"], "text": _note(item)}]
        version = (cond.get("meta") or {}).get("versionId")
        headers = {"If-Match": f'W/"{version}"'} if version else None
        try:
            client.http.put(f"{rtype}/{cond['id']}", cond, headers=headers)
            return f"recorded on {rtype}/{cond['id']} as {code}"
        except ServerError as exc:
            if exc.status == 412 and attempt == 0:
                continue  # someone changed it meanwhile: read again
            raise ServiceError(502, f"the review could not be written: {exc.message}", code="transient") from exc
    return "not recorded"


def _note(item: dict[str, Any]) -> str:
    text = f"Clinician review of the cart-fhir CDS Hooks card {item['card']}: {item['outcome']}"
    reason = (item.get("overrideReason") or {}).get("reason") or {}
    if reason:
        text += f"; override reason: {reason.get('display') or reason.get('code')} ({reason.get('system')})"
    comment = (item.get("overrideReason") or {}).get("userComment")
    if comment:
        text += f"; comment: {comment}"
    return text


def check_feedback(body: Any) -> list[dict[str, Any]]:
    """The fields CDS Hooks 2.0 requires of a feedback item; 400 naming the first one missing or wrong."""
    items = body.get("feedback") if isinstance(body, dict) else None
    if not isinstance(items, list) or not 0 < len(items) <= 100:
        raise ServiceError(400, "expected {\"feedback\": [...]} with 1 to 100 items", expression="feedback")
    for i, item in enumerate(items):
        where = f"feedback[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("card"), str) or not 0 < len(item["card"]) <= 64:
            raise ServiceError(400, "card (the card's uuid) is required", expression=f"{where}.card")
        if not isinstance(item.get("outcome"), str) or item["outcome"] not in DECISION:
            raise ServiceError(400, "outcome must be accepted or overridden", expression=f"{where}.outcome")
        stamp = item.get("outcomeTimestamp")
        if not isinstance(stamp, str) or len(stamp) > 64:
            raise ServiceError(400, "outcomeTimestamp (an instant) is required", expression=f"{where}.outcomeTimestamp")
        if not isinstance(item.get("acceptedSuggestions", []), list):
            raise ServiceError(400, "acceptedSuggestions must be an array", expression=f"{where}.acceptedSuggestions")
        reason = item.get("overrideReason")
        comment = reason.get("userComment", "") if isinstance(reason, dict) else ""
        if "overrideReason" in item and (not isinstance(reason, dict) or not isinstance(reason.get("reason", {}), dict)
                                   or not isinstance(comment, str) or len(comment) > 2000):
            raise ServiceError(400, "overrideReason must be {reason: Coding, userComment: string of at most 2000 "
                               "characters}", expression=f"{where}.overrideReason")
    return items
