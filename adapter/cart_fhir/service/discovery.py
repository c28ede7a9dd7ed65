"""What the service says about itself, generated from the running configuration: the CapabilityStatement
(operations only when they can answer 2xx, security as configured, JSON only) and SMART discovery
(`.well-known/smart-configuration`, the `oauth-uris` extension) when inbound auth names its token endpoint."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from .. import __version__
from ..constants import BASE
from .artefacts import TYPES as ARTEFACT_TYPES
from .config import ServiceSettings
from .context import services
from .errors import ServiceError, fhir_response
from .openapi import document
from .operations import READ, UPSTREAM_READ, WRITE, definition

discovery = Blueprint("discovery", __name__)
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
FORMATS = ["application/fhir+json", "json"]  # no XML: Accept: application/fhir+xml is answered 406
SIGNING = ["RS384", "ES384"]  # security.py KEY_SHAPES: what inbound tokens may be signed with


def smart_ready(settings: ServiceSettings) -> bool:
    """SMART is claimed only with auth on and the token endpoint known: a SMART client must find where to
    get a token, or it silently goes on without one and gets 401 (issue 15)."""
    return settings.auth and bool(settings.smart_token_endpoint)


def capability_statement(settings: ServiceSettings, base: str) -> dict[str, Any]:
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": "CAR-T toxicity grading; see /openapi.json.",
        "operation": [{"name": "grade-toxicity", "definition": definition("grade-toxicity")["url"]}],
        "resource": [{"type": t, "interaction": [{"code": "read"}]} for t in ARTEFACT_TYPES],
    }
    if settings.server is not None:  # without an upstream server the Patient operation answers 501
        rest["resource"].insert(0, {"type": "Patient", "operation": [
            {"name": "grade-toxicity", "definition": definition("Patient-grade-toxicity")["url"]}]})
    rest["security"] = _security(settings)
    return {"resourceType": "CapabilityStatement", "status": "active", "date": "2026-12-07", "kind": "instance",
            "software": {"name": "cart-fhir", "version": __version__},
            "implementation": {"description": "cart-fhir CAR-T toxicity grading service", "url": base},
            "fhirVersion": "4.0.1", "format": FORMATS,
            "instantiates": [f"{BASE}/CapabilityStatement/cart-fhir-service"], "rest": [rest]}


def _security(settings: ServiceSettings) -> dict[str, Any]:
    if not settings.auth:
        return {"cors": False, "description": "No authentication: inbound auth is off (CART_FHIR_AUTH=off), "
                                              "every caller is trusted."}
    checks = (f"Bearer JWT signed {' or '.join(SIGNING)} by an allowed issuer ({', '.join(settings.issuers)}), "
              f"audience {settings.audience}; SMART v1/v2 system scopes per operation.")
    if not smart_ready(settings):
        return {"cors": False, "description": checks + " Token endpoint not published "
                                                       "(CART_FHIR_SMART_TOKEN_ENDPOINT is not set).",
                "service": [{"coding": [{"system": SECURITY_SERVICE, "code": "OAuth"}]}]}
    uris = [{"url": "token", "valueUri": settings.smart_token_endpoint}]
    if settings.smart_authorize_endpoint:
        uris.append({"url": "authorize", "valueUri": settings.smart_authorize_endpoint})
    return {"cors": False, "description": checks,
            "extension": [{"url": OAUTH_URIS, "extension": uris}],
            "service": [{"coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}],
                         "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)"}]}


def smart_configuration(settings: ServiceSettings) -> dict[str, Any]:
    """SMART App Launch 2.x `.well-known/smart-configuration` for this resource server (backend services)."""
    grants = ["client_credentials"]
    capabilities = ["client-confidential-asymmetric", "permission-v1", "permission-v2"]
    out: dict[str, Any] = {"token_endpoint": settings.smart_token_endpoint}
    if settings.smart_authorize_endpoint:
        out["authorization_endpoint"] = settings.smart_authorize_endpoint
        grants.insert(0, "authorization_code")
    out.update({
        "grant_types_supported": grants,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": SIGNING,
        "scopes_supported": sorted({*READ, *UPSTREAM_READ, *WRITE} if settings.server is not None else set(READ)),
        "code_challenge_methods_supported": ["S256"],
        "capabilities": capabilities,
    })
    return out


@discovery.get("/fhir/metadata")
@document("The service's CapabilityStatement, as configured", secured=False,
          responses={200: ("CapabilityStatement", "Resource")})
def metadata() -> Response:
    cs = capability_statement(services().settings, request.url_root.rstrip("/") + "/fhir")
    return fhir_response(cs)


@discovery.get("/fhir/.well-known/smart-configuration")
@discovery.get("/.well-known/smart-configuration")
@document("SMART discovery: the token endpoint and what it accepts (404 with inbound auth off)", tag="Conformance",
          secured=False, response_type="application/json",
          responses={200: ("SMART configuration", {"type": "object", "required": ["token_endpoint"]}),
                     404: ("inbound auth is off, or no token endpoint is configured", "OperationOutcome")})
def smart() -> Response:
    settings = services().settings
    if not smart_ready(settings):
        why = "inbound auth is off" if not settings.auth else "CART_FHIR_SMART_TOKEN_ENDPOINT is not set"
        raise ServiceError(404, f"no SMART configuration: {why}")
    return fhir_response(smart_configuration(settings), mimetype="application/json")
