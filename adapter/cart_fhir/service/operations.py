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

from ..constants import FHIR_ID
from ..ingest.read import read_bundle
from ..pipeline import Engine, RunResult
from ..remote.deadline import passed
from ..remote.errors import DeadlineExceeded
from ..remote.read import PatientNotFound, PatientReader
from ..remote.write import PatientWrite, ResultWriter
from ..report import RunReport
from .context import services
from .errors import ServiceError, fhir_response, issue
from .guard import json_body, requires
from .openapi import PARAMETERS, check, document

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
    check(PARAMETERS, body, "Parameters")  # the schema /openapi.json publishes: names, value types, bundle
    bundle = None
    values: dict[str, Any] = {}
    for part in body.get("parameter", []):
        name = part["name"]
        if name == "bundle":
            bundle = part["resource"]
        else:
            values[name] = part["valueCode" if name == "bundleType" else "valueBoolean"]
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
    with svc.grading_slot():
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
    with svc.grading_slot():
        result = svc.engine.grade(items, strict=not _flag(values, "skipInvalid"))
    extra: list[dict[str, Any]] = []
    if write_back:
        if passed():  # nothing is sent once the answer is a 504
            raise ServiceError(504, "the request's deadline passed before writing back: nothing was written "
                                    f"(CART_FHIR_DEADLINE {svc.settings.deadline:g} s)")
        extra = _write_back(svc, result)
    with svc.grading_slot():
        return _output(svc.engine, result, "collection", extra)


def _write_back(svc: Any, result: RunResult) -> list[dict[str, Any]]:
    recorded = datetime.now(UTC).replace(microsecond=0)
    device, groups = svc.engine.resources_by_patient(result, recorded)
    settings = svc.settings.server
    writer = ResultWriter(svc.upstream(), chunk_size=settings.chunk_size, mode=settings.write_mode,
                          locks=svc.patient_locks(), run=recorded.strftime("%Y-%m-%dT%H:%M:%SZ"))
    writes: list[PatientWrite] = []
    try:
        for group in groups:
            writes.append(writer.write_patient(device, group))
    except DeadlineExceeded as exc:
        # Never silent: what was written is said, and the transaction in flight may have been applied
        # upstream after we stopped waiting. Writes are conditional updates: running again is safe.
        done = "; ".join(f"{pw.patient_key}: {pw.counts()}" for pw in writes)
        raise ServiceError(504, "the request's deadline passed while writing back "
                                f"(CART_FHIR_DEADLINE {svc.settings.deadline:g} s): "
                                f"{'completed: ' + done + '; ' if done else ''}the transaction in flight may or may "
                                "not have been applied; nothing more was sent. The writes are idempotent: retry "
                                "to complete them") from exc
    for pw in writes:
        if pw.duplicates:
            raise ServiceError(409, f"{pw.patient_key}: not written: {pw.error}; duplicates on the server: "
                                    + "; ".join(pw.duplicates), code="duplicate")
        if pw.error:
            raise ServiceError(502, f"{pw.patient_key}: not (completely) written: {pw.error}", code="transient")
    return [issue("information", "informational",
                  f"written back to {svc.upstream().base_url}: {pw.patient_key}: {pw.counts()}, "
                  f"{pw.requests} transaction(s)") for pw in writes] + \
        [issue("warning", "business-rule", f"{pw.patient_key}: {k.line()}") for pw in writes for k in pw.kept]
