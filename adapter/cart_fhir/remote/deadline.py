"""One time budget for everything a request does upstream: every FHIR call, retry, back-off and token fetch.

The budget is a context variable, so the one FhirHttp a service process shares between its threads honours
each request's own deadline, and code between the web layer and the transport passes nothing along.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("cart_fhir_deadline", default=None)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Everything upstream inside this block ends within `seconds` (or an enclosing, earlier deadline)."""
    at = time.monotonic() + seconds
    outer = _deadline.get()
    token = _deadline.set(at if outer is None else min(at, outer))
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float | None:
    """Seconds left of the current deadline (<= 0 when passed); None without one."""
    at = _deadline.get()
    return None if at is None else at - time.monotonic()


def passed() -> bool:
    left = remaining()
    return left is not None and left <= 0
