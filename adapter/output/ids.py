"""Deterministic business identifiers and urn:uuid fullUrls: the same record always gets the same ones."""

from __future__ import annotations

import hashlib
import uuid

_NS = uuid.UUID("6f1c7a52-3f0e-5b7c-9a55-9c0f3d2b8e11")  # cart-fhir's own uuid5 namespace


def stable_hash(*parts: object) -> str:
    """SHA-256 hex (first 32 chars) of what makes the record unique; never of the wall clock."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def full_url(system: str, value: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, f'{system}|{value}')}"
