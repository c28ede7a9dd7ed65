"""Validate a Bundle: base R4 (the R4B models and the R4 FHIRPath invariants) plus each entry's meta.profile
against the package (its structure and its invariants)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..validate import InvalidOutput, validate_resources
from .checker import Checker
from .issue import Issue
from .package import Package


def _base_issues(resource: dict[str, Any]) -> list[Issue]:
    """Base R4 structure through adapter/cart_fhir/validate.py (the one module importing the R4B models)."""
    rtype = str(resource.get("resourceType", "?"))
    try:
        validate_resources([resource])
    except InvalidOutput as exc:
        errors = getattr(exc.__cause__, "errors", None)  # pydantic ValidationError; KeyError: unknown type
        if errors is None:
            return [Issue(rtype, f"base R4: unknown resourceType {rtype!r}")]
        return [Issue(".".join([rtype, *(str(p) for p in err["loc"])]), f"base R4: {err['msg']}")
                for err in errors()]
    return []


def _label(resource: dict[str, Any], full_url: str | None) -> str:
    rtype = resource.get("resourceType", "?")
    if "id" in resource:
        return f"{rtype}/{resource['id']}"
    return f"{rtype} {full_url}" if full_url else str(rtype)


def validate_resource(resource: dict[str, Any], checker: Checker,
                      full_urls: dict[str, str] | None = None) -> list[Issue]:
    """Base validation, then every meta.profile the resource claims, then the invariants of both."""
    issues = _base_issues(resource)
    for profile in resource.get("meta", {}).get("profile", []):
        issues += checker.check(resource, profile, full_urls)
    return issues + checker.invariants.check(resource)


def validate_bundle(bundle: dict[str, Any], package: Package, checker: Checker | None = None) -> list[Issue]:
    """Issues of every entry, located by entry index and Type/id (or fullUrl when the entry has no id)."""
    checker = checker or Checker(package)
    if bundle.get("resourceType") != "Bundle":
        return [replace(i, resource=_label(bundle, None)) for i in validate_resource(bundle, checker)]
    entries = bundle.get("entry", [])
    full_urls = {e["fullUrl"]: e["resource"].get("resourceType", "?")
                 for e in entries if "fullUrl" in e and isinstance(e.get("resource"), dict)}
    # the Bundle's own invariants (bdl-*: fullUrl unique, request only in a transaction ...); its entries'
    # resources are checked one by one below
    issues = [replace(i, resource="Bundle") for i in checker.invariants.check(bundle)]
    for i, entry in enumerate(entries):
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            issues.append(Issue("Bundle.entry.resource", "entry has no resource", entry=i))
            continue
        label = _label(resource, entry.get("fullUrl"))
        found = validate_resource(resource, checker, full_urls)
        issues += [replace(x, entry=i, resource=label) for x in found]
    return issues
