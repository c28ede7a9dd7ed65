"""Which result each issued CDS card is about (card uuid -> the episode Condition's business key), shared by
every worker process of one service.

CDS Hooks feedback carries only the card's uuid, and under `cart-fhir serve --workers N` it may reach another
worker than the one that issued the card. A stateless design does not work: the card uuid is uuid5 of
"patient id|infusion|toxicity|episode-n", which cannot be turned back into the Condition's identifier (a
hash of patient key, infusion, toxicity, scale and onset day), and the feedback names no patient to search.
So the mapping is kept in one SQLite file in WAL mode (readers never wait on the writer; a writer waits on
another at most `BUSY_SECONDS`). It holds nothing but two hashes per card: the card's uuid and
"Condition?identifier=<system>|<hash>" (no patient id, no grade). Bounded: the oldest cards beyond `size`
are forgotten. A connection is opened per call: nothing is shared across gunicorn's fork.

`MemoryCardIndex` is the same interface within one process, used when no store path is set (an app built
with create_app directly, tests); `cart-fhir serve` always sets one (serve.py).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError
from .errors import ServiceError

log = logging.getLogger("cart_fhir.cds")

CARD_INDEX = "cart_fhir.cds_cards"  # its key in app.extensions
MAX_CARDS = 10_000  # cards remembered (oldest forgotten first)
BUSY_SECONDS = 5.0

_SCHEMA = ("CREATE TABLE IF NOT EXISTS cards (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
           "card TEXT NOT NULL UNIQUE, key TEXT NOT NULL)")


class CardIndex(Protocol):
    def remember(self, cards: list[dict[str, Any]], keys: dict[str, str]) -> None: ...

    def get(self, card: str) -> str | None: ...


def _pairs(cards: list[dict[str, Any]], keys: dict[str, str]) -> list[tuple[str, str]]:
    """(uuid, business key) of the cards that are about a Condition of ours."""
    return [(c["uuid"], keys[c["uuid"]]) for c in cards if c.get("uuid") in keys]


class MemoryCardIndex:
    """Per process (bounded, thread-safe)."""

    def __init__(self, size: int = MAX_CARDS) -> None:
        self.size = size
        self._cards: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, cards: list[dict[str, Any]], keys: dict[str, str]) -> None:
        with self._lock:
            for card, key in _pairs(cards, keys):
                self._cards[card] = key
                self._cards.move_to_end(card)
            while len(self._cards) > self.size:
                self._cards.popitem(last=False)

    def get(self, card: str) -> str | None:
        with self._lock:
            return self._cards.get(card)


class SqliteCardIndex:
    """Shared by the processes that open the same file (module docstring)."""

    def __init__(self, path: str | Path, size: int = MAX_CARDS) -> None:
        self.path, self.size = str(path), size
        try:
            folder = Path(self.path).parent
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)  # only the service's user reads it
            os.close(fd)
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")  # kept in the file: every later connection uses it
                db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"CART_FHIR_CARD_STORE: cannot open the CDS card store {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash, cheap commits
        return db

    def remember(self, cards: list[dict[str, Any]], keys: dict[str, str]) -> None:
        pairs = _pairs(cards, keys)
        if not pairs:
            return
        try:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                # REPLACE deletes the old row: a card issued again becomes the newest (as move_to_end)
                db.executemany("INSERT OR REPLACE INTO cards (card, key) VALUES (?, ?)", pairs)
                db.execute("DELETE FROM cards WHERE seq <= (SELECT MAX(seq) FROM cards) - ?", (self.size,))
                db.execute("COMMIT")
            finally:
                db.close()
        except sqlite3.Error as exc:
            # The cards are still answered: a clinician sees them; only feedback on them cannot be recorded
            # (acknowledged as from a card this service does not know). No card or patient data in the line.
            log.warning("CDS card store %s: %d cards not remembered (%s)", self.path, len(pairs), type(exc).__name__)

    def get(self, card: str) -> str | None:
        try:
            db = self._connect()
            try:
                row = db.execute("SELECT key FROM cards WHERE card = ?", (card,)).fetchone()
            finally:
                db.close()
        except sqlite3.Error as exc:  # busy beyond BUSY_SECONDS, or the file went away: the EHR may retry
            raise ServiceError(503, "the CDS card store cannot be read now; send the feedback again",
                               code="transient", headers={"Retry-After": "5"}) from exc
        return None if row is None else str(row[0])

    def __len__(self) -> int:
        db = self._connect()
        try:
            return int(db.execute("SELECT COUNT(*) FROM cards").fetchone()[0])
        finally:
            db.close()


def open_card_index(path: str | None, size: int = MAX_CARDS) -> CardIndex:
    """The shared store at `path`, or a per-process index when no path is set."""
    return MemoryCardIndex(size) if path is None else SqliteCardIndex(path, size)
