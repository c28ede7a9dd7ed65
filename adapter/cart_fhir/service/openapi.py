"""The OpenAPI 3.1 document, generated from the app's routes and the `document` metadata on each view."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jsonschema_rs
from flask import Flask

from .. import __version__
from ..constants import FHIR_ID
from .errors import ServiceError

F = TypeVar("F", bound=Callable[..., Any])
FHIR_JSON = "application/fhir+json"

# Loose JSON schemas of the FHIR shapes the service exchanges (the profiles, issue 6, carry the detail).
RESOURCE = {"type": "object", "required": ["resourceType"], "properties": {"resourceType": {"type": "string"}}}
BUNDLE = {"type": "object", "required": ["resourceType", "type"], "properties": {
    "resourceType": {"const": "Bundle"}, "type": {"type": "string"},
    "entry": {"type": "array", "items": {"type": "object"}}}}
# The $grade-toxicity Parameters, as the operation checks them (operations.py validates with this very schema).
_PART = {"type": "object", "required": ["name"], "properties": {
    "name": {"enum": ["bundle", "skipInvalid", "bundleType", "writeBack"]},
    "resource": {"type": "object"}, "valueBoolean": {"type": "boolean"}, "valueCode": {"type": "string"}},
    "allOf": [
        {"if": {"properties": {"name": {"const": "bundle"}}}, "then": {"required": ["resource"], "properties": {
            "resource": {"type": "object", "required": ["resourceType"],
                         "properties": {"resourceType": {"const": "Bundle"}}}}}},
        {"if": {"properties": {"name": {"enum": ["skipInvalid", "writeBack"]}}},
         "then": {"required": ["valueBoolean"]}},
        {"if": {"properties": {"name": {"const": "bundleType"}}}, "then": {
            "required": ["valueCode"], "properties": {"valueCode": {"enum": ["collection", "transaction"]}}}},
    ]}
PARAMETERS = {"type": "object", "required": ["resourceType"], "properties": {
    "resourceType": {"const": "Parameters"}, "parameter": {"type": "array", "items": _PART}}}
OUTCOME = {"type": "object", "required": ["resourceType", "issue"], "properties": {
    "resourceType": {"const": "OperationOutcome"}, "issue": {"type": "array", "items": {"type": "object"}}}}
SCHEMAS = {"Resource": RESOURCE, "Bundle": BUNDLE, "Parameters": PARAMETERS, "OperationOutcome": OUTCOME}


def check(schema: dict[str, Any], body: Any, root: str) -> None:
    """Validate a request body against the schema the OpenAPI document publishes for it (JSON Schema 2020-12,
    OpenAPI 3.1's dialect): one definition for the document and the check, so they cannot drift. The first
    error is a 400 naming the element (`expression`), a missing member included."""
    error = next(iter(_validator(id(schema), schema).iter_errors(body)), None)
    if error is None:
        return
    path = list(error.instance_path)
    if isinstance(error.kind, jsonschema_rs.ValidationErrorKind.Required):
        path.append(error.kind.property)  # the missing member is what the client must add
    where = (root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)).lstrip(".")
    # The schema's words, cut short; the values it quotes are the caller's own (no token is pattern-checked).
    raise ServiceError(400, f"{where or 'request'}: {error.message[:200]}", expression=where or None)


_VALIDATORS: dict[int, Any] = {}


def _validator(key: int, schema: dict[str, Any]) -> Any:
    if key not in _VALIDATORS:  # schemas are module constants: compiled once per process
        _VALIDATORS[key] = jsonschema_rs.Draft202012Validator(schema)
    return _VALIDATORS[key]


@dataclass(frozen=True)
class Doc:
    summary: str
    description: str = ""
    tag: str = "FHIR"
    request: str | dict[str, Any] | None = None  # a SCHEMAS name, or an inline schema
    request_types: tuple[str, ...] = (FHIR_JSON, "application/json")
    responses: dict[int, tuple[str, str | dict[str, Any]]] = field(default_factory=dict)  # status -> (text, schema)
    response_type: str = FHIR_JSON
    secured: bool = True
    parameters: tuple[dict[str, Any], ...] = ()


def document(summary: str, **kw: Any) -> Callable[[F], F]:
    """Attach OpenAPI metadata to a view; the generator reads it from every routed view."""
    def wrap(fn: F) -> F:
        fn.__openapi__ = Doc(summary, **kw)  # type: ignore[attr-defined]
        return fn
    return wrap


def _schema(s: str | dict[str, Any]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{s}"} if isinstance(s, str) else s


def _error(text: str, content_type: str) -> dict[str, Any]:
    return {"description": text, "content": {content_type: {"schema": _schema("OperationOutcome")}}}


def build_spec(app: Flask, secured: bool = True) -> dict[str, Any]:
    """The document of what this app serves; with inbound auth off, no operation claims a security scheme."""
    paths: dict[str, Any] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        doc: Doc | None = getattr(view, "__openapi__", None)
        if doc is None:
            continue
        path = rule.rule
        params = list(doc.parameters)
        for arg in sorted(rule.arguments):
            path = path.replace(f"<{arg}>", f"{{{arg}}}").replace(f"<string:{arg}>", f"{{{arg}}}")
            params.append({"name": arg, "in": "path", "required": True,
                           "schema": {"type": "string", "pattern": f"^{FHIR_ID}$"}})
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op: dict[str, Any] = {"summary": doc.summary, "operationId": f"{rule.endpoint}_{method.lower()}",
                                  "tags": [doc.tag]}
            if doc.description:
                op["description"] = doc.description
            if params:
                op["parameters"] = params
            if doc.request is not None and method in ("POST", "PUT"):
                op["requestBody"] = {"required": True, "content": {
                    t: {"schema": _schema(doc.request)} for t in doc.request_types}}
            responses = {str(k): {"description": text, "content": {
                FHIR_JSON if s == "OperationOutcome" else doc.response_type: {"schema": _schema(s)}}}
                for k, (text, s) in doc.responses.items()}
            if doc.request is not None:
                responses.setdefault("400", _error("bad input: the OperationOutcome names the element", FHIR_JSON))
                responses.setdefault("413", _error("body larger than the configured limit", FHIR_JSON))
                responses.setdefault("415", _error("not JSON", FHIR_JSON))
            if doc.secured and secured:
                op["security"] = [{"bearer": []}]
                responses.setdefault("401", _error("no valid bearer token", FHIR_JSON))
                responses.setdefault("403", _error("the token lacks a scope this operation needs", FHIR_JSON))
            responses.setdefault("500", _error("internal error (no details)", FHIR_JSON))
            op["responses"] = responses
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "cart-fhir", "version": __version__,
                 "description": "CAR-T toxicity grading as FHIR operations and CDS Hooks."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                       "description": "A JWT from an allowed issuer, audience = this service, RS384/ES384, "
                                      "with the SMART system scopes each operation names"}}},
    }
