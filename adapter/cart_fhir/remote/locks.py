"""Per-patient write locks: two runs for one patient on one server never write at the same time.

Conditional updates are only idempotent one at a time: two concurrent `PUT ?identifier=` for a resource
that does not exist yet both create it, and from then on every write for that identifier answers 412. A
thread lock serialises the service's requests; an advisory file lock (fcntl) serialises separate processes
on this host (several CLI runs, gunicorn workers).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the thread lock still serialises one process
    fcntl = None  # type: ignore[assignment]


def default_lock_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / "cart-fhir-locks"


def normalise_server(url: str) -> str:
    """One lock per server however its URL is spelled: scheme and host lower case, default port dropped,
    trailing slash removed (RFC 3986 section 6.2.3); the path keeps its case (servers may treat it so)."""
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


class PatientLocks:
    """Locks keyed by (server, patient); the file name is a hash, so no patient id appears on disk."""

    def __init__(self, server: str, lock_dir: Path | None = None) -> None:
        self.server = normalise_server(server)
        self.lock_dir = lock_dir or default_lock_dir()
        self._guard = threading.Lock()
        self._threads: dict[str, threading.Lock] = {}

    def _name(self, patient_key: str) -> str:
        return hashlib.sha256(f"{self.server}\x1f{patient_key}".encode()).hexdigest()[:32]

    @contextmanager
    def hold(self, patient_key: str) -> Iterator[None]:
        name = self._name(patient_key)
        with self._guard:
            lock = self._threads.setdefault(name, threading.Lock())
        with lock:
            if fcntl is None:
                yield
                return
            self.lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
