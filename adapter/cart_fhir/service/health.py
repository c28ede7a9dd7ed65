"""Liveness and readiness: /health answers while the process runs; /ready checks the upstream server."""

from __future__ import annotations

from flask import Blueprint, Response

from ..remote.deadline import deadline
from ..remote.errors import ServerError
from .context import services
from .errors import error_response, fhir_response, issue
from .openapi import document

health = Blueprint("health", __name__)
READY_DEADLINE = 5.0  # seconds (or the request's deadline, if shorter) for the upstream server's metadata
STATUS = {"type": "object", "properties": {"status": {"type": "string"}}}


@health.get("/health")
@document("Liveness: the process answers", tag="Operations", secured=False, response_type="application/json",
          responses={200: ("alive", STATUS)})
def alive() -> Response:
    return fhir_response({"status": "ok"}, mimetype="application/json")


@health.get("/ready")
@document("Readiness: tables loaded and, when configured, the upstream FHIR server answers its metadata",
          tag="Operations", secured=False, response_type="application/json",
          responses={200: ("ready", STATUS), 503: ("not ready", "OperationOutcome")})
def ready() -> Response:
    svc = services()
    body = {"status": "ok", "tables": len(svc.engine.versions), "upstream": None}
    if svc.settings.server is not None:
        try:
            client = svc.upstream()
            with deadline(READY_DEADLINE):  # a probe answers quickly, up or not
                client.http.get("metadata")
        except ServerError as exc:
            return error_response(503, [issue("error", "transient", f"upstream FHIR server not ready: {exc.message}")])
        body["upstream"] = "ok"
    return fhir_response(body, mimetype="application/json")
