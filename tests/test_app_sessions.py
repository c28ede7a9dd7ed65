"""The SMART app's server-side sessions and SMART client steps, without a server."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
import requests
import responses

from cart_fhir.service.app_sessions import SessionStore
from cart_fhir.service.smart_launch import LaunchError, SmartConfig, discover, pkce_pair


def test_session_round_trip_expiry_and_sealing(tmp_path) -> None:
    now = [1000.0]
    store = SessionStore(str(tmp_path / "s"), clock=lambda: now[0])
    sid = store.new_id()
    store.put(sid, {"token": "secret-token", "patient": "p1"}, ttl=60)
    assert store.get(sid) == {"token": "secret-token", "patient": "p1"}
    [file] = list((tmp_path / "s").iterdir())
    assert sid not in file.name and b"secret-token" not in file.read_bytes()  # hashed name, sealed body
    assert oct(file.stat().st_mode & 0o777) == "0o600"
    assert store.get(store.new_id()) is None and store.get(None) is None and store.get("x" * 500) is None
    # The same file under another id does not open (the id is bound into the AEAD).
    other = store.new_id()
    os.link(file, tmp_path / "s" / hashlib.sha256(other.encode()).hexdigest())
    assert store.get(other) is None
    now[0] += 61
    assert store.get(sid) is None and not (tmp_path / "s" / file.name).exists()


def test_another_process_key_cannot_read_a_session(tmp_path) -> None:
    a, b = SessionStore(str(tmp_path)), SessionStore(str(tmp_path))
    sid = a.new_id()
    a.put(sid, {"token": "t"}, ttl=60)
    assert b.get(sid) is None  # a restart (new key) ends every session


def test_pkce_pair_is_s256() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert challenge == expected and pkce_pair()[0] != verifier


@pytest.mark.parametrize("scopes, caps, v2", [
    pytest.param(["launch", "patient/*.rs"], [], True, id="v2-scope-listed"),
    pytest.param(["launch", "patient/*.read", "patient/Observation.read"], [], False, id="v1-only-falls-back"),
    pytest.param([], [], True, id="nothing-listed-v2"),
    pytest.param(["patient/*.read"], ["permission-v2"], True, id="capability-v2-wins"),
    pytest.param(["patient/*.rs"], ["permission-v1"], False, id="capability-v1"),
])
def test_scope_version_choice(scopes, caps, v2) -> None:
    cfg = SmartConfig("https://ehr/auth", "https://ehr/token", tuple(scopes), tuple(caps))
    assert cfg.v2() is v2
    assert cfg.scopes(standalone=False) == ("launch openid fhirUser patient/*.rs" if v2 else
                                            "launch openid fhirUser patient/*.read")
    assert cfg.scopes(standalone=True).startswith("launch/patient ")


@responses.activate
@pytest.mark.parametrize("body, message", [
    pytest.param({"token_endpoint": "https://ehr/token"}, "no authorization_endpoint", id="no-authorize"),
    pytest.param({"authorization_endpoint": "https://ehr/a", "token_endpoint": "https://ehr/t",
                  "code_challenge_methods_supported": ["plain"]}, "PKCE S256", id="no-s256"),
    pytest.param([1, 2], "not a JSON object", id="not-object"),
])
def test_discovery_refusals(body, message) -> None:
    responses.get("https://ehr.example/fhir/.well-known/smart-configuration", json=body)
    with pytest.raises(LaunchError, match=message) as info:
        discover(requests.Session(), "https://ehr.example/fhir")
    assert info.value.status == 502
