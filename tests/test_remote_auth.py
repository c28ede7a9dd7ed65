"""SMART Backend Services auth: assertion claims, discovery, token cache, errors, key loading (responses)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
import orjson
import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from cart_fhir.errors import ConfigError
from cart_fhir.remote.auth import (
    ASSERTION_TYPE,
    BearerToken,
    NoAuth,
    SmartBackendAuth,
    jwk_thumbprint,
    load_private_key,
    public_jwk,
    public_jwks,
)
from cart_fhir.remote.errors import AuthFailed, ServerError, ServerUnreachable
from cart_fhir.remote.http import FhirHttp

BASE = "https://fhir.example.org/fhir"
DISCOVERY = f"{BASE}/.well-known/smart-configuration"
TOKEN = "https://auth.example.org/oauth/token"
CLIENT = "cart-fhir-client"


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(params=["RS384", "ES384"])
def key_and_alg(request: pytest.FixtureRequest, rsa_key: Any, ec_key: Any) -> tuple[Any, str]:
    return (rsa_key if request.param == "RS384" else ec_key), request.param


@pytest.fixture()
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


@pytest.fixture()
def http() -> FhirHttp:
    return FhirHttp(BASE, timeout=9.0, connect_timeout=2.0, sleep=lambda s: None)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def token_answer(token: str = "tok-1", **extra: Any) -> dict[str, Any]:
    return {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": 300,
        "scope": "system/*.read",
    } | extra


def form_of(call: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(call.request.body).items()}


def pem(
    key: Any,
    password: bytes | None = None,
    fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
) -> bytes:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, fmt, enc)


def private_jwk(key: Any, **extra: Any) -> dict[str, Any]:
    algo = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return algo.to_jwk(key, as_dict=True) | extra


# ---- the assertion ---------------------------------------------------------------------------------


def test_assertion_claims_and_token_request(
    mock: responses.RequestsMock, http: FhirHttp, key_and_alg: tuple[Any, str]
) -> None:
    key, alg = key_and_alg
    mock.post(TOKEN, json=token_answer("tok-1"))
    mock.post(TOKEN, json=token_answer("tok-2"))
    auth = SmartBackendAuth(
        CLIENT,
        key,
        token_url=TOKEN,
        scope="system/Observation.rs",
        kid="k-1",
        jku="https://adapter.example.org/jwks.json",
    )
    assert auth.headers(http) == {"Authorization": "Bearer tok-1"}
    assert auth.refresh() is True
    assert auth.headers(http) == {"Authorization": "Bearer tok-2"}

    jtis = []
    for call in mock.calls:
        form = form_of(call)
        assert call.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert call.request.req_kwargs["timeout"] == (2.0, 9.0)
        assert form["grant_type"] == "client_credentials" and form["scope"] == "system/Observation.rs"
        assert form["client_assertion_type"] == ASSERTION_TYPE
        assertion = form["client_assertion"]
        header = jwt.get_unverified_header(assertion)
        assert header == {
            "alg": alg,
            "typ": "JWT",
            "kid": "k-1",
            "jku": "https://adapter.example.org/jwks.json",
        }
        claims = jwt.decode(
            assertion,
            key.public_key(),
            algorithms=[alg],
            audience=TOKEN,
            issuer=CLIENT,
            options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
        )
        assert claims["sub"] == CLIENT and 0 < claims["exp"] - claims["iat"] <= 300
        jtis.append(claims["jti"])
    assert len(set(jtis)) == 2 and http.token_requests == 2 and http.round_trips == 0


def test_default_kid_is_the_rfc7638_thumbprint_and_no_jku(rsa_key: Any) -> None:
    auth = SmartBackendAuth(CLIENT, rsa_key, token_url=TOKEN)
    header = jwt.get_unverified_header(auth.client_assertion(TOKEN))
    assert header["kid"] == jwk_thumbprint(public_jwk(rsa_key)) and "jku" not in header


def test_rfc7638_thumbprint_example() -> None:
    """RFC 7638 §3.1: the published example key and its thumbprint (an independent check of the rule)."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCi"
        "FV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9"
        "c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls"
        "1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_published_jwks_verifies_our_assertion(key_and_alg: tuple[Any, str]) -> None:
    key, alg = key_and_alg
    auth = SmartBackendAuth(CLIENT, key, token_url=TOKEN)
    jwks = public_jwks(key, auth.kid, auth.alg)
    assert "d" not in jwks["keys"][0] and jwks["keys"][0]["alg"] == alg and jwks["keys"][0]["use"] == "sig"
    assertion = auth.client_assertion(TOKEN)
    verifier = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(assertion)["kid"]]  # as a server does
    assert jwt.decode(assertion, verifier, algorithms=[alg], audience=TOKEN)["iss"] == CLIENT


