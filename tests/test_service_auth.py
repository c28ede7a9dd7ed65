"""Inbound auth on the FHIR operations, end to end through the app: the token cases an EHR can get wrong."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cart_fhir.errors import ConfigError
from cart_fhir.service import create_app

AUD = "https://cart-fhir.example.org"
ISS = "https://ehr.example.org/auth"
EXAMPLE = Path("examples/crs-grade2-tocilizumab.json").read_bytes()
READ = "system/Observation.rs system/Condition.rs system/AdverseEvent.rs"

RSA_KEY = rsa.generate_private_key(65537, 2048)
EC_KEY = ec.generate_private_key(ec.SECP384R1())
STRANGER = rsa.generate_private_key(65537, 2048)


def _jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algo = jwt.algorithms.RSAAlgorithm if alg == "RS384" else jwt.algorithms.ECAlgorithm
    return {**algo.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
def app(engine, tmp_path_factory):
    jwks = tmp_path_factory.mktemp("jwks") / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [_jwk(RSA_KEY, "rsa-1", "RS384"), _jwk(EC_KEY, "ec-1", "ES384")]}))
    return create_app({"testing": True, "auth": True, "audience": AUD, "jwks": str(jwks), "issuers": ISS,
                       "upstream": False, "tables": engine.tables})


def token(key: Any = RSA_KEY, alg: str = "RS384", kid: str = "rsa-1", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISS, "sub": "registry-client", "aud": AUD, "iat": now, "exp": now + 300,
            "jti": str(uuid.uuid4()), "scope": READ}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def unsigned(**claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"iss": ISS, "sub": "x", "aud": AUD, "exp": now + 300, "scope": READ, **claims}, None,
                      algorithm="none", headers={"kid": "rsa-1"})


def call(app: Any, authorization: str | None) -> Any:
    headers = {"Content-Type": "application/fhir+json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    return app.test_client().post("/fhir/$grade-toxicity", data=EXAMPLE, headers=headers)


@pytest.mark.parametrize("authorization,status", [
    pytest.param(None, 401, id="no-token"),
    pytest.param("Basic dXNlcjpwdw==", 401, id="not-bearer"),
    pytest.param("Bearer not-a-jwt", 401, id="garbage"),
    pytest.param(lambda: "Bearer " + token(exp=int(time.time()) - 120), 401, id="expired"),
    pytest.param(lambda: "Bearer " + token(key=STRANGER), 401, id="unknown-key-same-kid"),
    pytest.param(lambda: "Bearer " + token(key=STRANGER, kid="stranger"), 401, id="unknown-kid"),
    pytest.param(lambda: "Bearer " + unsigned(), 401, id="alg-none"),
    pytest.param(lambda: "Bearer " + token(aud="https://other.example.org"), 401, id="wrong-audience"),
    pytest.param(lambda: "Bearer " + token(iss="https://evil.example.org"), 401, id="issuer-not-allowed"),
    pytest.param(lambda: "Bearer " + token(exp=None), 401, id="no-exp"),
    pytest.param(lambda: "Bearer " + token(scope="system/Observation.rs"), 403, id="missing-scope"),
    pytest.param(lambda: "Bearer " + token(scope="patient/*.rs"), 403, id="patient-scope-is-not-enough"),
    pytest.param(lambda: "Bearer " + token(), 200, id="good-rs384-v2-scopes"),
    pytest.param(lambda: "Bearer " + token(key=EC_KEY, alg="ES384", kid="ec-1"), 200, id="good-es384"),
    pytest.param(lambda: "Bearer " + token(scope="system/*.read"), 200, id="good-v1-scope"),
])
def test_token_cases(app, authorization, status):
    auth = authorization() if callable(authorization) else authorization
    resp = call(app, auth)
    assert resp.status_code == status, resp.data[:300]
    if status >= 400:
        body = resp.get_json(force=True)
        assert body["resourceType"] == "OperationOutcome"
        assert "WWW-Authenticate" in resp.headers
        assert auth is None or auth.split(" ")[-1] not in resp.data.decode()  # never echo the token


def test_hs256_signed_with_the_public_key_is_refused(app):
    import base64
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header = b64(orjson.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}))
    now = int(time.time())
    payload = b64(orjson.dumps({"iss": ISS, "sub": "x", "aud": AUD, "exp": now + 300, "scope": READ}))
    sig = b64(hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    assert call(app, f"Bearer {header}.{payload}.{sig}").status_code == 401


def test_public_endpoints_need_no_token(app):
    client = app.test_client()
    for path in ("/health", "/fhir/metadata", "/openapi.json", "/cds-services"):
        assert client.get(path).status_code == 200, path
    spec = client.get("/openapi.json").get_json()
    assert spec["paths"]["/fhir/$grade-toxicity"]["post"]["security"] == [{"bearer": []}]


def test_write_back_needs_write_scopes(engine, tmp_path, fhir):
    from cart_fhir.remote.settings import load_settings

    jwks = tmp_path / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [_jwk(RSA_KEY, "rsa-1", "RS384")]}))
    app = create_app({"testing": True, "auth": True, "audience": AUD, "jwks": str(jwks), "issuers": ISS,
                      "tables": engine.tables, "server": load_settings({"base_url": fhir.base_url}, None, {})})
    from fhirbuild import PatientBuilder, bundle_of

    b = PatientBuilder("p1")
    b.temp(1, "08:00", 39.2)
    fhir.load(bundle_of(b.resources, "transaction"))
    client = app.test_client()
    read_only = {"Authorization": "Bearer " + token(scope=READ + " system/Patient.rs")}
    assert client.post("/fhir/Patient/p1/$grade-toxicity", headers=read_only).status_code == 200
    refused = client.post("/fhir/Patient/p1/$grade-toxicity?writeBack=true", headers=read_only)
    assert refused.status_code == 403 and "cu" in refused.get_json(force=True)["issue"][0]["details"]["text"]
    assert fhir.count("Provenance") == 0
    writer = {"Authorization": "Bearer " + token(scope="system/*.cruds")}
    assert client.post("/fhir/Patient/p1/$grade-toxicity?writeBack=true", headers=writer).status_code == 200
    assert fhir.count("Provenance") == 1


def test_refuses_to_start_with_auth_on_and_nothing_configured(engine):
    with pytest.raises(ConfigError, match="CART_FHIR_AUDIENCE.*CART_FHIR_JWKS.*CART_FHIR_ISSUERS"):
        create_app({"auth": True, "upstream": False, "tables": engine.tables})
    with pytest.raises(ConfigError, match="CART_FHIR_SERVER"):
        create_app({"auth": False, "upstream": True, "tables": engine.tables, "testing": False})
