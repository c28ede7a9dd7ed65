"""FHIR operations: $grade-toxicity on a posted Bundle and on an upstream Patient; metadata; definitions."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from flask import Blueprint, Response, g, request

from .. import __version__
from ..constants import BASE, FHIR_ID
from ..ingest.read import read_bundle
from ..pipeline import Engine, RunResult
from ..remote.read import PatientNotFound, PatientReader
from ..remote.write import PatientWrite, ResultWriter
from ..report import RunReport
from .artefacts import TYPES as ARTEFACT_TYPES
from .context import services
from .errors import ServiceError, fhir_response, issue
from .guard import json_body, requires
from .openapi import document

fhir = Blueprint("fhir", __name__, url_prefix="/fhir")
DEFINITIONS = Path(__file__).parent / "definitions"
READ = ("system/Observation.rs", "system/Condition.rs", "system/AdverseEvent.rs")
UPSTREAM_READ = ("system/Patient.rs",)
WRITE = ("system/Observation.cu", "system/Condition.cu", "system/AdverseEvent.cu", "system/Provenance.cu",
         "system/Device.cu")


@cache
def definition(name: str) -> dict[str, Any]:
    return orjson.loads((DEFINITIONS / f"OperationDefinition-{name}.json").read_bytes())  # type: ignore[no-any-return]


# ---- parameters ----------------------------------------------------------------------------------

def _parameters(body: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(bundle, other parameters) from a Bundle body or a Parameters body."""
    if not isinstance(body, dict):
        raise ServiceError(400, "expected a FHIR resource (a JSON object)", expression="resourceType")
    rtype = body.get("resourceType")
    if rtype == "Bundle":
        return body, {}
    if rtype != "Parameters":
        raise ServiceError(400, f"expected a Bundle or a Parameters resource, got resourceType {rtype!r}",
                           expression="resourceType")
    bundle = None
    values: dict[str, Any] = {}
    parts = body.get("parameter", [])
    if not isinstance(parts, list):
        raise ServiceError(400, "Parameters.parameter must be a list", expression="Parameters.parameter")
    for i, part in enumerate(parts):
        name = part.get("name") if isinstance(part, dict) else None
        where = f"Parameters.parameter[{i}]"
        if name == "bundle":
            bundle = part.get("resource")
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                raise ServiceError(400, "the 'bundle' parameter must carry a Bundle resource",
                                   expression=f"{where}.resource")
        elif name in ("skipInvalid", "writeBack"):
            if not isinstance(part.get("valueBoolean"), bool):
                raise ServiceError(400, f"parameter {name} must be a valueBoolean", expression=f"{where}.value")
            values[name] = part["valueBoolean"]
        elif name == "bundleType":
            if part.get("valueCode") not in ("collection", "transaction"):
                raise ServiceError(400, "bundleType must be collection or transaction", expression=f"{where}.value")
            values[name] = part["valueCode"]
        else:
            raise ServiceError(400, f"unknown parameter {name!r}", expression=f"{where}.name")
    return bundle, values


def _flag(values: dict[str, Any], name: str) -> bool:
    """A boolean from the Parameters body, else from the query string (true/false only)."""
    if name in values:
        return bool(values[name])
    raw = request.args.get(name)
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise ServiceError(400, f"query parameter {name} must be true or false", expression=name)
    return raw == "true"


# ---- output ----------------------------------------------------------------------------------------