@pytest.mark.parametrize(
    "make_key,alg,match",
    [
        pytest.param(lambda: rsa.generate_private_key(65537, 1024), None, "1024 bits", id="rsa-1024"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), None, "secp256r1", id="ec-p256"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, None, "not supported", id="ed25519"),
        pytest.param(
            lambda: ec.generate_private_key(ec.SECP384R1()),
            "RS384",
            "ES384 key, cannot sign RS384",
            id="alg-mismatch",
        ),
    ],
)
def test_unusable_keys_are_config_errors(make_key: Any, alg: str | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SmartBackendAuth(CLIENT, make_key(), token_url=TOKEN, alg=alg)  # type: ignore[arg-type]


# ---- discovery ---------------------------------------------------------------------------------------


def test_discovery_then_token_then_fhir_call(
    mock: responses.RequestsMock, http: FhirHttp, ec_key: Any
) -> None:
    mock.get(
        DISCOVERY,
        json={
            "token_endpoint": TOKEN,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "grant_types_supported": ["client_credentials"],
        },
    )
    mock.post(TOKEN, json=token_answer("tok-1"))
    mock.get(f"{BASE}/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    mock.get(f"{BASE}/Patient/p2", json={"resourceType": "Patient", "id": "p2"})
    http.auth = SmartBackendAuth(CLIENT, ec_key)
    http.get("Patient/p1")
    http.get("Patient/p2")
    assert [c.request.url for c in mock.calls] == [
        DISCOVERY,
        TOKEN,
        f"{BASE}/Patient/p1",
        f"{BASE}/Patient/p2",
    ]
    assert mock.calls[0].request.req_kwargs["timeout"] == (2.0, 9.0)
    assert (
        jwt.decode(
            form_of(mock.calls[1])["client_assertion"],
            ec_key.public_key(),
            algorithms=["ES384"],
            audience=TOKEN,
        )["aud"]
        == TOKEN
    )  # aud is the discovered endpoint
    assert all(c.request.headers["Authorization"] == "Bearer tok-1" for c in mock.calls[2:])
    assert http.token_requests == 2 and http.round_trips == 2


def test_discovery_at_an_explicit_fhir_base(
    mock: responses.RequestsMock, http: FhirHttp, rsa_key: Any
) -> None:
    mock.get("https://ehr.example.org/r4/.well-known/smart-configuration", json={"token_endpoint": TOKEN})
    mock.post(TOKEN, json=token_answer())
    SmartBackendAuth(CLIENT, rsa_key, fhir_base="https://ehr.example.org/r4/").headers(http)
    assert http.token_requests == 2


@pytest.mark.parametrize(
    "status,config,match",
    [
        pytest.param(
            404,
            {"resourceType": "OperationOutcome"},
            "no SMART configuration here; set the token URL",
            id="not-found",
        ),
        pytest.param(200, {"issuer": "x"}, "has no token_endpoint", id="no-token-endpoint"),
        pytest.param(
            200,
            {"token_endpoint": TOKEN, "token_endpoint_auth_methods_supported": ["client_secret_basic"]},
            "does not accept private_key_jwt client authentication",
            id="no-private-key-jwt",
        ),
        pytest.param(
            200,
            {"token_endpoint": TOKEN, "token_endpoint_auth_signing_alg_values_supported": ["RS256"]},
            "does not accept RS384 assertions",
            id="alg-not-supported",
        ),
    ],
)
def test_discovery_failures(
    mock: responses.RequestsMock, http: FhirHttp, rsa_key: Any, status: int, config: dict, match: str
) -> None:
    mock.get(DISCOVERY, status=status, json=config)
    with pytest.raises(AuthFailed, match=match) as err:
        SmartBackendAuth(CLIENT, rsa_key).headers(http)
    assert err.value.status == status and err.value.url == DISCOVERY


# ---- token cache ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer_extra,margin,still_cached_at,renewed_at",
    [
        pytest.param({"expires_in": 300}, 60.0, 239.0, 240.0, id="300s-margin-60"),
        pytest.param({"expires_in": 3600}, 60.0, 3539.0, 3540.0, id="1h-margin-60"),
        pytest.param({"expires_in": None}, 60.0, 239.0, 240.0, id="no-expires-in-means-300"),
        pytest.param({"expires_in": 30}, 60.0, 14.0, 15.0, id="short-token-margin-halved"),
    ],
)
def test_token_cached_until_expiry_minus_margin(
    mock: responses.RequestsMock,
    http: FhirHttp,
    rsa_key: Any,
    answer_extra: dict,
    margin: float,
    still_cached_at: float,
    renewed_at: float,
) -> None:
    answer = {k: v for k, v in token_answer("tok-1", **answer_extra).items() if v is not None}
    mock.post(TOKEN, json=answer)
    mock.post(TOKEN, json=token_answer("tok-2"))
    clock = Clock()
    start = clock.now
    auth = SmartBackendAuth(CLIENT, rsa_key, token_url=TOKEN, expiry_margin=margin, clock=clock)
    assert auth.headers(http)["Authorization"] == "Bearer tok-1"
    clock.now = start + still_cached_at
    assert auth.headers(http)["Authorization"] == "Bearer tok-1" and http.token_requests == 1
    clock.now = start + renewed_at
    assert auth.headers(http)["Authorization"] == "Bearer tok-2" and http.token_requests == 2


def test_401_from_fhir_server_fetches_a_new_token(
    mock: responses.RequestsMock, http: FhirHttp, rsa_key: Any
) -> None:
    mock.post(TOKEN, json=token_answer("tok-1"))
    mock.get(f"{BASE}/Patient/p1", status=401)
    mock.post(TOKEN, json=token_answer("tok-2"))
    mock.get(f"{BASE}/Patient/p1", json={"resourceType": "Patient"})
    http.auth = SmartBackendAuth(CLIENT, rsa_key, token_url=TOKEN)
    assert http.get("Patient/p1").status == 200
    assert mock.calls[3].request.headers["Authorization"] == "Bearer tok-2"
    assert http.token_requests == 2 and http.round_trips == 2


def test_threads_share_one_token_fetch(mock: responses.RequestsMock, http: FhirHttp, ec_key: Any) -> None:
    def slow_token(request: requests.PreparedRequest) -> tuple[int, dict, bytes]:
        time.sleep(0.05)  # keep the other threads waiting on the lock, not fetching their own token
        return 200, {"Content-Type": "application/json"}, orjson.dumps(token_answer())

    mock.add_callback("POST", TOKEN, callback=slow_token)
    auth = SmartBackendAuth(CLIENT, ec_key, token_url=TOKEN)
    results: list[dict[str, str]] = []
    threads = [threading.Thread(target=lambda: results.append(auth.headers(http))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r == {"Authorization": "Bearer tok-1"} for r in results)
    assert len(mock.calls) == 1 == http.token_requests


# ---- token endpoint errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status,body,error,match",
    [
        pytest.param(
            400,
            {"error": "invalid_client", "error_description": "signature does not verify"},
            AuthFailed,
            "HTTP 400: token endpoint refused: invalid_client: signature does not verify",
            id="invalid-client",
        ),
        pytest.param(
            401,
            {"error": "invalid_scope"},
            AuthFailed,
            "HTTP 401: token endpoint refused: invalid_scope$",
            id="invalid-scope-no-description",
        ),
        pytest.param(
            400,
            "<html><h1>Bad request</h1></html>",
            AuthFailed,
            "token endpoint refused: Bad request",
            id="html-error",
        ),
        pytest.param(
            200,
            {"token_type": "bearer", "expires_in": 300},
            AuthFailed,
            "token answer has no access_token",
            id="no-access-token",
        ),
        pytest.param(
            200,
            {"access_token": "t", "token_type": "DPoP"},
            AuthFailed,
            "token_type 'DPoP' is not bearer",
            id="not-bearer",
        ),
        pytest.param(
            503, {"error": "temporarily_unavailable"}, ServerError, "HTTP 503", id="server-down-not-auth"
        ),
    ],
)
def test_token_endpoint_errors(
    mock: responses.RequestsMock,
    http: FhirHttp,
    rsa_key: Any,
    status: int,
    body: Any,
    error: type[Exception],
    match: str,
) -> None:
    if isinstance(body, dict):
        mock.post(TOKEN, status=status, json=body)
    else:
        mock.post(TOKEN, status=status, body=body, content_type="text/html")
    with pytest.raises(error, match=match) as err:
        SmartBackendAuth(CLIENT, rsa_key, token_url=TOKEN).headers(http)
    assert type(err.value) is error and err.value.method == "POST" and err.value.url == TOKEN


def test_token_endpoint_unreachable(mock: responses.RequestsMock, http: FhirHttp, rsa_key: Any) -> None:
    mock.post(TOKEN, body=requests.ConnectTimeout("timed out"))
    with pytest.raises(ServerUnreachable, match="ConnectTimeout"):
        SmartBackendAuth(CLIENT, rsa_key, token_url=TOKEN).headers(http)


def test_secrets_stay_out_of_reprs_and_errors(
    mock: responses.RequestsMock, http: FhirHttp, rsa_key: Any
) -> None:
    mock.post(TOKEN, json=token_answer("the-access-token"))
    auth = SmartBackendAuth(CLIENT, rsa_key, token_url=TOKEN)
    auth.headers(http)
    assert "the-access-token" not in repr(auth) and "cached" in repr(auth)
    assert "sekrit" not in repr(BearerToken("sekrit"))


def test_simple_strategies() -> None:
    http = FhirHttp(BASE)
    assert NoAuth().headers(http) == {} and NoAuth().refresh() is False
    assert (
        BearerToken("abc").headers(http) == {"Authorization": "Bearer abc"}
        and BearerToken("abc").refresh() is False
    )


# ---- load_private_key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "which,fmt,alg",
    [
        pytest.param("rsa", serialization.PrivateFormat.PKCS8, "RS384", id="rsa-pkcs8"),
        pytest.param("rsa", serialization.PrivateFormat.TraditionalOpenSSL, "RS384", id="rsa-pkcs1"),
        pytest.param("ec", serialization.PrivateFormat.PKCS8, "ES384", id="ec-p384-pkcs8"),
        pytest.param("ec", serialization.PrivateFormat.TraditionalOpenSSL, "ES384", id="ec-p384-sec1"),
    ],
)
def test_load_pem(tmp_path: Path, rsa_key: Any, ec_key: Any, which: str, fmt: Any, alg: str) -> None:
    key = rsa_key if which == "rsa" else ec_key
    path = tmp_path / "key.pem"
    path.write_bytes(pem(key, fmt=fmt))
    loaded, kid, got_alg = load_private_key(str(path))
    assert got_alg == alg and loaded.private_numbers() == key.private_numbers()
    # The default kid is what a JWKS published with the same rule names the key.
    assert kid == jwk_thumbprint(public_jwks(key, kid, alg)["keys"][0])
    assert load_private_key(str(path), kid="chosen")[1] == "chosen"


