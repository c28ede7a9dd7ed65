"""What every view shares: the `Services` built once per process, and `services()` to reach them in a request.

Its own module so that the blueprints (operations, cdshooks, health, guard) and the factory (app.py) all
import it and the blueprints never import app.py: app.py builds the app and registers them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from ..pipeline import Engine
from ..remote.client import FhirClient
from ..remote.connect import connect
from ..remote.deadline import remaining
from ..remote.locks import PatientLocks
from ..remote.settings import ServerSettings
from .config import ServiceSettings
from .errors import ServiceError

EXTENSION = "cart_fhir"  # the key of Services in app.extensions
QUEUE_WAIT = 5.0  # seconds a request may wait for a grading slot (less if its deadline is nearer)


@dataclass
class Services:
    """What the views use, built once per process at start-up (tables parsed and checked then)."""

    settings: ServiceSettings
    engine: Engine
    verifier: Any = None  # security.TokenVerifier, None when inbound auth is off
    cds_verifier: Any = None  # security.CdsJwtVerifier, None when inbound auth is off
    connect_upstream: Callable[[ServerSettings], FhirClient] = connect
    _upstream: FhirClient | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _locks: PatientLocks | None = field(default=None, repr=False)
    _gradings: threading.BoundedSemaphore | None = field(default=None, repr=False)

    @contextmanager
    def grading_slot(self) -> Iterator[None]:
        """One of `max_gradings` slots for CPU-bound grading in this process; waits briefly (within the
        deadline), then 503 + Retry-After: excess load is refused early instead of slowing every request."""
        with self._lock:
            if self._gradings is None:
                self._gradings = threading.BoundedSemaphore(self.settings.max_gradings)
            slots = self._gradings
        left = remaining()
        wait = QUEUE_WAIT if left is None else max(0.0, min(QUEUE_WAIT, left))
        if not slots.acquire(timeout=wait):
            raise ServiceError(503, f"busy: {self.settings.max_gradings} gradings in flight in this worker; "
                                    "retry shortly", headers={"Retry-After": "1"})
        try:
            yield
        finally:
            slots.release()

    def upstream(self) -> FhirClient:
        """The configured upstream FHIR server's client: one pooled session per process."""
        if self.settings.server is None:
            raise ServiceError(501, "this service has no upstream FHIR server (CART_FHIR_SERVER is not set): "
                                    "post a Bundle to $grade-toxicity instead", code="not-supported")
        with self._lock:
            if self._upstream is None:
                self._upstream = self.connect_upstream(self.settings.server)
            return self._upstream

    def patient_locks(self) -> PatientLocks:
        base = self.upstream().base_url  # outside the lock: upstream() takes it too
        with self._lock:
            if self._locks is None:
                self._locks = PatientLocks(base)
            return self._locks

    def client_for(self, base_url: str, access_token: str | None) -> FhirClient:
        """A client for a FHIR server named in a request (CDS Hooks fhirServer + fhirAuthorization)."""
        # Shorter than the CLI's defaults: an EHR waits on the cards (CDS Hooks asks for answers in seconds).
        # The request's deadline bounds it all (retries included), as for the upstream server.
        return connect(ServerSettings(base_url=base_url, token=access_token, timeout=30.0, retries=2))


def services() -> Services:
    """The Services of the app handling the current request."""
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]
