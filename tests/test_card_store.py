"""Issue 14 item 7: CDS Hooks feedback is recorded whichever worker receives it (service/card_store.py).

Unit tests of the store, then `cart-fhir serve --workers 4` under gunicorn against the real FHIR test server:
feedback for a card issued by one worker is recorded when another worker receives it, and all of N
feedbacks are recorded.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from typing import Any

import pytest
import requests
from test_remote_integration import crs_patient, seed
from test_service_serve import _clean_env, _start
from test_write_corrections import _all

from cart_fhir.cli import main
from cart_fhir.service.card_store import MemoryCardIndex, SqliteCardIndex, open_card_index

KEY = "Condition?identifier=https://cart-fhir.org/fhir/identifier/toxicity-episode|"


def _cards(n: int, start: int = 0) -> tuple[list[dict[str, Any]], dict[str, str]]:
    cards = [{"uuid": f"card-{i}"} for i in range(start, start + n)]
    return cards, {c["uuid"]: f"{KEY}{i:032x}" for i, c in enumerate(cards, start)}


@pytest.mark.parametrize("make", [lambda p: MemoryCardIndex(size=5), lambda p: SqliteCardIndex(p, size=5)],
                         ids=["memory", "sqlite"])
def test_the_store_is_bounded_and_a_card_issued_again_is_the_newest(make, tmp_path):
    index = make(tmp_path / "cards.sqlite3")
    cards, keys = _cards(5)
    index.remember([*cards, {"uuid": "no-condition"}], keys)  # a card with no Condition of ours: not kept
    assert index.get("no-condition") is None
    index.remember([cards[0]], keys)  # issued again: now the newest
    more, more_keys = _cards(2, start=5)
    index.remember(more, more_keys)
    assert [index.get(f"card-{i}") is not None for i in range(7)] == [True, False, False, True, True, True, True]
    assert index.get("card-6") == f"{KEY}{6:032x}"


def test_the_sqlite_store_holds_only_uuids_and_keys_and_is_private(tmp_path):
    path = tmp_path / "store" / "cards.sqlite3"
    index = open_card_index(str(path))
    assert isinstance(index, SqliteCardIndex)
    cards, keys = _cards(3)
    index.remember(cards, keys)
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    import sqlite3

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        cols = [r[1] for r in db.execute("PRAGMA table_info(cards)")]
    assert cols == ["seq", "card", "key"]
    assert len(index) == 3


_WRITER = """
import sys
from cart_fhir.service.card_store import SqliteCardIndex
index = SqliteCardIndex(sys.argv[1])
start = int(sys.argv[2])
for i in range(start, start + 50):
    index.remember([{"uuid": f"card-{i}"}], {f"card-{i}": f"key-{i}"})
"""


def test_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "cards.sqlite3")
    SqliteCardIndex(path)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, path, str(k * 50)]) for k in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    index = SqliteCardIndex(path)
    assert len(index) == 200 and all(index.get(f"card-{i}") == f"key-{i}" for i in range(200))


def test_an_unusable_store_path_stops_start_up(tmp_path):
    from cart_fhir.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="CART_FHIR_CARD_STORE"):
        open_card_index(str(blocker / "cards.sqlite3"))


# ---- a real multi-worker gunicorn ------------------------------------------------------------------------

def _pids(log: str, pattern: str) -> list[str]:
    return re.findall(rf"\[(\d+)\] cart_fhir\.cds: {pattern}", log)


def test_feedback_reaching_another_worker_is_recorded(fhir, tmp_path):
    seed(fhir, crs_patient("p1"))
    assert main(["grade", "--server", fhir.base_url, "--patient", "p1", "--write-back", "-q"]) == 0
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = _clean_env(CART_FHIR_SERVER=fhir.base_url, TMPDIR=str(scratch))
    log = tmp_path / "serve.log"
    for served in _start(env, log, "--workers", "4"):
        hook = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": fhir.base_url,
                "context": {"patientId": "p1"}}
        reply = requests.post(f"{served.base}/cds-services/cart-toxicity", json=hook, timeout=60)
        assert reply.status_code == 200, reply.text[:500]
        crs = next(c for c in reply.json()["cards"] if c["source"]["topic"]["code"] == "crs")
        issuer = _pids(served.log_text(), "cds patient-view")[0]
        n = 0
        # Each feedback on a new connection: gunicorn hands them to its workers; go on until at least one
        # other worker than the issuer has received one (bounded).
        while n < 12 or (n < 60 and set(_pids(served.log_text(), "cds feedback")) <= {issuer}):
            item = {"card": crs["uuid"], "outcome": "accepted", "outcomeTimestamp": f"2026-12-07T10:{n:02d}:00Z"}
            with requests.Session() as s:
                sent = s.post(f"{served.base}/cds-services/cart-toxicity/feedback", json={"feedback": [item]},
                              timeout=60)
            assert sent.status_code == 200, sent.text[:500]
            n += 1
        text = served.log_text()
        handlers = _pids(text, "cds feedback")
        assert len(handlers) == n and set(handlers) - {issuer}, "no feedback reached another worker"
        assert "not recorded" not in text
        assert [p.name for p in scratch.glob("cart-fhir-cards-*/*")] == ["cards.sqlite3"]
    cond = _all(fhir, "Condition")[0]
    assert cond["verificationStatus"]["coding"][0]["code"] == "confirmed"
    notes = [x["text"] for x in cond.get("note") or [] if "CDS Hooks card" in x["text"]]
    assert len(notes) == n  # all of the N feedbacks recorded
    assert not list(scratch.iterdir())  # the instance's temporary store goes when it stops


def test_a_store_that_fails_later_never_fails_the_cards_and_feedback_is_told_to_retry(tmp_path, caplog):
    """Busy beyond its timeout, or its file gone: issuing cards goes on (logged, without card or patient
    data); a feedback lookup answers 503 transient so the EHR sends it again."""
    import sqlite3

    from cart_fhir.service.errors import ServiceError

    store = SqliteCardIndex(tmp_path / "cards.db")

    def broken() -> sqlite3.Connection:
        raise sqlite3.OperationalError("database is locked")

    store._connect = broken  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="cart_fhir.cds"):
        store.remember([{"uuid": "u1"}], {"u1": "Condition?identifier=s|h"})
    assert "1 cards not remembered (OperationalError)" in caplog.text and "u1" not in caplog.text
    with pytest.raises(ServiceError) as err:
        store.get("u1")
    assert err.value.status == 503 and err.value.code == "transient"