def test_load_jwks_picks_by_kid_or_first_usable(tmp_path: Path, rsa_key: Any, ec_key: Any) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    jwks = {
        "keys": [
            public_jwk(rsa_key) | {"kid": "public-only"},
            private_jwk(rsa_key, kid="rs256-key", alg="RS256"),
            private_jwk(p256, kid="p256"),
            private_jwk(ec_key, kid="ec-1"),
            private_jwk(rsa_key, kid="rsa-1", alg="RS384"),
        ]
    }
    path = tmp_path / "jwks.json"
    path.write_bytes(orjson.dumps(jwks))
    key, kid, alg = load_private_key(str(path))
    assert (kid, alg) == ("ec-1", "ES384") and key.private_numbers() == ec_key.private_numbers()
    key, kid, alg = load_private_key(str(path), kid="rsa-1")
    assert (kid, alg) == ("rsa-1", "RS384") and key.private_numbers() == rsa_key.private_numbers()


def test_load_single_jwk_without_kid_uses_thumbprint(tmp_path: Path, rsa_key: Any) -> None:
    path = tmp_path / "key.jwk"
    path.write_bytes(orjson.dumps(private_jwk(rsa_key)))
    _, kid, alg = load_private_key(str(path))
    assert kid == jwk_thumbprint(public_jwk(rsa_key)) and alg == "RS384"


