"""Inbound auth: SMART access-token JWTs, CDS Hooks client JWTs, their JWKS keys, SMART v2 scope checks."""

from __future__ import annotations

import base64
import heapq
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests

from ..constants import LOOPBACK, MIN_RSA_BITS
from ..errors import ConfigError
from .errors import ServiceError

log = logging.getLogger("cart_fhir.security")

REALM = "cart-fhir"
# Asymmetric algorithms only, as SMART Backend Services and CDS Hooks 2.0 recommend. An allow-list checked
# before any key lookup: `none` and HS* (an RSA public key used as an HMAC secret, RFC 8725 §2.1) never get
# in. Each algorithm is bound to one key shape: an EC key never verifies an RS384 header, nor RSA an ES384.
KEY_SHAPES = {"RS384": ("RSA", None), "ES384": ("EC", "P-384")}
MAX_TOKEN_CHARS = 16_384  # bounds the work an unauthenticated caller can ask for
MAX_JWKS_BYTES = 1 << 20
FETCH_TIMEOUT = 10.0
_TOKEN_SYNTAX = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")  # alg none: empty signature
_SHOWN_ALG = re.compile(r"[A-Za-z0-9+-]{1,16}")


@dataclass(frozen=True)
class Principal:
    """Who called: the token's issuer, subject and client, what it may do, and its id (never the token)."""

    issuer: str
    subject: str
    client_id: str | None
    scopes: frozenset[str]
    token_id: str | None
    tenant: str | None = None  # CDS Hooks 2.0: the healthcare organisation invoking the hook (optional)


