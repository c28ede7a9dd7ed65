"""The published conformance artefacts, served read-only: StructureDefinition, CodeSystem, ValueSet, ConceptMap,
OperationDefinition and CapabilityStatement by id, from the generated package (profiles/fsh-generated)."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import orjson
from flask import Blueprint, Response

from ..conformance.package import default_package_dir
from ..constants import FHIR_ID
from .errors import ServiceError, fhir_response
from .openapi import document

artefacts = Blueprint("artefacts", __name__, url_prefix="/fhir")
TYPES = ("StructureDefinition", "CodeSystem", "ValueSet", "ConceptMap", "OperationDefinition", "CapabilityStatement")


@cache
def published() -> dict[tuple[str, str], dict[str, Any]]:
    """(type, id) -> resource, read once per process; the examples in the package are not served."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(default_package_dir().glob("*.json")):
        res = orjson.loads(path.read_bytes())
        if isinstance(res, dict) and res.get("resourceType") in TYPES and isinstance(res.get("id"), str):
            out[(res["resourceType"], res["id"])] = res
    return out


def _serve(rtype: str, rid: str) -> Response:
    if not re.fullmatch(FHIR_ID, rid):
        raise ServiceError(400, f"{rid!r} is not a FHIR id", expression=f"{rtype}.id")
    res = published().get((rtype, rid))
    if res is None:
        raise ServiceError(404, f"no {rtype}/{rid} is published by cart-fhir", expression=f"{rtype}.id")
    return fhir_response(res)


def _route(rtype: str) -> None:
    def view(rid: str) -> Response:
        return _serve(rtype, rid)

    view.__name__ = f"read_{rtype}"
    doc = document(f"A {rtype} cart-fhir publishes", tag="Conformance", secured=False,
                   responses={200: (rtype, "Resource"), 400: ("not a FHIR id", "OperationOutcome"),
                              404: ("not published here", "OperationOutcome")})
    artefacts.add_url_rule(f"/{rtype}/<rid>", endpoint=view.__name__, view_func=doc(view), methods=["GET"])


for _type in TYPES:
    _route(_type)
