"""Inbound security: bearer JWT checks, JWKS caching and rotation, SMART scopes, CDS Hooks client JWTs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
import responses
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cart_fhir.errors import ConfigError
from cart_fhir.service.errors import ServiceError
from cart_fhir.service.security import CdsJwtVerifier, JwksSource, Principal, TokenVerifier, check_scopes

AUD = "https://cart.example.org/fhir"
ISS = "https://auth.example.org"
JWKS_URL = "https://auth.example.org/.well-known/jwks.json"
CDS_URL = "https://cart.example.org/cds-services/cart-toxicity"
EHR = "https://ehr.example.org"
KEYS: dict[str, Any] = {}  # kid -> private key, generated once per module (no key files committed)


@pytest.fixture(scope="module", autouse=True)
def keys() -> None:
    KEYS["rsa-1"] = rsa.generate_private_key(65537, 2048)
    KEYS["rsa-2"] = rsa.generate_private_key(65537, 2048)  # the rotated-in key
    KEYS["ec-1"] = ec.generate_private_key(ec.SECP384R1())
    KEYS["other"] = rsa.generate_private_key(65537, 2048)  # not in any JWKS


def jwk(kid: str, **extra: Any) -> dict[str, Any]:
    pub = KEYS[kid].public_key() if kid in KEYS else extra.pop("public")
    algo = RSAAlgorithm if isinstance(pub, rsa.RSAPublicKey) else ECAlgorithm
    return {**algo.to_jwk(pub, as_dict=True), "kid": kid, "use": "sig", **extra}


def jwks(*kids: str) -> dict[str, Any]:
    return {"keys": [jwk(k) for k in kids]}


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    out = {"iss": ISS, "sub": "client-1", "client_id": "client-1", "aud": AUD, "iat": now, "exp": now + 300,
           "jti": str(uuid.uuid4()), "scope": "system/Observation.rs system/AdverseEvent.cu"}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def token(kid: str = "rsa-1", alg: str = "RS384", *, signer: str | None = None,
          headers: dict[str, Any] | None = None, **changes: Any) -> str:
    """A JWT with `kid` in its header, signed by that key (or by `signer`), claims changed (None removes)."""
    return jwt.encode(claims(**changes), KEYS[signer or kid], algorithm=alg,
                      headers={"kid": kid, **(headers or {})})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key() -> str:
    """The classic confusion attack: HMAC-signed with the RSA public key's PEM as the secret (built by hand,
    since pyjwt itself refuses to use a PEM as an HMAC secret)."""
    pem = KEYS["rsa-1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'}).encode())}." \
                    f"{b64(json.dumps(claims()).encode())}"
    return f"{signing_input}.{b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())}"


def rs384_by_hand(private: rsa.RSAPrivateKey, kid: str) -> str:
    """Signed with cryptography directly: pyjwt refuses to sign with a short RSA key."""
    header = {"alg": "RS384", "kid": kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
    sig = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA384())
    return f"{signing_input}.{b64(sig)}"


def tampered() -> str:
    head, _, sig = token().split(".")
    return f"{head}.{b64(json.dumps(claims(sub='admin')).encode())}.{sig}"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks("rsa-1", "ec-1")))
    return path


@pytest.fixture
def verifier(jwks_file: Path) -> TokenVerifier:
    return TokenVerifier(str(jwks_file), issuers=[ISS, "https://auth2.example.org"], audience=AUD)


def rejection(call: Callable[[], Any]) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        call()
    return info.value


# --- good tokens -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kid, alg", [pytest.param("rsa-1", "RS384", id="rs384"),
                                      pytest.param("ec-1", "ES384", id="es384")])
def test_good_token_gives_principal(verifier: TokenVerifier, kid: str, alg: str) -> None:
    tok = token(kid, alg, jti="t-1")
    p = verifier.verify(f"Bearer {tok}")
    scopes = frozenset({"system/Observation.rs", "system/AdverseEvent.cu"})
    assert p == Principal(ISS, "client-1", "client-1", scopes, "t-1")


@pytest.mark.parametrize("changes, scopes", [
    pytest.param({"scope": None, "scp": ["system/Observation.rs", "system/*.r"]},
                 {"system/Observation.rs", "system/*.r"}, id="scp-list"),
    pytest.param({"scope": "  user/Observation.read   "}, {"user/Observation.read"}, id="scope-extra-spaces"),
    pytest.param({"scope": None}, set(), id="no-scope"),
])
def test_scopes_from_claims(verifier: TokenVerifier, changes: dict[str, Any], scopes: set[str]) -> None:
    assert verifier.verify(f"Bearer {token(**changes)}").scopes == scopes


def at(offset: int) -> int:
    """A NumericDate `offset` seconds from now, taken when the test runs (not at collection)."""
    return int(time.time()) + offset


@pytest.mark.parametrize("changes", [
    pytest.param(lambda: {"aud": AUD + "/"}, id="aud-trailing-slash"),
    pytest.param(lambda: {"aud": ["https://other.example.org", AUD]}, id="aud-list-containing-ours"),
    pytest.param(lambda: {"exp": at(-10)}, id="expired-within-leeway"),
    pytest.param(lambda: {"nbf": at(10)}, id="nbf-within-leeway"),
    pytest.param(lambda: {"iss": "https://auth2.example.org"}, id="second-allowed-issuer"),
    pytest.param(lambda: {"iat": None, "jti": None}, id="iat-and-jti-optional"),
    pytest.param(lambda: {"sub": None, "client_id": "svc"}, id="no-sub-falls-back-to-client-id"),
])
def test_accepted_edges(verifier: TokenVerifier, changes: Callable[[], dict[str, Any]]) -> None:
    assert verifier.verify(f"bearer {token(**changes())}").issuer in (ISS, "https://auth2.example.org")


# --- rejections -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("header, reason", [
    pytest.param(None, "missing bearer token", id="no-header"),
    pytest.param("  ", "missing bearer token", id="blank-header"),
    pytest.param("Basic dXNlcjpwYXNz", "not a Bearer token", id="not-bearer"),
])
def test_no_bearer_token_bare_challenge(verifier: TokenVerifier, header: str | None, reason: str) -> None:
    exc = rejection(lambda: verifier.verify(header))
    assert (exc.status, exc.code) == (401, "login") and reason in exc.text
    assert exc.headers == {"WWW-Authenticate": 'Bearer realm="cart-fhir"'}  # RFC 6750 §3.1: no error code


REJECTIONS = [  # (the token after "Bearer ", the reason given)
    pytest.param(lambda: "", "malformed token", id="bearer-without-token"),
    pytest.param(lambda: "not-a-jwt", "malformed token", id="not-three-segments"),
    pytest.param(lambda: "aaa.bbb.ccc", "malformed token", id="segments-not-json"),
    pytest.param(lambda: "a" * 20000 + ".b.c", "malformed token", id="too-long"),
    pytest.param(lambda: jwt.encode(claims(), None, algorithm="none", headers={"kid": "rsa-1"}),
                 "algorithm none not accepted", id="alg-none"),
    pytest.param(hs256_with_public_key, "algorithm HS256 not accepted", id="hs256-public-key-as-secret"),
    pytest.param(lambda: token(alg="RS256"), "algorithm RS256 not accepted", id="rs256"),
    pytest.param(lambda: token("ec-1", "ES384", headers={"kid": "rsa-1"}),
                 "does not match the token algorithm", id="es384-header-rsa-kid"),
    pytest.param(lambda: token("ec-1", "RS384", signer="rsa-1"), "does not match the token algorithm",
                 id="rs384-header-ec-kid"),
    pytest.param(lambda: token("other"), "unknown signing key", id="unknown-kid"),
    pytest.param(lambda: jwt.encode(claims(), KEYS["rsa-1"], algorithm="RS384"), "no key id", id="no-kid"),
    pytest.param(lambda: token(headers={"crit": ["b64"]}), "critical extensions", id="crit-header"),
    pytest.param(lambda: token(exp=at(-60)), "token expired", id="expired"),
    pytest.param(lambda: token(nbf=at(120)), "not yet valid", id="future-nbf"),
    pytest.param(lambda: token(iat=at(120)), "not yet valid", id="future-iat"),
    pytest.param(lambda: token(iss="https://evil.example.org"), "issuer (iss) is not trusted",
                 id="wrong-iss"),
    pytest.param(lambda: token(aud="https://other.example.org/fhir"), "audience", id="wrong-aud"),
    pytest.param(lambda: token(aud=AUD + "/extra"), "audience", id="aud-prefix-only"),
    pytest.param(lambda: token(exp=None), "lacks the exp claim", id="missing-exp"),
    pytest.param(lambda: token(aud=None), "lacks the aud claim", id="missing-aud"),
    pytest.param(lambda: token(sub=None, client_id=None), "lacks the sub claim", id="no-subject"),
    pytest.param(lambda: token(signer="other"), "signature does not verify", id="bad-signature"),
    pytest.param(tampered, "signature does not verify", id="tampered"),
    pytest.param(lambda: token(scope=["system/*.cruds"]), "scope claim is not a string",
                 id="scope-not-string"),
]


@pytest.mark.parametrize("make, reason", REJECTIONS)
def test_rejected(verifier: TokenVerifier, make: Callable[[], str], reason: str) -> None:
    tok = make()
    exc = rejection(lambda: verifier.verify(f"Bearer {tok}"))
    assert (exc.status, exc.code) == (401, "login")
    assert reason in exc.text
    challenge = exc.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="cart-fhir", error="invalid_token", error_description="')
    assert reason in challenge
    # never echo the token, nor any part of it
    assert all(seg not in exc.text + challenge for seg in tok.split(".") if len(seg) > 8)


@responses.activate
def test_alg_checked_before_any_key_lookup() -> None:
    responses.get(JWKS_URL, json=jwks("rsa-1"))
    v = TokenVerifier(JWKS_URL, issuers=[ISS], audience=AUD)
    none = jwt.encode(claims(), None, algorithm="none", headers={"kid": "rsa-1"})
    for bad in (none, hs256_with_public_key(), token(alg="RS256"), token(headers={"crit": ["b64"]})):
        rejection(lambda bad=bad: v.verify(f"Bearer {bad}"))
    assert len(responses.calls) == 0


# --- JWKS: URL caching, rotation, failures; file re-read ----------------------------------------------------


@responses.activate
def test_url_jwks_fetched_once_for_many_verifications_then_after_ttl() -> None:
    responses.get(JWKS_URL, json=jwks("rsa-1", "ec-1"))
    clock = Clock()
    v = TokenVerifier(JwksSource(JWKS_URL, ttl=300, clock=clock), issuers=[ISS], audience=AUD)
    for _ in range(10):
        v.verify(f"Bearer {token()}")
        v.verify(f"Bearer {token('ec-1', 'ES384')}")
    assert len(responses.calls) == 1
    clock.now += 299
    v.verify(f"Bearer {token()}")
    assert len(responses.calls) == 1
    clock.now += 2
    v.verify(f"Bearer {token()}")
    assert len(responses.calls) == 2


@responses.activate
def test_unknown_kid_refetches_once_per_interval_for_rotation() -> None:
    responses.get(JWKS_URL, json=jwks("rsa-1"))
    clock = Clock()
    v = TokenVerifier(JwksSource(JWKS_URL, min_refetch_interval=60, clock=clock), issuers=[ISS], audience=AUD)
    v.verify(f"Bearer {token()}")
    clock.now += 61
    responses.replace(responses.GET, JWKS_URL, json=jwks("rsa-1", "rsa-2"))  # the issuer rotated
    assert v.verify(f"Bearer {token('rsa-2')}").subject == "client-1"
    assert len(responses.calls) == 2
    # an attacker's random kids cannot make us hammer the issuer: one refetch per interval at most
    for _ in range(5):
        assert "unknown signing key" in rejection(lambda: v.verify(f"Bearer {token('other')}")).text
    assert len(responses.calls) == 2
    clock.now += 61
    rejection(lambda: v.verify(f"Bearer {token('other')}"))
    assert len(responses.calls) == 3


@pytest.mark.parametrize("failure", [
    pytest.param({"status": 500}, id="http-500"),
    pytest.param({"status": 302, "headers": {"Location": "https://evil.example.org/jwks"}},
                 id="redirect-not-followed"),
    pytest.param({"body": "not json"}, id="not-json"),
    pytest.param({"json": {"keys": [jwk("x", public=ec.generate_private_key(ec.SECP256R1()).public_key())]}},
                 id="only-p256-keys"),
])
@responses.activate
def test_jwks_unavailable_is_503_and_cached_keys_survive_a_failed_reload(failure: dict[str, Any]) -> None:
    responses.get(JWKS_URL, **failure)
    clock = Clock()
    v = TokenVerifier(JwksSource(JWKS_URL, clock=clock), issuers=[ISS], audience=AUD)
    exc = rejection(lambda: v.verify(f"Bearer {token()}"))
    assert (exc.status, exc.headers.get("Retry-After")) == (503, "60")
    rejection(lambda: v.verify(f"Bearer {token()}"))
    assert len(responses.calls) == 1  # a failing issuer is not asked again at once
    # once loaded, a failed reload keeps the cached keys
    responses.replace(responses.GET, JWKS_URL, json=jwks("rsa-1"))
    clock.now += 61
    v.verify(f"Bearer {token()}")
    responses.replace(responses.GET, JWKS_URL, **failure)
    clock.now += 301
    assert v.verify(f"Bearer {token()}").issuer == ISS
    assert len(responses.calls) == 3


def test_file_jwks_reread_on_change(jwks_file: Path) -> None:
    v = TokenVerifier(str(jwks_file), issuers=[ISS], audience=AUD)
    rejection(lambda: v.verify(f"Bearer {token('rsa-2')}"))
    jwks_file.write_text(json.dumps(jwks("rsa-2")))
    st = jwks_file.stat()
    os.utime(jwks_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # coarse-mtime filesystems
    assert v.verify(f"Bearer {token('rsa-2')}").subject == "client-1"
    assert "unknown signing key" in rejection(lambda: v.verify(f"Bearer {token('rsa-1')}")).text
    jwks_file.write_text("{broken")  # a half-written file keeps the keys we had
    os.utime(jwks_file, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    assert v.verify(f"Bearer {token('rsa-2')}").subject == "client-1"


@pytest.mark.parametrize("member, usable", [
    pytest.param({}, True, id="plain-sig-key"),
    pytest.param({"alg": "RS384"}, True, id="alg-rs384"),
    pytest.param({"alg": "RS256"}, False, id="alg-rs256-only"),
    pytest.param({"use": "enc"}, False, id="use-enc"),
    pytest.param({"key_ops": ["encrypt"]}, False, id="key-ops-without-verify"),
])
def test_jwks_members_filtered(tmp_path: Path, member: dict[str, Any], usable: bool) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk("rsa-1", **member), jwk("ec-1")]}))
    v = TokenVerifier(str(path), issuers=[ISS], audience=AUD)
    if usable:
        assert v.verify(f"Bearer {token()}").issuer == ISS
    else:
        assert "unknown signing key" in rejection(lambda: v.verify(f"Bearer {token()}")).text


def test_weak_and_private_keys_skipped(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(65537, 1024)
    private = RSAAlgorithm.to_jwk(KEYS["rsa-2"], as_dict=True)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk("weak", public=weak.public_key()), {**private, "kid": "rsa-2"},
                                         jwk("ec-1")]}))
    v = TokenVerifier(str(path), issuers=[ISS], audience=AUD)
    for tok in (rs384_by_hand(weak, "weak"), token("rsa-2")):
        assert "unknown signing key" in rejection(lambda tok=tok: v.verify(f"Bearer {tok}")).text
    assert v.verify(f"Bearer {token('ec-1', 'ES384')}").issuer == ISS


@pytest.mark.parametrize("location", [
    pytest.param("http://auth.example.org/jwks.json", id="plain-http-not-loopback"),
    pytest.param("ftp://auth.example.org/jwks.json", id="other-scheme"),
    pytest.param("/nonexistent/jwks.json", id="missing-file"),
])
def test_bad_jwks_location_refuses_to_start(location: str) -> None:
    with pytest.raises(ConfigError):
        TokenVerifier(location, issuers=[ISS], audience=AUD)


def test_no_issuers_refuses_to_start(jwks_file: Path) -> None:
    with pytest.raises(ConfigError):
        TokenVerifier(str(jwks_file), issuers=[], audience=AUD)


@responses.activate
def test_concurrent_cold_cache_fetches_once() -> None:
    responses.get(JWKS_URL, json=jwks("rsa-1", "ec-1"))
    v = TokenVerifier(JWKS_URL, issuers=[ISS], audience=AUD)
    toks = [token() if i % 2 else token("ec-1", "ES384") for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        subjects = list(pool.map(lambda t: v.verify(f"Bearer {t}").subject, toks))
    assert subjects == ["client-1"] * 64
    assert len(responses.calls) == 1


# --- SMART scopes -------------------------------------------------------------------------------------------

SCOPES = [
    pytest.param("system/Observation.rs", "system/Observation.rs", True, id="v2-exact"),
    pytest.param("system/Observation.cruds", "system/Observation.rs", True, id="v2-superset"),
    pytest.param("system/*.rs", "system/Observation.rs", True, id="v2-wildcard-resource"),
    pytest.param("system/Observation.r system/Observation.s", "system/Observation.rs", True,
                 id="v2-additive"),
    pytest.param("system/Observation.r", "system/Observation.rs", False, id="v2-read-without-search"),
    pytest.param("system/Observation.read", "system/Observation.rs", True, id="v1-read-is-rs"),
    pytest.param("system/AdverseEvent.write", "system/AdverseEvent.cu", True, id="v1-write-is-cud"),
    pytest.param("system/*.*", "system/AdverseEvent.cu", True, id="v1-star-star"),
    pytest.param("system/AdverseEvent.read", "system/AdverseEvent.cu", False, id="v1-read-not-write"),
    pytest.param("user/Observation.rs", "system/Observation.rs", True, id="user-context-counts"),
    pytest.param("patient/Observation.rs", "system/Observation.rs", False, id="patient-context-does-not"),
    pytest.param("patient/*.cruds", "system/Observation.rs", False, id="patient-wildcard-does-not"),
    pytest.param("system/Observation.rs?category=vital-signs", "system/Observation.rs", False,
                 id="query-narrowed-grant"),
    pytest.param("system/Observation.rs?category=laboratory", "system/Observation.rs?category=laboratory",
                 True, id="query-narrowed-same-need"),
    pytest.param("system/Observation.rs", "system/Observation.rs?category=laboratory", True,
                 id="unqualified-grant-covers-narrow-need"),
    pytest.param("system/Condition.rs", "system/Observation.rs", False, id="other-resource"),
    pytest.param("system/Observation.sr", "system/Observation.rs", False,
                 id="v2-letters-out-of-order-ignored"),
    pytest.param("", "system/Observation.rs", False, id="no-scopes"),
]


@pytest.mark.parametrize("granted, needed, ok", SCOPES)
def test_check_scopes(granted: str, needed: str, ok: bool) -> None:
    p = Principal(ISS, "client-1", "client-1", frozenset(granted.split()), None)
    if ok:
        check_scopes(p, [needed])
        return
    exc = rejection(lambda: check_scopes(p, [needed]))
    assert (exc.status, exc.code, exc.text) == (403, "forbidden", f"token lacks scope {needed}")
    assert exc.headers["WWW-Authenticate"] == f'Bearer error="insufficient_scope", scope="{needed}"'


def test_check_scopes_names_only_the_missing_ones_in_text_and_all_in_challenge() -> None:
    p = Principal(ISS, "c", "c", frozenset({"system/Observation.rs"}), None)
    exc = rejection(lambda: check_scopes(p, ["system/Observation.rs", "system/AdverseEvent.cu"]))
    assert exc.text == "token lacks scope system/AdverseEvent.cu"
    assert exc.headers["WWW-Authenticate"].endswith('scope="system/Observation.rs system/AdverseEvent.cu"')


def test_check_scopes_refuses_a_malformed_need() -> None:
    with pytest.raises(ValueError):
        check_scopes(Principal(ISS, "c", "c", frozenset(), None), ["Observation.read"])


# --- CDS Hooks client JWTs ----------------------------------------------------------------------------------


def cds_token(kid: str = "ec-1", alg: str = "ES384", **changes: Any) -> str:
    base = {"iss": EHR, "sub": "ehr-client", "aud": CDS_URL, "scope": None, "client_id": None}
    return token(kid, alg, **{**base, **changes})


@pytest.fixture
def cds(jwks_file: Path) -> CdsJwtVerifier:
    return CdsJwtVerifier(str(jwks_file), issuers=[EHR])


@pytest.mark.parametrize("kid, alg, changes", [
    pytest.param("ec-1", "ES384", {}, id="es384"),
    pytest.param("rsa-1", "RS384", {}, id="rs384"),
    pytest.param("ec-1", "ES384", {"aud": CDS_URL + "/", "tenant": "org-7"}, id="aud-slash-and-tenant"),
])
def test_cds_good(cds: CdsJwtVerifier, kid: str, alg: str, changes: dict[str, Any]) -> None:
    p = cds.verify(f"Bearer {cds_token(kid, alg, jti='j-1', **changes)}", CDS_URL)
    assert (p.issuer, p.subject, p.client_id, p.token_id) == (EHR, "ehr-client", "ehr-client", "j-1")
    assert p.scopes == frozenset()
    assert p.tenant == changes.get("tenant")


@pytest.mark.parametrize("changes, reason", [
    pytest.param({"aud": "https://cart.example.org/cds-services/other"}, "audience", id="wrong-aud"),
    pytest.param({"aud": AUD}, "audience", id="fhir-aud-not-cds"),
    pytest.param({"jti": None}, "lacks the jti claim", id="missing-jti"),
    pytest.param({"iat": None}, "lacks the iat claim", id="missing-iat"),
    pytest.param({"sub": None}, "lacks the sub claim", id="missing-sub"),
    pytest.param({"iss": ISS}, "issuer (iss) is not trusted", id="not-an-allowed-ehr"),
    pytest.param({"tenant": 7}, "tenant claim", id="tenant-not-string"),
    pytest.param({"headers": {"jku": "https://evil.example.org/jwks.json"}}, "jku", id="foreign-jku"),
])
def test_cds_rejected(cds: CdsJwtVerifier, changes: dict[str, Any], reason: str) -> None:
    exc = rejection(lambda: cds.verify(f"Bearer {cds_token(**changes)}", CDS_URL))
    assert exc.status == 401 and reason in exc.text


def test_cds_replayed_jti(cds: CdsJwtVerifier) -> None:
    tok = cds_token()
    cds.verify(f"Bearer {tok}", CDS_URL)
    assert "replayed" in rejection(lambda: cds.verify(f"Bearer {tok}", CDS_URL)).text
    cds.verify(f"Bearer {cds_token()}", CDS_URL)  # a fresh jti is fine


def test_cds_replay_under_concurrency_admits_exactly_one(cds: CdsJwtVerifier) -> None:
    tok = cds_token()

    def attempt(_: int) -> bool:
        try:
            cds.verify(f"Bearer {tok}", CDS_URL)
            return True
        except ServiceError:
            return False

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(attempt, range(64))) == 1


def test_cds_replay_cache_is_bounded_and_forgets_after_the_window(jwks_file: Path) -> None:
    clock = Clock()
    v = CdsJwtVerifier(str(jwks_file), issuers=[EHR], replay_window=600, max_remembered=2, clock=clock)
    first, second, third = cds_token(), cds_token(), cds_token()
    for tok in (first, second, third):
        v.verify(f"Bearer {tok}", CDS_URL)
    v.verify(f"Bearer {first}", CDS_URL)  # evicted when the third came in (bounded memory)
    rejection(lambda: v.verify(f"Bearer {third}", CDS_URL))
    clock.now += 601
    v.verify(f"Bearer {third}", CDS_URL)


@responses.activate
def test_cds_jku_honoured_only_when_it_is_the_configured_url() -> None:
    responses.get(JWKS_URL, json=jwks("ec-1"))
    v = CdsJwtVerifier(JWKS_URL, issuers=[EHR])
    assert v.verify(f"Bearer {cds_token(headers={'jku': JWKS_URL})}", CDS_URL).subject == "ehr-client"
    rejection(lambda: v.verify(f"Bearer {cds_token(headers={'jku': 'https://evil.example.org/k'})}", CDS_URL))
    assert [c.request.url for c in responses.calls] == [JWKS_URL]
