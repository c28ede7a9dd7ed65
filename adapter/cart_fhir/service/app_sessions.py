"""Server-side sessions of the SMART app: the browser holds only an opaque id; the token stays here.

One file per session in a private folder, named by a hash of the id (the id itself is never on disk) and
sealed with AES-GCM under a key made at start-up and held in memory only: gunicorn forks its workers after
create_app, so every worker shares the folder and the key, a launch may land on one worker and its callback
on another, and a restart simply ends every session (launch again from the EHR).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("cart_fhir.service")
MAX_SESSIONS = 10_000  # beyond this, expired files are swept on every new session


class SessionStore:
    """put/get/delete of small JSON records by an opaque id, each with its own expiry."""

    def __init__(self, folder: str | None = None, *, clock: Callable[[], float] = time.time) -> None:
        if folder:
            self.folder = Path(folder)
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        else:
            self.folder = Path(tempfile.mkdtemp(prefix="cart-fhir-app-sessions-"))  # 0700
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self._clock = clock

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(32)  # 256 bits: unguessable

    def _path(self, sid: str) -> Path:
        return self.folder / hashlib.sha256(sid.encode()).hexdigest()

    def put(self, sid: str, record: dict[str, Any], ttl: float) -> None:
        payload = orjson.dumps({"exp": self._clock() + ttl, "data": record})
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, payload, sid.encode())  # bound to its id
        path = self._path(sid)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(sealed)
        os.replace(tmp, path)
        self._sweep_if_crowded()

    def get(self, sid: str | None) -> dict[str, Any] | None:
        if not sid or len(sid) > 128:
            return None
        path = self._path(sid)
        try:
            sealed = path.read_bytes()
            doc = orjson.loads(self._aead.decrypt(sealed[:12], sealed[12:], sid.encode()))
        except (OSError, InvalidTag, ValueError, orjson.JSONDecodeError):
            return None
        if doc["exp"] < self._clock():
            path.unlink(missing_ok=True)
            return None
        return doc["data"]  # type: ignore[no-any-return]

    def delete(self, sid: str | None) -> None:
        if sid and len(sid) <= 128:
            self._path(sid).unlink(missing_ok=True)

    def _sweep_if_crowded(self) -> None:
        files = list(self.folder.iterdir())
        if len(files) <= MAX_SESSIONS:
            return
        now = self._clock()
        for f in files:
            try:
                if now - f.stat().st_mtime > 24 * 3600:
                    f.unlink(missing_ok=True)
            except OSError:
                continue
        log.info("app sessions: swept expired session files")
