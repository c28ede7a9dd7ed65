"""CDS Hooks 2.0 service `cart-toxicity` (hook patient-view): discovery, and cards from prefetch or fhirServer."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, request

from ..constants import FHIR_ID
from ..ingest.index import ref_key
from ..ingest.read import Item, read_bundle
from ..remote.client import FhirClient, next_link, page_resources
from ..remote.read import PatientNotFound, PatientReader
from .app_launch import timeline_link
from .card_store import CARD_INDEX, CardIndex, MemoryCardIndex
from .cards import criteria_of, toxicity_cards
from .context import Services, services
from .errors import ServiceError, fhir_response
from .feedback import FEEDBACK_SCHEMA, card_keys, check_feedback, record
from .guard import json_body
from .openapi import check, document

log = logging.getLogger("cart_fhir.cds")
cds = Blueprint("cds", __name__)

SERVICE_ID = "cart-toxicity"
HOOK = "patient-view"
SOURCE_NAME = "cds-hooks prefetch"

# Prefetch templates (CDS Hooks 2.0 "Prefetch template"): everything the grading reads, one search per type.
# The spec asks the EHR for one page without `next` links; _count=1000 asks for a page that large.
PREFETCH: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}&_count=1000",
    "medicationAdministrations": "MedicationAdministration?patient={{context.patientId}}"
                                 "&_include=MedicationAdministration:medication&_count=1000",
    "medicationStatements": "MedicationStatement?patient={{context.patientId}}"
                            "&_include=MedicationStatement:medication&_count=1000",
    "procedures": "Procedure?patient={{context.patientId}}&_count=1000",
    "conditions": "Condition?patient={{context.patientId}}&_count=1000",
}
USAGE = ("Grades CAR-T toxicities of the patient's most recent CAR-T infusion (CRS and ICANS by ASTCT 2019, IEC-HS, "
         "ICAHT, infections, other neurotoxicity, CAR-HEMATOTOX). Needs the prefetch above, or a fhirServer with "
         "fhirAuthorization granting read access to Patient, Observation, MedicationAdministration, "
         "MedicationStatement, Medication, Procedure and Condition. The infusion must be coded (RxNorm CAR-T "
         "product or CPT 38228). Requests are signed JWTs (RS384 or ES384) when the service runs with auth on.")
DISCOVERY = {"services": [{
    "hook": HOOK, "id": SERVICE_ID, "title": "CAR-T toxicity grades",
    "description": "Current CAR-T cell therapy toxicity grades (CRS, ICANS, IEC-HS, ICAHT, infections, other "
                   "neurotoxicity) of the most recent infusion, with the evidence and the criteria that set them.",
    "prefetch": PREFETCH, "usageRequirements": USAGE,
}]}

# What the request check enforces of a prefetch value; the rest of a resource is the grading's to judge
# (invalid resources are skipped and logged, the card response still comes).
FHIR_SERVER_PATTERN = r"^(https://[A-Za-z0-9.\-]+|http://(127\.0\.0\.1|localhost|\[::1\]))(:[0-9]{1,5})?(/[^\s]*)?$"
_RESOURCE = {"type": "object", "required": ["resourceType"], "properties": {"resourceType": {"type": "string"}}}
REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["hook", "hookInstance", "context"],
    "properties": {
        "hook": {"const": HOOK},
        "hookInstance": {"type": "string", "minLength": 1, "maxLength": 128},
        # https only (the EHR's access token travels to it); plain http to a loopback host, for local trials.
        "fhirServer": {"type": "string", "pattern": FHIR_SERVER_PATTERN},
        "fhirAuthorization": {"type": "object", "required": ["access_token", "token_type"], "properties": {
            "access_token": {"type": "string"},
            "token_type": {"type": "string", "pattern": "^[Bb][Ee][Aa][Rr][Ee][Rr]$"},
            "expires_in": {"type": "integer"}, "scope": {"type": "string"}, "subject": {"type": "string"}}},
        "context": {"type": "object", "required": ["patientId"], "properties": {
            "patientId": {"type": "string", "pattern": f"^(Patient/)?{FHIR_ID}$"},
            "userId": {"type": "string"}, "encounterId": {"type": "string"}}},
        "prefetch": {"type": "object", "additionalProperties": {"anyOf": [{"type": "null"}, _RESOURCE]}},
    },
    "dependentRequired": {"fhirAuthorization": ["fhirServer"]},  # CDS Hooks 2.0 cds-r-1
}
CARD = {"type": "object", "required": ["summary", "indicator", "source"], "properties": {
    "uuid": {"type": "string"}, "summary": {"type": "string", "maxLength": 140}, "detail": {"type": "string"},
    "indicator": {"enum": ["info", "warning", "critical"]}, "source": {"type": "object"},
    "links": {"type": "array", "items": {"type": "object"}}}}
CARDS = {"type": "object", "required": ["cards"], "properties": {"cards": {"type": "array", "items": CARD}}}


@cds.get("/cds-services")
@document("CDS Hooks discovery: the cart-toxicity service, its hook and prefetch templates", tag="CDS Hooks",
          secured=False, response_type="application/json",
          responses={200: ("the services", {"type": "object", "required": ["services"]})})
def discovery() -> Response:
    # CDS Hooks 2.0: the discovery endpoint is public (the EHR reads it to register the service).
    return fhir_response(DISCOVERY, mimetype="application/json")


@cds.post(f"/cds-services/{SERVICE_ID}")
@document("CDS Hooks patient-view: cards with the current CAR-T toxicity grades", tag="CDS Hooks",
          request=REQUEST_SCHEMA, request_types=("application/json",), response_type="application/json",
          secured=True, responses={
              200: ("cards (none when nothing is graded)", CARDS),
              412: ("prefetch data missing and no fhirServer to read it from (CDS Hooks 2.0)", "OperationOutcome"),
              502: ("the EHR's fhirServer answered an error", "OperationOutcome"),
              504: ("the EHR's fhirServer did not answer", "OperationOutcome")})
def patient_view() -> Response:
    svc = services()
    if svc.cds_verifier is not None:
        # "Trusting CDS Clients": the EHR's JWT, audience = this endpoint's URL.
        svc.cds_verifier.verify(request.headers.get("Authorization"), service_url=request.base_url)
    body = json_body()
    pid = _check_request(body)
    items = _gather(svc, body, pid)
    # Not strict: an EHR record with one odd resource still gets its cards; the odd one is skipped (and logged).
    with svc.grading_slot():
        result = svc.engine.grade(items, strict=False)
        if result.report.errors:
            log.info("cds: %d input resource(s) skipped as invalid", len(result.report.errors))
        cards = toxicity_cards(result, source_url=request.host_url.rstrip("/") + "/cds-services",
                               timeline_url=timeline_link(svc.settings.timeline_url), patient_id=pid,
                               criteria=criteria_of(svc.engine))
    _card_index().remember(cards, card_keys(result, pid))
    log.info("cds %s hookInstance=%s patient=%s cards=%d", HOOK, body["hookInstance"], pid, len(cards))
    return fhir_response({"cards": cards}, mimetype="application/json")


@cds.post(f"/cds-services/{SERVICE_ID}/feedback")
@document("CDS Hooks feedback: accepted or overridden cards recorded as the clinician's review", tag="CDS Hooks",
          request=FEEDBACK_SCHEMA, request_types=("application/json",), response_type="application/json",
          secured=True, responses={200: ("acknowledged", {"type": "object"}),
                                   502: ("the review could not be written upstream", "OperationOutcome")})
def feedback() -> Response:
    """CDS Hooks 2.0 "Feedback": each accepted/overridden card of ours sets its episode Condition's
    verificationStatus (confirmed/refuted) on the upstream server, with the override reason in a note."""
    svc = services()
    if svc.cds_verifier is not None:
        svc.cds_verifier.verify(request.headers.get("Authorization"), service_url=request.base_url)
    items = check_feedback(json_body())
    index = _card_index()
    for item in items:
        key = index.get(item["card"])
        if key is None or svc.settings.server is None:
            outcome = "not recorded: " + ("no result of ours behind this card (or not issued by this service)"
                                          if key is None else "no upstream FHIR server")
        else:
            outcome = record(svc.upstream(), key, item)
        log.info("cds feedback card=%s outcome=%s: %s", item["card"], item["outcome"], outcome)
    return fhir_response({}, mimetype="application/json")


def _card_index() -> CardIndex:
    """Which result each issued card is about: the app's store (create_app opens it: shared by every worker
    when CART_FHIR_CARD_STORE is set, as `cart-fhir serve` does), else one per process."""
    return current_app.extensions.setdefault(CARD_INDEX, MemoryCardIndex())  # type: ignore[no-any-return]


# ---- request -----------------------------------------------------------------------------------

def _check_request(body: Any) -> str:
    """The call checked against REQUEST_SCHEMA, the same document /openapi.json publishes (one source: they
    cannot drift); then what no schema can say (this service's fhirServer allow-list). Returns the patient id."""
    check(REQUEST_SCHEMA, body, "")
    server = body.get("fhirServer")
    if server is not None and not services().settings.fhir_server_allowed(server):
        raise ServiceError(400, "fhirServer is not one this service may call (CART_FHIR_CDS_FHIR_SERVERS)",
                           expression="fhirServer")
    return str(body["context"]["patientId"]).removeprefix("Patient/")


# ---- data: prefetch first, then the EHR's FHIR server --------------------------------------------

def _gather(svc: Services, body: dict[str, Any], pid: str) -> list[Item]:
    """Resources from the prefetch; what the EHR did not send is read from fhirServer.

    CDS Hooks 2.0 Prefetch: a key the EHR could not (or chose not to) satisfy is left out, or (2.0) carries an
    OperationOutcome; a key whose search found nothing is null. A searchset with a `next` link is incomplete.
    """
    prefetch: dict[str, Any] = body.get("prefetch") or {}
    resources: list[dict[str, Any]] = []
    missing: list[str] = []
    pages: list[str] = []  # `next` links of incomplete prefetch searches
    for key in PREFETCH:
        value = prefetch.get(key)
        if value is not None and not (isinstance(value, dict) and isinstance(value.get("resourceType"), str)):
            raise ServiceError(400, f"prefetch.{key} must be a FHIR resource or null", expression=f"prefetch.{key}")
        if key not in prefetch or _failed(value) or (key == "patient" and value is None):
            missing.append(key)
        elif isinstance(value, dict) and value.get("resourceType") == "Bundle":
            resources.extend(r for r in page_resources(value) if r["resourceType"] != "OperationOutcome")
            nxt = next_link(value)
            if nxt is not None:
                pages.append(nxt)
        elif value is not None:
            resources.append(value)
    if missing or pages:
        server = body.get("fhirServer")
        if not server:
            what = ", ".join(missing) or "the rest of a paged search"
            raise ServiceError(412, f"prefetch missing ({what}) and no fhirServer to fetch from")
        token = (body.get("fhirAuthorization") or {}).get("access_token")
        client = svc.client_for(server, token)
        try:
            if len(missing) == len(PREFETCH):
                return PatientReader(client, svc.engine.terminology).patient(pid)
            resources = _fetch(client, pid, missing, pages, resources)
        except PatientNotFound as exc:
            raise ServiceError(412, f"Patient/{pid} was not found on fhirServer") from exc
        finally:
            client.close()
        log.info("cds: read %d prefetch key(s) and %d page(s) from fhirServer", len(missing), len(pages))
    if not any(r.get("resourceType") == "Patient" for r in resources):
        raise ServiceError(412, f"prefetch holds no Patient/{pid}")
    return list(read_bundle({"resourceType": "Bundle", "type": "collection",
                             "entry": [{"resource": r} for r in resources]}, SOURCE_NAME))


def _fetch(client: FhirClient, pid: str, missing: list[str], pages: list[str],
           resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only what the prefetch lacks: the missing templates, the rest of paged searches, unincluded Medications."""
    found = list(resources)
    for key in missing:
        query = PREFETCH[key].replace("{{context.patientId}}", pid)
        if key == "patient":
            found.append(client.read("Patient", pid))
        else:
            path, _, params = query.partition("?")
            found.extend(client.pages(path, _params(params)))
    for url in pages:
        found.extend(client.pages(url, None))  # FhirHttp refuses a next link to another host
    have = {f"Medication/{r.get('id')}" for r in found if r.get("resourceType") == "Medication"}
    wanted = sorted({ref_key(ref) for r in found
                     if r.get("resourceType") in ("MedicationAdministration", "MedicationStatement")
                     for ref in [(r.get("medicationReference") or {}).get("reference")]
                     if isinstance(ref, str) and ref_key(ref).startswith("Medication/")} - have)
    if wanted:
        found.extend(client.search("Medication", _id=",".join(k.split("/", 1)[1] for k in wanted)))
    return found


def _params(query: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in query.split("&"):
        name, _, value = part.partition("=")
        out.setdefault(name, []).append(value)
    return out


def _failed(value: Any) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"
