"""Auth strategies for FhirHttp: none, a fixed bearer token, SMART Backend Services (private_key_jwt)."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

import jwt
import orjson
import requests
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ..constants import MIN_RSA_BITS
from ..errors import ConfigError
from .errors import AuthFailed, ServerError, ServerUnreachable, body_excerpt

if TYPE_CHECKING:
    from .http import FhirHttp

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
Alg: TypeAlias = Literal["RS384", "ES384"]

# SMART App Launch 2.x, Backend Services: https://hl7.org/fhir/smart-app-launch/backend-services.html
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 300  # "exp ... no more than five minutes in the future"
DEFAULT_EXPIRES_IN = 300  # a token answer without expires_in: assume the spec's recommended lifetime
# RFC 7638 §3.2: the required members of each key type, in lexicographic order, hashed as compact JSON.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}


class Auth(Protocol):
    """What FhirHttp needs from an auth strategy."""

    def headers(self, http: FhirHttp) -> dict[str, str]:
        """{"Authorization": "Bearer ..."} or {} (may fetch a token through `http`)."""
        ...

    def refresh(self) -> bool:
        """Drop the cached token; True if a new one can be fetched (then FhirHttp retries once)."""
        ...


class NoAuth:
    """An open server (the test server, a server behind a trusted network)."""

    def headers(self, http: FhirHttp) -> dict[str, str]:
        return {}

    def refresh(self) -> bool:
        return False


class BearerToken:
    """A token obtained elsewhere; it cannot be renewed, so a 401 is final."""

    def __init__(self, token: str) -> None:
        self._token = token

    def headers(self, http: FhirHttp) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def refresh(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "BearerToken(<hidden>)"


class SmartBackendAuth:
    """SMART Backend Services: client_credentials grant with a signed JWT assertion; token cached."""

    def __init__(self, client_id: str, key: PrivateKey, *, scope: str = "system/*.read system/*.write",
                 token_url: str | None = None, fhir_base: str | None = None, kid: str | None = None,
                 alg: Alg | None = None, jku: str | None = None, expiry_margin: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        key, key_alg = signing_key(key, "the SMART client key")
        if alg is not None and alg != key_alg:
            raise ConfigError(f"SMART client key is an {key_alg} key, cannot sign {alg}")
        self.client_id = client_id
        self.scope = scope
        self.token_url = token_url
        self.fhir_base = fhir_base
        self.alg: Alg = key_alg
        self.kid = kid or jwk_thumbprint(public_jwk(key))
        self.jku = jku
        self.expiry_margin = expiry_margin
        self._key = key
        self._clock = clock
        self._lock = threading.Lock()  # one token fetch at a time when the service's threads share us
        self._token: str | None = None
        self._expires_at = 0.0

    def headers(self, http: FhirHttp) -> dict[str, str]:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                self._fetch_token(http)
            return {"Authorization": f"Bearer {self._token}"}

    def refresh(self) -> bool:
        with self._lock:
            self._token = None
        return True

    def client_assertion(self, token_url: str) -> str:
        """A fresh private_key_jwt: iss = sub = client_id, aud = token endpoint, unique jti, 5-minute life."""
        now = int(self._clock())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": token_url, "iat": now,
                  "exp": now + ASSERTION_LIFETIME, "jti": str(uuid.uuid4())}
        header = {"kid": self.kid, "typ": "JWT"}
        if self.jku:
            header["jku"] = self.jku
        return jwt.encode(claims, self._key, algorithm=self.alg, headers=header)

    def __repr__(self) -> str:
        return f"SmartBackendAuth(client_id={self.client_id!r}, kid={self.kid!r}, alg={self.alg}, " \
               f"token={'cached' if self._token else 'none'})"

    # ---- internals (called with the lock held) -------------------------------------------------

    def _fetch_token(self, http: FhirHttp) -> None:
        token_url = self.token_url or self._discover(http)
        form = {"grant_type": "client_credentials", "scope": self.scope,
                "client_assertion_type": ASSERTION_TYPE, "client_assertion": self.client_assertion(token_url)}
        resp = _call(http, "POST", token_url, data=form)
        answer = _json_object(resp)
        if not resp.ok:
            # RFC 6749 §5.2: {"error": "invalid_client", "error_description": "..."}
            error, description = answer.get("error"), answer.get("error_description")
            if error:
                detail = f"token endpoint refused: {error}" + (f": {description}" if description else "")
            else:
                detail = f"token endpoint refused: {body_excerpt(resp.text)}"
            cls = AuthFailed if 400 <= resp.status_code < 500 else ServerError
            raise cls("POST", token_url, resp.status_code, detail=detail)
        token = answer.get("access_token") if answer else None
        if not isinstance(token, str) or not token:
            raise AuthFailed("POST", token_url, resp.status_code, detail="token answer has no access_token")
        token_type = answer.get("token_type", "bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise AuthFailed("POST", token_url, resp.status_code,
                             detail=f"token_type {token_type!r} is not bearer")
        expires_in = answer.get("expires_in", DEFAULT_EXPIRES_IN)
        expires_in = float(expires_in) if isinstance(expires_in, int | float) else float(DEFAULT_EXPIRES_IN)
        # A margin larger than half the lifetime would fetch a new token for every request.
        margin = min(self.expiry_margin, expires_in / 2)
        self._token = token
        self._expires_at = self._clock() + expires_in - margin

    def _discover(self, http: FhirHttp) -> str:
        base = (self.fhir_base or http.base_url).rstrip("/")
        url = f"{base}/.well-known/smart-configuration"
        resp = _call(http, "GET", url)
        config = _json_object(resp)
        if not resp.ok or not config:
            raise AuthFailed("GET", url, resp.status_code,
                             detail="no SMART configuration here; set the token URL explicitly")
        endpoint = config.get("token_endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise AuthFailed("GET", url, resp.status_code, detail="SMART configuration has no token_endpoint")
        methods = config.get("token_endpoint_auth_methods_supported")
        if isinstance(methods, list) and "private_key_jwt" not in methods:
            raise AuthFailed("GET", url, resp.status_code,
                             detail="server does not accept private_key_jwt client authentication "
                                    f"(supports: {', '.join(map(str, methods))})")
        algs = config.get("token_endpoint_auth_signing_alg_values_supported")
        if isinstance(algs, list) and self.alg not in algs:
            raise AuthFailed("GET", url, resp.status_code,
                             detail=f"server does not accept {self.alg} assertions (supports: "
                                    f"{', '.join(map(str, algs))})")
        self.token_url = endpoint
        return endpoint


def _call(http: FhirHttp, method: str, url: str, data: Mapping[str, str] | None = None) -> requests.Response:
    """One auth round trip through the FHIR client's pooled session, counted, with its timeouts."""
    http.token_requests += 1
    try:
        # Never logged: the form holds the signed assertion and the answer holds the token.
        return http.session.request(method, url, data=data, timeout=http.timeouts, allow_redirects=False,
                                    headers={"Accept": "application/json", "User-Agent": http.user_agent})
    except requests.RequestException as exc:
        raise ServerUnreachable(method, url, f"{type(exc).__name__}: {str(exc)[:200]}") from exc


