"""The gunicorn worker `cart-fhir serve` runs: gunicorn's threaded worker, made safe against slow clients.

gunicorn's gthread worker already parks kept-alive connections in its poller, but a new connection goes
straight to a thread, which waits up to 5 s for the first byte, and once a request has begun a thread reads it
with no time limit: a few idle or slow (slowloris) connections hold every thread. This worker changes three
things and nothing else:

* a new connection waits in the poller, not in a thread, until it sends something; one silent for `keepalive`
  seconds is closed (gunicorn's own pending-connection sweep);
* the request head must arrive within `header_timeout` seconds and the body within `body_timeout` (a budget
  for the whole read, not per `recv`, so one byte every few seconds does not keep a thread);
* the HTTP layer's own error answers (malformed request line, headers too many or too large, a read too slow)
  are FHIR OperationOutcomes like the application's, with `WWW-Authenticate` where a token may be the cause,
  and are logged without the request line, path or query.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import sys
import time
from functools import partial
from typing import Any

import orjson
from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.workers.gthread import TConn, ThreadWorker

from .errors import ISSUE_CODES, ClientTooSlow, issue, outcome

log = logging.getLogger("cart_fhir.service")

HEADER_TIMEOUT = 10.0  # seconds for the request line and headers, from the first byte
BODY_TIMEOUT = 30.0  # seconds for the whole body: 20 MiB at 1 MB/s with room to spare
SWITCH_INTERVAL = 0.001  # seconds: sys.setswitchinterval in each worker
DRAIN_TIMEOUT = 5.0  # after the answer: reading what the client still sends before reusing the connection
REALM = "cart-fhir"

# gunicorn's parse errors -> (status, reason, what to tell the caller); never the offending bytes themselves
_CLIENT_ERRORS: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (http_errors.LimitRequestLine, 414, "URI Too Long", "the request line is longer than this service accepts"),
    (http_errors.LimitRequestHeaders, 431, "Request Header Fields Too Large",
     "too many request headers, or one too large (a bearer token is at most 16 KiB)"),
    (http_errors.UnsupportedTransferCoding, 501, "Not Implemented", "unsupported Transfer-Encoding"),
    (http_errors.ExpectationFailed, 417, "Expectation Failed", "unsupported Expect header"),
    (http_errors.ForbiddenProxyRequest, 403, "Forbidden", "PROXY protocol from an untrusted address"),
    (ClientTooSlow, 408, "Request Timeout", "the request was not received in time"),
    (http_errors.ParseException, 400, "Bad Request", "malformed HTTP request"),
)


class _DeadlineSocket:
    """The socket as gunicorn's parser reads it, with one budget for the whole read (not per recv)."""

    def __init__(self, sock: socket.socket, header_timeout: float) -> None:
        self._sock = sock
        self.deadline = time.monotonic() + header_timeout
        self.answered = False

    def recv(self, size: int) -> bytes:
        left = self.deadline - time.monotonic()
        if left <= 0:
            if self.answered:  # draining after the answer: just close, the caller has its response
                raise OSError(errno.ECONNRESET, "client too slow after the answer")
            raise ClientTooSlow()
        self._sock.settimeout(left)
        try:
            return self._sock.recv(size)
        except TimeoutError as exc:
            if self.answered:
                raise OSError(errno.ECONNRESET, "client too slow after the answer") from exc
            raise ClientTooSlow() from exc
        finally:
            self._sock.setblocking(True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Conn(TConn):  # type: ignore[misc]
    """A connection whose parser reads through a _DeadlineSocket."""

    reader: _DeadlineSocket | None = None
    header_timeout: float = HEADER_TIMEOUT

    def init(self) -> None:
        super().init()
        unreader = getattr(self.parser, "unreader", None)
        if self.reader is None and unreader is not None and hasattr(unreader, "sock"):
            self.reader = _DeadlineSocket(unreader.sock, self.header_timeout)
            unreader.sock = self.reader


class ServiceWorker(ThreadWorker):  # type: ignore[misc]
    """gthread with slow-client limits and FHIR error answers (module docstring)."""

    header_timeout = HEADER_TIMEOUT
    body_timeout = BODY_TIMEOUT

    def init_process(self) -> None:
        # A thread answering /health waits for the GIL while another grades: CPython hands it over every
        # switch interval (5 ms by default), several times per request. 1 ms keeps /health fast under load
        # (docs/performance.md) for a few per cent of grading throughput.
        sys.setswitchinterval(SWITCH_INTERVAL)
        super().init_process()

    def accept(self, listener: socket.socket) -> None:
        """A new connection waits in the poller until it is readable: an idle client holds no thread."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = _Conn(self.cfg, client_sock, client_addr, listener.getsockname())  # non-blocking from here
        conn.header_timeout = self.header_timeout
        # The same timeout gunicorn gives deferred connections, so pending_conns stays sorted by it.
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))

    def handle(self, conn: TConn) -> Any:
        reader = getattr(conn, "reader", None)
        if reader is not None:  # a kept-alive connection: a new request, a new header budget
            reader.deadline = time.monotonic() + self.header_timeout
            reader.answered = False
        return super().handle(conn)

    def handle_request(self, req: Any, conn: TConn) -> Any:
        reader = getattr(conn, "reader", None)
        if reader is not None:
            reader.deadline = time.monotonic() + self.body_timeout  # headers read: the body's budget
        try:
            return super().handle_request(req, conn)
        finally:
            if reader is not None:
                reader.answered = True
                reader.deadline = time.monotonic() + DRAIN_TIMEOUT

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """An OperationOutcome for what failed before (or outside) the application; the log names the error's
        kind and the peer, never the request line, path or query."""
        known = next(((st, rs, tx) for kind, st, rs, tx in _CLIENT_ERRORS if isinstance(exc, kind)), None)
        if known is not None:
            status, reason, text = known
            self.log.warning("HTTP %d to %s: %s", status, (addr or ("-",))[0], type(exc).__name__)
        else:
            status, reason, text = 500, "Internal Server Error", "internal error"
            self.log.error("internal error in the HTTP layer: %s", type(exc).__name__)
        headers = {}
        if status in (400, 431) and self._auth_on():
            # The Authorization header may be what broke the request (431: a token over the limit).
            headers["WWW-Authenticate"] = f'Bearer realm="{REALM}", error="invalid_request"'
        try:
            util.write_nonblock(client, http_answer(status, reason, text, headers))
        except OSError:
            self.log.debug("could not send the error answer")

    def _auth_on(self) -> bool:
        ext = getattr(self.wsgi, "extensions", {}).get("cart_fhir")
        return bool(getattr(getattr(ext, "settings", None), "auth", True))


def http_answer(status: int, reason: str, text: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 answer carrying an OperationOutcome; the connection is closed after it."""
    body = orjson.dumps(outcome([issue("error", ISSUE_CODES.get(status, "exception"), text)]))
    lines = [f"HTTP/1.1 {status} {reason}", "Connection: close", "Content-Type: application/fhir+json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

