"""Deterministic business identifiers and urn:uuid fullUrls: the same record always gets the same ones."""

from __future__ import annotations

import hashlib
import uuid

_NS = uuid.UUID("6f1c7a52-3f0e-5b7c-9a55-9c0f3d2b8e11")  # cart-fhir's own uuid5 namespace


def stable_hash(*parts: object) -> str:
    """SHA-256 hex (first 32 chars) of what makes the record unique; never of the wall clock."""
    return hash_text("\x1f".join(str(p) for p in parts))


def hash_text(text: str) -> str:
    """stable_hash of parts already joined with "\\x1f" (writers keep the repeated first parts joined)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


_NS_BYTES = _NS.bytes


def full_url(system: str, value: str) -> str:
    """urn:uuid: of uuid5(_NS, "system|value"), computed as uuid.uuid5 does (RFC 4122 section 4.3) without
    building a UUID object: one per output resource (measured 5.9 against 14.6 us per call). Equal to
    uuid.uuid5 for every fullUrl of the benchmark cohort (same output sha256)."""
    n = int.from_bytes(hashlib.sha1(_NS_BYTES + f"{system}|{value}".encode()).digest()[:16], "big")
    n = (n & ~(0xc000 << 48) | (0x8000 << 48)) & ~(0xf000 << 64) | (5 << 76)  # variant RFC 4122, version 5
    h = f"{n:032x}"
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
