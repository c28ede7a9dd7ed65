"""The one transport for every FHIR call: pooled session, timeouts, counted retries, re-auth, FHIR errors."""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from .. import __version__
from ..errors import ConfigError
from .deadline import remaining
from .errors import AuthFailed, DeadlineExceeded, ServerError, ServerUnreachable, body_excerpt
from .settings import RETRIES, TIMEOUT

if TYPE_CHECKING:
    from .auth import Auth

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
POOL_SIZE = 16  # connections kept per host: enough for the service's worker threads sharing one FhirHttp
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# No answer at all. ConnectionError covers refused, reset and RemoteDisconnected (and ConnectTimeout);
# ChunkedEncodingError is a connection dropped mid-body, which requests does not class as ConnectionError.
NO_ANSWER = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry an answer that says "later" (or no answer at all)."""

    attempts: int = RETRIES  # requests in all, the first one included
    backoff: float = 0.5  # seconds before the first retry; doubles each time
    max_backoff: float = 8.0
    max_retry_after: float = 30.0  # a server asking for more is still retried after this long
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the n-th failure: the server's Retry-After if it gave one, else backoff."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        base = min(self.backoff * 2 ** (failures - 1), self.max_backoff)
        # Up to 10 % jitter so that clients throttled together do not come back together.
        return base + random.uniform(0.0, 0.1 * base)


@dataclass(slots=True)
class Reply:
    """A successful answer: status, case-insensitive headers, parsed JSON body (None when empty)."""

    status: int
    headers: Mapping[str, str]
    body: Any
    url: str


class FhirHttp:
    """A FHIR server's base URL with one pooled session; every request goes through `request`."""

    def __init__(self, base_url: str, *, auth: Auth | None = None, timeout: float = TIMEOUT,
                 connect_timeout: float = 10.0, retry: RetryPolicy = RetryPolicy(),
                 session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep,
                 user_agent: str = f"cart-fhir/{__version__}") -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
            raise ConfigError(f"FHIR base URL must be an http(s) URL with a host, not {base_url!r}")
        self._origin = origin(self.base_url)
        self.auth = auth
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry = retry
        self.user_agent = user_agent
        self.round_trips = 0
        self.token_requests = 0
        self.sleep = sleep  # injectable: tests record the waits instead of waiting
        self._count_lock = threading.Lock()
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # max_retries=0: retries are ours (they honour Retry-After, are counted, and are testable).
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self.session = session

    @property
    def timeouts(self) -> tuple[float, float]:
        """(connect, read) seconds, as requests takes them; auth uses the same for the token endpoint. Within a
        deadline (remote/deadline.py) neither waits longer than what is left of it."""
        left = remaining()
        if left is None:
            return (self.connect_timeout, self.timeout)
        left = max(left, 0.001)
        return (min(self.connect_timeout, left), min(self.timeout, left))

    def url(self, path_or_url: str) -> str:
        """Absolute URL under the base; absolute URLs (e.g. `next` links) must point at the same server."""
        return self._resolve("", path_or_url)

    def get(self, path_or_url: str, params: Any = None) -> Reply:
        return self.request("GET", path_or_url, params=params)

    def post(self, path: str, json: Any, headers: Mapping[str, str] | None = None) -> Reply:
        return self.request("POST", path, json=json, headers=headers)

    def put(self, path: str, json: Any, headers: Mapping[str, str] | None = None) -> Reply:
        return self.request("PUT", path, json=json, headers=headers)

    def request(self, method: str, path_or_url: str, *, params: Any = None, json: Any = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        """Send one FHIR request, retrying and re-authenticating as needed; a 2xx Reply or a ServerError.

        Every request we make is idempotent (reads, and transactions of conditional writes), so POSTs
        are retried like GETs.
        """
        method = method.upper()
        prepared = requests.PreparedRequest()
        prepared.prepare_url(self._resolve(method, path_or_url), params)
        url = str(prepared.url)
        body = orjson.dumps(json) if json is not None else None
        base_headers = {"Accept": FHIR_JSON, "User-Agent": self.user_agent}
        if body is not None:
            base_headers["Content-Type"] = FHIR_JSON
        base_headers.update(headers or {})
        failures, sent, reauthenticated = 0, 0, False
        while True:
            _check_deadline(method, url, sent)
            sent += 1
            try:
                resp = self._send(method, url, body, base_headers, sent)
            except requests.exceptions.SSLError as exc:
                # A certificate problem does not heal by waiting.
                raise ServerUnreachable(method, url, _describe(exc)) from exc
            except NO_ANSWER as exc:
                _check_deadline(method, url, sent, exc)
                failures += 1
                if failures >= self.retry.attempts:
                    raise ServerUnreachable(method, url, f"{_describe(exc)} (after {sent} attempts)") from exc
                self._pause_within_deadline(method, url, sent, failures, None, exc)
                continue
            status = resp.status_code
            if status in self.retry.statuses:
                failures += 1
                if failures >= self.retry.attempts:
                    raise _error(ServerError, method, url, resp)
                self._pause_within_deadline(method, url, sent, failures,
                                            parse_retry_after(resp.headers.get("Retry-After")),
                                            _error(ServerError, method, url, resp))
                continue
            if status == 401:
                # One re-authentication per request: the token may have expired or been revoked.
                if self.auth is not None and not reauthenticated and self.auth.refresh():
                    reauthenticated = True
                    continue
                raise _error(AuthFailed, method, url, resp)
            if status == 403:
                raise _error(AuthFailed, method, url, resp)  # a fresh token would not get more scopes
            if not 200 <= status < 300:
                raise _error(ServerError, method, url, resp)
            body = _success_body(method, url, resp)
            return Reply(status, CaseInsensitiveDict(resp.headers), body, resp.url)

    def close(self) -> None:
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FhirHttp({self.base_url!r}, auth={type(self.auth).__name__})"

    # ---- internals ---------------------------------------------------------------------------

    def _resolve(self, method: str, path_or_url: str) -> str:
        if _ABSOLUTE.match(path_or_url):
            # fhirpy refuses such links too ("possible security issue"): our token must not leave the server.
            if origin(path_or_url) != self._origin:
                raise ServerError(method, path_or_url,
                                  detail=f"refusing to follow a link to another host than {self.base_url}")
            return path_or_url
        path = path_or_url.lstrip("/")
        if not path:
            return self.base_url  # transaction / batch: POST [base]
        return self.base_url + path if path.startswith("?") else f"{self.base_url}/{path}"

    def _send(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
              attempt: int) -> requests.Response:
        all_headers = dict(headers)
        if self.auth is not None:
            all_headers.update(self.auth.headers(self))  # per attempt: a refresh() gives a new token
        self.count_round_trip()
        path = urlsplit(url).path  # never the query (identifiers), headers (token) or body (patient data)
        start = time.perf_counter()
        try:
            # No redirects: requests would turn a redirected POST into a GET, and a redirect could lead
            # to another host past the check in _resolve.
            resp = self.session.request(method, url, data=body, headers=all_headers,
                                        timeout=self.timeouts, allow_redirects=False)
        except requests.RequestException as exc:
            log.debug("%s %s -> %s after %.0f ms (attempt %d)", method, path, type(exc).__name__,
                      (time.perf_counter() - start) * 1000, attempt)
            raise
        log.debug("%s %s -> %d in %.0f ms (attempt %d)", method, path, resp.status_code,
                  (time.perf_counter() - start) * 1000, attempt)
        return resp

    def count_round_trip(self) -> None:
        """Count one request sent (thread-safe): also for requests made outside `request`, e.g. bulk downloads."""
        with self._count_lock:
            self.round_trips += 1

    def _pause_within_deadline(self, method: str, url: str, sent: int, failures: int, retry_after: float | None,
                               cause: Exception) -> None:
        """Wait before the next attempt, unless the wait would outlast the deadline: then give up now."""
        left = remaining()
        if left is not None and self.retry.delay(failures, retry_after) >= left:
            raise DeadlineExceeded(method, url, f"the request's deadline leaves no time to retry after {sent} "
                                                f"attempt(s) ({_describe(cause)})") from cause
        self.pause(failures, retry_after)

    def pause(self, failures: int, retry_after: float | None) -> None:
        """Wait before retry number `failures`, as the retry policy says (Retry-After when given)."""
        seconds = self.retry.delay(failures, retry_after)
        log.debug("retrying in %.2f s", seconds)
        self.sleep(seconds)


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with default ports filled in: two URLs may share a token only if these match."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number: never equal to ours
        port = -1
    return scheme, (parts.hostname or "").lower(), port


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unparseable: fall back to our own backoff
    return max(when.timestamp() - time.time(), 0.0)


def _check_deadline(method: str, url: str, sent: int, cause: Exception | None = None) -> None:
    left = remaining()
    if left is not None and left <= 0:
        what = f"no answer within the request's deadline ({_describe(cause)})" if cause else \
            f"the request's deadline passed before attempt {sent + 1}"
        raise DeadlineExceeded(method, url, what) from cause


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _parse_error_body(resp: requests.Response) -> tuple[dict[str, Any] | None, str]:
    """The OperationOutcome of an error answer if it sent one, else a one-line excerpt of the body."""
    if not resp.content:
        return None, resp.reason or ""
    try:
        parsed = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return None, body_excerpt(resp.text)
    if isinstance(parsed, dict) and parsed.get("resourceType") == "OperationOutcome":
        return parsed, ""
    return None, body_excerpt(resp.text)


def _error(cls: type[ServerError], method: str, url: str, resp: requests.Response) -> ServerError:
    outcome, excerpt = _parse_error_body(resp)
    if 300 <= resp.status_code < 400 and resp.headers.get("Location"):
        excerpt = f"redirect to {resp.headers['Location']} (not followed)"
    return cls(method, url, resp.status_code, outcome=outcome, detail=excerpt)


def _success_body(method: str, url: str, resp: requests.Response) -> Any:
    if not resp.content.strip():
        return None  # 201/204 with Prefer: return=minimal
    ctype = resp.headers.get("Content-Type", "")
    # application/fhir+json, application/json (and json+fhir of DSTU2-era servers); no type: try anyway.
    if not ctype or "json" in ctype.lower():
        try:
            return orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            pass
    excerpt = body_excerpt(resp.text, 80)
    raise ServerError(method, url, resp.status_code,
                      detail=f"expected a FHIR JSON body, got {ctype or 'no Content-Type'}"
                             + (f" ({excerpt})" if excerpt else ""))