def _report_outcome(report: RunReport, extra: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """The run report as an OperationOutcome (output-contract: information/warning issues)."""
    issues = [issue("information", "informational", line) for line in report.summary_lines()]
    # information: a grader's review notice (neurological review, FDA boxed-warning actions), not an error
    issues += [issue(i.severity if i.severity in ("warning", "information") else "error",
                     "informational" if i.severity == "information" else "processing", i.message, str(i.location))
               for i in report.issues]
    issues += list(extra)
    return {"resourceType": "OperationOutcome", "id": "run-report", "issue": issues}


def _output(engine: Engine, result: RunResult, bundle_type: str, extra: list[dict[str, Any]] = ()) -> Response:  # type: ignore[assignment]
    recorded = datetime.now(UTC).replace(microsecond=0)
    written = engine.resources(result, recorded)
    out = engine.bundle(written, "transaction" if bundle_type == "transaction" else "collection")
    if bundle_type != "transaction":
        out["entry"].append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": _report_outcome(result.report, extra)})
    out["timestamp"] = recorded.isoformat()
    return fhir_response(out)


# ---- operations ----------------------------------------------------------------------------------

@fhir.post("/$grade-toxicity")
@requires(*READ)
@document("Grade CAR-T toxicities in a posted Bundle", request={"oneOf": [
    {"$ref": "#/components/schemas/Bundle"}, {"$ref": "#/components/schemas/Parameters"}]},
    responses={200: ("the graded resources and the run report", "Bundle"),
               422: ("the data cannot be graded", "OperationOutcome")},
    description="Body: a Bundle, or Parameters with a `bundle` part (and optional `skipInvalid`, `bundleType`). "
                "Required scopes: " + ", ".join(READ))
def grade_bundle() -> Response:
    bundle, values = _parameters(json_body())
    if bundle is None:
        raise ServiceError(400, "Parameters has no 'bundle' part", expression="Parameters.parameter")
    svc = services()
    engine = svc.engine
    strict = not _flag(values, "skipInvalid")
    result = _grade(engine, bundle, strict)
    return _output(engine, result, values.get("bundleType") or request.args.get("bundleType", "collection"))


def _grade(engine: Engine, bundle: dict[str, Any], strict: bool) -> RunResult:
    return engine.grade(read_bundle(bundle, "request body"), strict=strict)


def _check_id(value: str, what: str) -> str:
    if not re.fullmatch(FHIR_ID, value):
        raise ServiceError(400, f"{what} id {value!r} is not a FHIR id ([A-Za-z0-9-.], 1-64 characters)",
                           expression=what)
    return value


@fhir.post("/Patient/<patient_id>/$grade-toxicity")
@requires(*READ, *UPSTREAM_READ)
@document("Grade one patient read from the upstream FHIR server; writeBack=true writes the results back",
          request="Parameters", request_types=("application/fhir+json", "application/json"),
          responses={200: ("the graded resources and the run report", "Bundle"),
                     404: ("no such patient upstream", "OperationOutcome"),
                     409: ("an identifier matches several resources upstream", "OperationOutcome"),
                     501: ("no upstream FHIR server configured", "OperationOutcome"),
                     502: ("the upstream server failed", "OperationOutcome"),
                     504: ("the upstream server did not answer", "OperationOutcome")},
          parameters=({"name": "writeBack", "in": "query", "required": False,
                       "schema": {"type": "string", "enum": ["true", "false"]}},),
          description="The body is optional (Parameters with writeBack, skipInvalid). Required scopes: "
                      + ", ".join(READ + UPSTREAM_READ) + "; with writeBack also " + ", ".join(WRITE))
def grade_patient(patient_id: str) -> Response:
    _check_id(patient_id, "Patient")
    values: dict[str, Any] = {}
    if request.content_length:
        body = json_body()
        if not (isinstance(body, dict) and body.get("resourceType") == "Parameters"):
            raise ServiceError(400, "the body, when given, must be a Parameters resource", expression="resourceType")
        _, values = _parameters(body)
    write_back = _flag(values, "writeBack")
    if write_back and g.get("principal") is not None:
        from .security import check_scopes

        check_scopes(g.principal, WRITE)  # writing back needs the write scopes too
    svc = services()
    client = svc.upstream()
    settings = svc.settings.server
    reader = PatientReader(client, svc.engine.terminology,
                           observation_categories=settings.observation_categories if settings else (),
                           use_everything=settings.everything if settings else True)
    try:
        items = reader.patient(patient_id)
    except PatientNotFound as exc:
        raise ServiceError(404, exc.message, expression="Patient") from exc
    result = svc.engine.grade(items, strict=not _flag(values, "skipInvalid"))
    extra: list[dict[str, Any]] = []
    if write_back:
        extra = _write_back(svc, result)
    return _output(svc.engine, result, "collection", extra)


def _write_back(svc: Any, result: RunResult) -> list[dict[str, Any]]:
    recorded = datetime.now(UTC).replace(microsecond=0)
    device, groups = svc.engine.resources_by_patient(result, recorded)
    settings = svc.settings.server
    writer = ResultWriter(svc.upstream(), chunk_size=settings.chunk_size, mode=settings.write_mode,
                          locks=svc.patient_locks())
    writes: list[PatientWrite] = [writer.write_patient(device, g) for g in groups]
    for pw in writes:
        if pw.duplicates:
            raise ServiceError(409, f"{pw.patient_key}: not written: {pw.error}; duplicates on the server: "
                                    + "; ".join(pw.duplicates), code="duplicate")
        if pw.error:
            raise ServiceError(502, f"{pw.patient_key}: not (completely) written: {pw.error}", code="transient")
    return [issue("information", "informational",
                  f"written back to {svc.upstream().base_url}: {pw.patient_key}: {pw.created} created, "
                  f"{pw.updated} updated, {pw.requests} transaction(s)") for pw in writes]


# ---- conformance ---------------------------------------------------------------------------------

@fhir.get("/metadata")
@document("The service's CapabilityStatement", secured=False, responses={200: ("CapabilityStatement", "Resource")})
def metadata() -> Response:
    svc = services()
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": "CAR-T toxicity grading. Bearer JWTs (RS384/ES384) with SMART system scopes; "
                         "see /openapi.json.",
        "operation": [{"name": "grade-toxicity", "definition": definition("grade-toxicity")["url"]}],
        "resource": [
            {"type": "Patient", "operation": [{"name": "grade-toxicity",
                                               "definition": definition("Patient-grade-toxicity")["url"]}]},
            *({"type": t, "interaction": [{"code": "read"}]} for t in ARTEFACT_TYPES),
        ],
    }
    if svc.settings.auth:
        rest["security"] = {"cors": False, "service": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
            "description": "Bearer JWT from an allowed issuer, audience = this service; SMART v1/v2 system scopes."}
    cs = {"resourceType": "CapabilityStatement", "status": "active", "date": "2026-12-01", "kind": "instance",
          "software": {"name": "cart-fhir", "version": __version__},
          "implementation": {"description": "cart-fhir CAR-T toxicity grading service",
                             "url": request.url_root.rstrip("/") + "/fhir"},
          "fhirVersion": "4.0.1", "format": ["application/fhir+json", "json"],
          "instantiates": [f"{BASE}/CapabilityStatement/cart-fhir-service"], "rest": [rest]}
    return fhir_response(cs)
