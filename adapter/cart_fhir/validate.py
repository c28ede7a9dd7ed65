"""Validate emitted resources with the fhir.resources R4B models (R4B equals R4 for every type we write)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import AdapterError


class InvalidOutput(AdapterError):
    """An emitted resource does not validate: a bug in cart-fhir, never written out."""


def validate_resources(resources: Iterable[dict[str, Any]]) -> int:
    """Raise InvalidOutput on the first resource the R4B models reject; returns how many were checked."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    n = 0
    for res in resources:
        rtype = res.get("resourceType", "?")
        try:
            get_fhir_model_class(rtype).model_validate(res)
        except (ValidationError, KeyError) as exc:
            ident = res.get("identifier")
            raise InvalidOutput(f"emitted {rtype} {ident} is not valid FHIR R4: {exc}") from exc
        n += 1
    return n