class KeyLookupError(LookupError):
    """No key for (kid, alg): `reason` says which way, safe to show the caller."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class KeysUnavailable(Exception):
    """The JWKS could not be loaded and nothing usable is cached: the service's problem, not the caller's."""


@dataclass(frozen=True)
class _KeySet:
    keys: dict[tuple[str, str], jwt.PyJWK]  # (kid, alg) -> key bound to that algorithm
    kids: frozenset[str]
    loaded_at: float
    stamp: tuple[int, int] | None  # file (mtime_ns, size) it was read from


class JwksSource:
    """A JWK Set from a file or an https URL, cached for `ttl`; an unknown kid triggers a refetch at most once
    per `min_refetch_interval` (key rotation, RFC 7517 §5 kid), a changed file is re-read."""

    def __init__(self, location: str, *, session: requests.Session | None = None, ttl: float = 300,
                 min_refetch_interval: float = 60, clock: Callable[[], float] = time.time) -> None:
        self.location = location
        self._url = _jwks_url(location)
        self._path = None if self._url else Path(location)
        self._session = session or requests.Session()
        self._ttl, self._min_refetch, self._clock = ttl, min_refetch_interval, clock
        self._lock = threading.Lock()  # one loader at a time; readers take the immutable snapshot without it
        self._set: _KeySet | None = None
        self._next_try = float("-inf")  # after a failed or kid-driven load: not before this time
        self._bad_stamp: tuple[int, int] | None = None  # a file version that failed to parse
        if self._path is not None:  # a file is checked at start-up (house style 4); a URL on first use
            try:
                self._set = self._load(self._clock())
            except KeysUnavailable as exc:
                raise ConfigError(f"JWKS file {location}: {exc}") from exc

    def key(self, kid: str, alg: str) -> jwt.PyJWK:
        """The key for this kid and algorithm; KeyLookupError if none, KeysUnavailable if nothing loads."""
        now = self._clock()
        current = self._set
        if current is not None and not self._stale(current, now) and (kid, alg) in current.keys:
            return current.keys[(kid, alg)]  # the fast path: no lock
        with self._lock:
            current = self._refresh(now, force=False)
            if kid not in current.kids and self._url and now >= self._next_try:
                current = self._refresh(now, force=True)  # maybe rotated: at most once per interval
            if (kid, alg) in current.keys:
                return current.keys[(kid, alg)]
            if kid in current.kids:
                raise KeyLookupError("token kid names a signing key that does not match the token algorithm")
            raise KeyLookupError("token kid names an unknown signing key")

    def _stale(self, current: _KeySet, now: float) -> bool:
        if self._path is not None:
            return _stamp(self._path) not in (current.stamp, self._bad_stamp)
        return now - current.loaded_at >= self._ttl

    def _refresh(self, now: float, *, force: bool) -> _KeySet:
        """Reload if stale (or forced); a URL is tried at most once per min_refetch_interval after a load."""
        current = self._set
        if current is not None and not force and not self._stale(current, now):
            return current
        if self._url and now < self._next_try:
            if current is None:
                raise KeysUnavailable("the last attempt to fetch the key set failed")
            return current
        self._next_try = now + self._min_refetch
        try:
            self._set = self._load(now)
            self._bad_stamp = None
        except KeysUnavailable as exc:
            if current is None:
                raise
            # Keep serving the keys we have: an identity provider's hiccup must not lock every caller out.
            log.warning("JWKS %s reload failed, keeping the cached keys: %s", self.location, exc)
            self._bad_stamp = _stamp(self._path) if self._path is not None else None
            return current
        return self._set

    def _load(self, now: float) -> _KeySet:
        stamp = _stamp(self._path) if self._path is not None else None
        try:
            raw = self._path.read_bytes() if self._path is not None else self._fetch()
            data = json.loads(raw)
        except (OSError, ValueError, requests.RequestException) as exc:
            raise KeysUnavailable(f"cannot read the key set: {type(exc).__name__}: {str(exc)[:200]}") from exc
        members = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(members, list):
            raise KeysUnavailable("not a JWK Set (no keys array)")
        keys: dict[tuple[str, str], jwt.PyJWK] = {}
        for member in members:
            if isinstance(member, dict) and (found := _usable(member)) is not None:
                keys[found[:2]] = found[2]
        if not keys:
            raise KeysUnavailable("no usable RS384 (RSA >= 2048 bits) or ES384 (P-384) signing keys")
        return _KeySet(keys, frozenset(kid for kid, _ in keys), now, stamp)

    def _fetch(self) -> bytes:
        # No redirects: the operator named this URL, a redirect elsewhere is not theirs to trust.
        with self._session.get(self._url or "", timeout=FETCH_TIMEOUT, allow_redirects=False, stream=True,
                               headers={"Accept": "application/json"}) as resp:
            if resp.status_code != 200:
                raise requests.HTTPError(f"HTTP {resp.status_code}")
            body = b""
            for chunk in resp.iter_content(65536):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise requests.HTTPError("key set larger than 1 MiB")
            return body


def _jwks_url(location: str) -> str | None:
    if "://" not in location:
        return None
    parts = urlsplit(location)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK):
        return location
    raise ConfigError(f"JWKS location {location!r}: must be a file path or an https:// URL "
                      "(http:// only on loopback)")


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _usable(jwk: dict[str, Any]) -> tuple[str, str, jwt.PyJWK] | None:
    """(kid, alg, key) for a signature key we accept; None skips it quietly (a JWKS may hold other keys)."""
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig" \
            or "verify" not in jwk.get("key_ops", ["verify"]):  # RFC 7517 §4.2-4.3: not for signatures
        return None
    if "d" in jwk:  # private key material published by mistake: refuse to use it, and say so
        log.warning("JWKS key %s skipped: it contains a private key", kid)
        return None
    for alg, (kty, crv) in KEY_SHAPES.items():
        if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv) or jwk.get("alg", alg) != alg:
            continue
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
        except jwt.PyJWTError:
            log.warning("JWKS key %s skipped: not a valid %s key", kid, kty)
            return None
        if kty == "RSA" and key.key.key_size < MIN_RSA_BITS:
            log.warning("JWKS key %s skipped: RSA key shorter than %d bits", kid, MIN_RSA_BITS)
            return None
        return kid, alg, key
    return None


def _challenge(text: str, error: str | None = "invalid_token") -> ServiceError:
    """401 with an RFC 6750 §3 challenge; `text` is ours (never the token's content)."""
    log.info("bearer token rejected: %s", text)
    value = f'Bearer realm="{REALM}"'
    if error:
        safe = re.sub(r'[^ -~]|["\\]', "", text)
        value += f', error="{error}", error_description="{safe}"'
    return ServiceError(401, text, code="login", headers={"WWW-Authenticate": value})


def _audiences(url: str) -> list[str]:
    base = url.rstrip("/")
    return [base, base + "/"]  # trailing-slash tolerant, otherwise exact (no prefix matching)


_JWT_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "token audience (aud) is not this service"),
    (jwt.InvalidIssuerError, "token issuer (iss) is not trusted"),
    (jwt.InvalidSignatureError, "token signature does not verify"),
    (jwt.InvalidAlgorithmError, "token algorithm does not match its key"),
)