@pytest.mark.parametrize(
    "make_content,kid,match",
    [
        pytest.param(None, None, "cannot read the private key", id="missing-file"),
        pytest.param(
            lambda k: b"hello, not a key", None, "not a PEM private key or a JWK/JWKS", id="garbage"
        ),
        pytest.param(lambda k: b"{not json", None, "invalid JSON", id="broken-json"),
        pytest.param(
            lambda k: orjson.dumps({"keys": [public_jwk(k["rsa"])]}),
            None,
            "no private key",
            id="jwks-public-only",
        ),
        pytest.param(
            lambda k: orjson.dumps({"keys": [private_jwk(k["rsa"], kid="a")]}),
            "b",
            "no private key with kid 'b' \\(private kids: a\\)",
            id="kid-not-found",
        ),
        pytest.param(
            lambda k: orjson.dumps({"keys": [private_jwk(k["rsa"], kid="a", alg="RS256")]}),
            None,
            "no RS384 or ES384 private key",
            id="jwks-only-rs256",
        ),
        pytest.param(
            lambda k: orjson.dumps(private_jwk(k["rsa"], kid="a", alg="RS256")),
            "a",
            "declared for RS256",
            id="kid-chosen-but-rs256",
        ),
        pytest.param(
            lambda k: orjson.dumps({"kty": "RSA", "kid": "a", "n": "AQAB", "e": "AQAB", "d": "!!"}),
            None,
            "invalid JWK 'a'",
            id="jwk-broken",
        ),
        pytest.param(lambda k: pem(k["rsa"], password=b"pw"), None, "encrypted", id="encrypted-pem"),
        pytest.param(lambda k: pem(rsa.generate_private_key(65537, 1024)), None, "1024 bits", id="rsa-1024"),
        pytest.param(lambda k: pem(ec.generate_private_key(ec.SECP256R1())), None, "secp256r1", id="ec-p256"),
        pytest.param(
            lambda k: pem(ed25519.Ed25519PrivateKey.generate()), None, "not supported", id="ed25519"
        ),
    ],
)
def test_load_private_key_errors_name_the_file(
    tmp_path: Path, rsa_key: Any, make_content: Any, kid: str | None, match: str
) -> None:
    path = tmp_path / "client-key.bin"
    if make_content is not None:
        path.write_bytes(make_content({"rsa": rsa_key}))
    with pytest.raises(ConfigError, match=match) as err:
        load_private_key(str(path), kid=kid)
    assert str(path) in str(err.value)
