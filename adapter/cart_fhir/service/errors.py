"""Every error the service answers is a FHIR OperationOutcome with the right HTTP status, never HTML."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Flask, Response, g
from werkzeug.exceptions import HTTPException

from ..errors import AdapterError, BadInput, ConfigError, InputErrors
from ..remote.errors import AuthFailed, ServerError, ServerUnreachable

log = logging.getLogger("cart_fhir.service")
FHIR_JSON = "application/fhir+json"

# HTTP status -> OperationOutcome issue code (FHIR R4 issue-type value set)
ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
               406: "not-supported", 408: "timeout", 409: "conflict", 412: "processing", 413: "too-costly",
               414: "too-long", 415: "not-supported", 417: "not-supported", 422: "processing", 429: "throttled",
               431: "too-long", 500: "exception", 501: "not-supported", 502: "transient", 503: "transient",
               504: "timeout"}


class ServiceError(AdapterError):
    """An error with its own HTTP status and OperationOutcome issue (raised by views and guards)."""

    def __init__(self, status: int, text: str, *, code: str | None = None, expression: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.text = text
        self.code = code or ISSUE_CODES.get(status, "exception")
        self.expression = expression
        self.headers = headers or {}
        super().__init__(text)


class ClientTooSlow(Exception):
    """The client did not send its request (head or body) within the time the server gives it: 408."""


def issue(severity: str, code: str, text: str, expression: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"severity": severity, "code": code, "details": {"text": text}}
    if expression:
        out["expression"] = [expression]
    return out


def outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": issues}


def fhir_response(body: Any, status: int = 200, headers: dict[str, str] | None = None,
                  mimetype: str = FHIR_JSON) -> Response:
    resp = Response(orjson.dumps(body), status=status, mimetype=mimetype)
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def error_response(status: int, issues: list[dict[str, Any]], headers: dict[str, str] | None = None) -> Response:
    return fhir_response(outcome(issues), status, headers)


def _bad_input_issues(errors: list[BadInput]) -> list[dict[str, Any]]:
    """One issue per problem; the location (entry, resource) goes to `expression` for the client to find."""
    return [issue("error", "invalid", e.message, str(e.location) if e.location else None) for e in errors[:100]]


def register_error_handlers(app: Flask) -> None:
    """One handler per error family (house style 5)."""

    @app.errorhandler(ServiceError)
    def _service(exc: ServiceError) -> Response:
        return error_response(exc.status, [issue("error", exc.code, exc.text, exc.expression)], exc.headers)

    @app.errorhandler(InputErrors)
    def _inputs(exc: InputErrors) -> Response:
        return error_response(400, _bad_input_issues(exc.errors))

    @app.errorhandler(BadInput)
    def _bad(exc: BadInput) -> Response:
        return error_response(400, _bad_input_issues([exc]))

    @app.errorhandler(ServerError)
    def _upstream(exc: ServerError) -> Response:
        # The upstream FHIR server failed us: 504 when it never answered, else 502; its own words kept.
        status = 504 if isinstance(exc, ServerUnreachable) else 502
        prefix = "upstream FHIR server authentication failed" if isinstance(exc, AuthFailed) else \
            "upstream FHIR server error"
        return error_response(status, [issue("error", ISSUE_CODES[status], f"{prefix}: {exc.message}")])

    @app.errorhandler(ConfigError)
    def _config(exc: ConfigError) -> Response:
        log.error("configuration error during request %s: %s", g.get("request_id"), exc)
        return error_response(500, [issue("error", "exception", "the service is misconfigured; see its log")])

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        text = exc.description or exc.name
        if status == 413:
            text = f"request body larger than {app.config['MAX_CONTENT_LENGTH']} bytes"
        allowed = getattr(exc, "valid_methods", None)  # werkzeug's MethodNotAllowed only
        headers = {"Allow": ", ".join(allowed)} if allowed else None
        return error_response(status, [issue("error", ISSUE_CODES.get(status, "exception"), text)], headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Never a stack trace to the client: the log has it, under the request id the client was given.
        log.exception("unhandled error in request %s", g.get("request_id"))
        return error_response(500, [issue("fatal", "exception",
                                          f"internal error (request id {g.get('request_id', '-')})")])