class _JwtVerifier:
    """What both verifiers share: the Bearer header, the alg allow-list, the key, pyjwt's claim checks."""

    def __init__(self, jwks: str | JwksSource, issuers: Sequence[str], leeway: int) -> None:
        self.jwks = jwks if isinstance(jwks, JwksSource) else JwksSource(jwks)
        self.issuers = (issuers,) if isinstance(issuers, str) else tuple(issuers)
        if not self.issuers:
            raise ConfigError("token verification needs at least one trusted issuer")
        self.leeway = leeway

    def _claims(self, authorization: str | None, *, audience: Sequence[str],
                require: list[str]) -> dict[str, Any]:
        token = _bearer_token(authorization)
        header = _header(token)
        alg = header.get("alg")
        if alg not in KEY_SHAPES:
            shown = f" {alg}" if isinstance(alg, str) and _SHOWN_ALG.fullmatch(alg) else ""
            raise _challenge(f"token algorithm{shown} not accepted (RS384 or ES384 only)")
        if "crit" in header:  # RFC 7515 §4.1.11: we understand no extension, so must refuse any
            raise _challenge("token header has critical extensions (crit) this service does not support")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise _challenge("token header has no key id (kid)")
        self._check_header(header)
        try:
            key = self.jwks.key(kid, alg)
        except KeyLookupError as exc:
            raise _challenge(exc.reason) from None
        except KeysUnavailable as exc:
            log.error("cannot verify bearer tokens: JWKS %s unavailable: %s", self.jwks.location, exc)
            raise ServiceError(503, "the token signing keys are unavailable; try again later",
                               headers={"Retry-After": "60"}) from None
        try:
            return jwt.decode(token, key=key, algorithms=[alg], audience=audience, issuer=self.issuers,
                              leeway=self.leeway,
                              options={"require": require, "enforce_minimum_key_length": True})
        except jwt.MissingRequiredClaimError as exc:
            raise _challenge(f"token lacks the {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            text = next((t for cls, t in _JWT_ERRORS if isinstance(exc, cls)), "malformed token claims")
            raise _challenge(text) from None

    def _check_header(self, header: dict[str, Any]) -> None:
        """Per-profile header checks (before any key lookup)."""


def _bearer_token(authorization: str | None) -> str:
    if not authorization or not authorization.strip():
        raise _challenge("missing bearer token", error=None)
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        # RFC 6750 §3.1: an unsupported authentication method gets the bare challenge, no error code.
        raise _challenge("the Authorization header is not a Bearer token", error=None)
    token = token.strip()
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN_SYNTAX.fullmatch(token):
        raise _challenge("malformed token")
    return token


def _header(token: str) -> dict[str, Any]:
    """The JOSE header, read by us (not pyjwt) so that alg, crit and kid get our checks and messages first."""
    segment = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):  # RecursionError: deeply nested JSON
        raise _challenge("malformed token") from None
    if not isinstance(header, dict):
        raise _challenge("malformed token")
    return header


