"""How each output resource is addressed in a transaction: a conditional key R4 defines, or a stable id.

Observation, Condition and Device have an R4 `identifier` search parameter, and every type has `_tag`
(Provenance's run key), so `PUT [type]?identifier=system|value` is idempotent on any R4 server. R4 defines
no `identifier` search parameter for AdverseEvent (http://hl7.org/fhir/R4/adverseevent.html#search): a
server answers 400 to that search or ignores it and creates the AdverseEvent again on every post. Those go
as `PUT AdverseEvent/cart-<identifier value>`, an update by a stable client id (FHIR R4 update-as-create).
Each entry carries its content-hash `meta.tag`, as write-back's do (ours.py, remote/plan.py).
"""

from __future__ import annotations

from typing import Any

from ..ours import content_hash, with_hash
from .resources import Written

# Types whose business identifier R4 cannot search: written by stable id, not by a conditional update.
BY_ID_TYPES = frozenset({"AdverseEvent"})


def stable_id(w: Written) -> str:
    """`cart-` + the identifier value (a 32-hex stable hash): a valid R4 id, the same on every run."""
    return "cart-" + w.condition.partition("=")[2].rpartition("|")[2]


def request_url(w: Written) -> str:
    """The PUT URL of a transaction entry: the conditional key, or `Type/<stable id>` for BY_ID_TYPES."""
    rtype = w.condition.partition("?")[0]
    return f"{rtype}/{stable_id(w)}" if rtype in BY_ID_TYPES else w.condition


def transaction_entry(w: Written) -> dict[str, Any]:
    """A transaction entry for `w`; an update by id carries that id in the body (FHIR R4 update rules)."""
    url = request_url(w)
    # Tagged with its content hash like every resource cart-fhir writes (ours.py): a later write-back then
    # knows it unchanged, or changed by someone else (kept), instead of guessing.
    resource = with_hash(w.resource, content_hash(w.resource))
    if "?" not in url:
        resource = {"resourceType": resource["resourceType"], "id": url.split("/", 1)[1],
                    **{k: v for k, v in resource.items() if k not in ("resourceType", "id")}}
    return {"fullUrl": w.full_url, "resource": resource, "request": {"method": "PUT", "url": url}}
