"""`cart-fhir validate FILE`: base R4, FHIRPath invariants and profile conformance of a Bundle, resource or NDJSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .conformance.checker import Checker
from .conformance.package import Package, default_package_dir
from .conformance.validate import validate_bundle
from .errors import ConfigError


def _read(path: str) -> dict[str, Any]:
    """A JSON resource or Bundle; an NDJSON file becomes a collection Bundle of its lines."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in lines]}
    if not isinstance(data, dict):
        raise ValueError("not a FHIR resource (top level is not an object)")  # noqa: TRY004 - bad input, not a bug
    return data


def validate_command(path: str, package_dir: str | None) -> int:
    """Print one line per issue to stderr; 0 clean, 1 issues, 2 unreadable input or package."""
    try:
        data = _read(path)
        package = Package.load(package_dir or default_package_dir())
    except (OSError, ValueError, ConfigError) as exc:
        sys.stderr.write(f"cart-fhir: error: {path}: {exc}\n")
        return 2
    checker = Checker(package)
    issues = validate_bundle(data, package, checker)
    for i in issues:
        where = ": ".join(x for x in (f"entry[{i.entry}]" if i.entry is not None else None, i.resource) if x)
        sys.stderr.write(f"cart-fhir: {i.severity}: {path}: {where + ': ' if where else ''}{i.path}: {i.message}\n")
    count = len(data.get("entry") or []) if data.get("resourceType") == "Bundle" else 1
    valid = ": valid (base R4 with its invariants, and each cart-fhir profile a resource claims)"
    sys.stderr.write(f"cart-fhir: {path}: {count} resource(s), {len(issues)} issue(s){'' if issues else valid}\n")
    return 1 if issues else 0