def _str_claim(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and value else None


class TokenVerifier(_JwtVerifier):
    """SMART App Launch 2.x access tokens as JWTs (RFC 9068 claims) from a trusted authorization server."""

    def __init__(self, jwks: str | JwksSource, *, issuers: Sequence[str], audience: str,
                 leeway: int = 30) -> None:
        super().__init__(jwks, issuers, leeway)
        if not audience:
            raise ConfigError("token verification needs this service's audience (its base URL)")
        self.audience = _audiences(audience)

    def verify(self, authorization: str | None) -> Principal:
        """The caller behind an `Authorization: Bearer <JWT>` header, or ServiceError 401/503."""
        claims = self._claims(authorization, audience=self.audience, require=["exp", "iss", "aud"])
        client_id = _str_claim(claims, "client_id") or _str_claim(claims, "azp")
        subject = _str_claim(claims, "sub") or client_id  # RFC 9068 §2.2: client credentials: sub = client
        if subject is None:
            raise _challenge("token lacks the sub claim")
        return Principal(claims["iss"], subject, client_id, _scopes(claims), _str_claim(claims, "jti"))


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    """`scope` is a space-separated string (RFC 8693 §4.2, RFC 9068); some servers send a `scp` list."""
    out: set[str] = set()
    scope, scp = claims.get("scope"), claims.get("scp")
    if scope is not None:
        if not isinstance(scope, str):
            raise _challenge("token scope claim is not a string")
        out.update(scope.split())
    if scp is not None:
        if isinstance(scp, str):
            out.update(scp.split())
        elif isinstance(scp, list) and all(isinstance(s, str) for s in scp):
            out.update(scp)
        else:
            raise _challenge("token scp claim is not a list of strings")
    return frozenset(out)


# SMART App Launch 2.x §Scopes: context/resource.permissions[?query]; v1 read/write/* mapped to v2 letters.
_SCOPE = re.compile(r"(patient|user|system)/(\*|[A-Z][A-Za-z]*)\.([a-z*]+)(?:\?(.+))?")
_V1 = {"read": frozenset("rs"), "write": frozenset("cud"), "*": frozenset("cruds")}
_V2 = re.compile(r"c?r?u?d?s?")  # letters in this order, per the spec


@dataclass(frozen=True)
class _Scope:
    context: str
    resource: str
    perms: frozenset[str]
    query: str | None


def _parse_scope(text: str) -> _Scope | None:
    m = _SCOPE.fullmatch(text)
    if not m:
        return None
    context, resource, perms, query = m.groups()
    if perms in _V1 and query is None:
        return _Scope(context, resource, _V1[perms], None)
    if perms and _V2.fullmatch(perms):
        return _Scope(context, resource, frozenset(perms), query)
    return None


def check_scopes(principal: Principal, needed: Iterable[str]) -> None:
    """ServiceError 403 unless the granted scopes cover each needed SMART v2 scope ("system/Observation.rs").

    system/ and user/ grants count (a user-context token from an EHR); patient/ grants do not: a backend
    operation spans patients. Grants are additive (system/Observation.r + .s cover .rs). A grant narrowed by
    a v2 query (`?category=...`) covers only a need with that same query."""
    needed = list(needed)
    grants = [g for g in map(_parse_scope, principal.scopes) if g is not None and g.context != "patient"]
    missing = []
    for text in needed:
        need = _parse_scope(text)
        if need is None:
            raise ValueError(f"not a SMART scope: {text!r}")
        have: set[str] = set()
        for g in grants:
            if g.resource in (need.resource, "*") and g.query in (None, need.query):
                have |= g.perms
        if not need.perms <= have:
            missing.append(text)
    if missing:
        log.info("token of client %s lacks scopes %s", principal.client_id, " ".join(missing))
        # RFC 6750 §3.1: `scope` names what the resource needs: every needed scope, not only the missing.
        challenge = f'Bearer error="insufficient_scope", scope="{" ".join(needed)}"'
        raise ServiceError(403, f"token lacks scope {' '.join(missing)}", code="forbidden",
                           headers={"WWW-Authenticate": challenge})


class _ReplayCache:
    """(issuer, jti) pairs already used, each kept until its expiry; bounded, thread-safe."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self._seen: dict[tuple[str, str], float] = {}
        self._expiry: list[tuple[float, int, tuple[str, str]]] = []  # heap: soonest expiry, then oldest
        self._count = 0
        self._max, self._clock = max_entries, clock
        self._lock = threading.Lock()

    def first_use(self, key: tuple[str, str], until: float) -> bool:
        with self._lock:
            now = self._clock()
            while self._expiry and self._expiry[0][0] <= now:
                self._seen.pop(heapq.heappop(self._expiry)[2], None)
            if key in self._seen:
                return False
            if len(self._seen) >= self._max:  # full of live entries: forget the soonest to expire
                log.warning("CDS JWT replay cache full (%d): forgetting a jti before its expiry", self._max)
                self._seen.pop(heapq.heappop(self._expiry)[2], None)
            self._seen[key] = until
            self._count += 1
            heapq.heappush(self._expiry, (until, self._count, key))
            return True


class CdsJwtVerifier(_JwtVerifier):
    """CDS Hooks 2.0 "Trusting CDS Clients": the EHR signs a short JWT per call, aud = the service URL."""

    def __init__(self, jwks: str | JwksSource, *, issuers: Sequence[str], leeway: int = 30,
                 replay_window: float = 600, max_remembered: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(jwks, issuers, leeway)
        self.replay_window = replay_window
        self._clock = clock
        self._replays = _ReplayCache(max_remembered, clock)

    def verify(self, authorization: str | None, service_url: str) -> Principal:
        """The EHR calling `service_url` (the CDS service endpoint), or ServiceError 401/503."""
        claims = self._claims(authorization, audience=_audiences(service_url),
                              require=["exp", "iat", "iss", "sub", "aud", "jti"])
        tenant = claims.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise _challenge("token tenant claim is not a string")
        # Checked last, so only correctly signed tokens enter the cache. Kept for the window and at least as
        # long as the token itself is acceptable, else a long-lived token could be replayed after eviction.
        until = max(self._clock() + self.replay_window, float(claims["exp"]) + self.leeway)
        if not self._replays.first_use((claims["iss"], claims["jti"]), until):
            raise _challenge("token replayed (jti already used)")
        return Principal(claims["iss"], claims["sub"], claims["sub"], frozenset(), claims["jti"], tenant)

    def _check_header(self, header: dict[str, Any]) -> None:
        # CDS Hooks 2.0: the EHR MAY name its JWKS in `jku`, and services SHOULD allow-list it. We go further:
        # keys only ever come from the configured location, so any other jku is refused, never fetched.
        jku = header.get("jku")
        if jku is not None and jku != self.jwks.location:
            raise _challenge("token jku is not this service's configured key set")