def _json_object(resp: requests.Response) -> dict[str, Any]:
    try:
        parsed = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


# ---- keys ----------------------------------------------------------------------------------------

def signing_key(key: object, where: str) -> tuple[PrivateKey, Alg]:
    """The key and its algorithm: RS384 for RSA >= 2048 bits, ES384 for EC P-384."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(f"{where}: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} needed")
        return key, "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise ConfigError(f"{where}: EC key on curve {key.curve.name}; ES384 needs P-384 (secp384r1)")
        return key, "ES384"
    raise ConfigError(f"{where}: {type(key).__name__} is not supported; use RSA (RS384) or EC P-384 (ES384)")


def public_jwk(key: PrivateKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """The public half of a key as a JWK (no kid, alg or use)."""
    pub = key.public_key() if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) else key
    if isinstance(pub, rsa.RSAPublicKey):
        return RSAAlgorithm.to_jwk(pub, as_dict=True)
    return ECAlgorithm.to_jwk(pub, as_dict=True)


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise ConfigError(f"cannot take the thumbprint of a {jwk.get('kty')!r} key")
    canonical = orjson.dumps({m: jwk[m] for m in members})  # members in order, no whitespace
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def public_jwks(key: PrivateKey, kid: str, alg: Alg) -> dict[str, Any]:
    """The JWKS to publish (or register) for this key: what the server verifies our assertions with."""
    jwk = public_jwk(key) | {"kid": kid, "alg": alg, "use": "sig", "key_ops": ["verify"]}
    return {"keys": [jwk]}


def load_private_key(path: str, kid: str | None = None) -> tuple[PrivateKey, str, Alg]:
    """(key, kid, alg) from a PEM file or a private JWK / JWKS JSON file; ConfigError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the private key: {exc.strerror or exc}") from exc
    if data.lstrip().startswith(b"{"):
        return _from_jwk_file(path, data, kid)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography: "Password was not given but private key is encrypted"
        raise ConfigError(f"{path}: the private key is encrypted; give an unencrypted PEM") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not a PEM private key or a JWK/JWKS JSON file") from exc
    signer, alg = signing_key(key, path)
    return signer, kid or jwk_thumbprint(public_jwk(signer)), alg


def _from_jwk_file(path: str, data: bytes, kid: str | None) -> tuple[PrivateKey, str, Alg]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from exc
    jwks = parsed.get("keys") if isinstance(parsed, dict) and "keys" in parsed else [parsed]
    if not isinstance(jwks, list):
        raise ConfigError(f"{path}: 'keys' is not a list")
    private = [k for k in jwks if isinstance(k, dict) and "d" in k]
    if not private:
        raise ConfigError(f"{path}: no private key (a JWK with 'd') in the file")
    if kid is not None:
        chosen = [k for k in private if k.get("kid") == kid]
        if not chosen:
            kids = ", ".join(str(k.get("kid")) for k in private)
            raise ConfigError(f"{path}: no private key with kid {kid!r} (private kids: {kids})")
    else:
        chosen = [k for k in private if _usable(k)]
        if not chosen:
            raise ConfigError(f"{path}: no RS384 or ES384 private key (RSA, or EC on P-384) in the file")
    jwk = chosen[0]
    try:
        loader = RSAAlgorithm if jwk.get("kty") == "RSA" else ECAlgorithm
        loaded = loader.from_jwk(jwk)
    except (jwt.InvalidKeyError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: invalid JWK {jwk.get('kid', '')!r}: {exc}") from exc
    key, alg = signing_key(loaded, path)
    if jwk.get("alg") not in (None, alg):
        raise ConfigError(f"{path}: JWK {jwk.get('kid', '')!r} is declared for {jwk['alg']}, not {alg}")
    return key, str(jwk.get("kid") or jwk_thumbprint(public_jwk(key))), alg


def _usable(jwk: dict[str, Any]) -> bool:
    if jwk.get("kty") == "RSA":
        return jwk.get("alg") in (None, "RS384")
    return jwk.get("kty") == "EC" and jwk.get("crv") == "P-384" and jwk.get("alg") in (None, "ES384")
