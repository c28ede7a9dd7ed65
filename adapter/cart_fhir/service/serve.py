"""`cart-fhir serve`: the service under gunicorn (a production WSGI server), never Flask's dev server.

Worker model (README "The service", docs/performance.md): gunicorn's threaded worker, extended in worker.py so
that idle and slow clients hold no thread for long; a few worker processes (grading is CPU-bound Python) with
many threads each (most of a request's life may be waiting on a client or an upstream server).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from ..errors import ConfigError
from .config import ServiceSettings, is_loopback, serve_defaults
from .worker import BODY_TIMEOUT, HEADER_TIMEOUT, ServiceWorker

log = logging.getLogger("cart_fhir.service")
THREADS = 32  # per worker: threads wait on slow clients and upstream servers; gradings are capped apart


def default_workers() -> int:
    """Grading is CPU-bound Python: one worker process per core (at least 2), capped at 8; memory is
    ~150 MB per worker with the tables loaded."""
    return max(2, min(8, os.cpu_count() or 1))


class _Server(BaseApplication):  # type: ignore[misc]
    """gunicorn with the app already built in the master: settings and tables are checked before any worker
    forks (a bad setting stops start-up with one message), and workers share the parsed tables."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:  # the Flask app: gunicorn's stubs type it as a bare WSGI callable
        return self.application


def gunicorn_options(host: str, port: int, workers: int, timeout: int, threads: int = THREADS,
                     control_socket: str | None = None) -> dict[str, Any]:
    return {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "worker_class": "cart_fhir.service.worker.ServiceWorker",
        "threads": threads,
        "timeout": timeout,            # a worker whose main loop is silent this long is restarted
        "graceful_timeout": 30,
        "keepalive": 5,                # an idle connection (new or kept alive) is closed after 5 s
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 16384,  # bearer JWTs with many scopes can be long; larger: 431
        "max_requests": 2000,          # recycle workers now and then; jitter so they do not all restart at once
        "max_requests_jitter": 200,
        "accesslog": None,             # the app logs one structured line per request itself (no query strings)
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "cart-fhir",
        # gunicorn >= 25 opens a control socket at one fixed path per user: two instances on a host would
        # remove each other's. Off unless asked for, and then at a path of this instance's own.
        "control_socket_disable": control_socket is None,
        **({"control_socket": control_socket} if control_socket else {}),
    }


def serve(host: str = "127.0.0.1", port: int = 8080, workers: int | None = None, timeout: int = 120, *,
          threads: int = THREADS, allow_no_auth: bool = False, control_socket: str | None = None,
          header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT) -> None:
    """Check the settings (out of the box: bundle-only, auth off, loopback only), then run gunicorn."""
    from .app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
                        force=True)  # the pid: which worker handled what
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    overrides, notes = serve_defaults(host, os.environ)
    for note in notes:
        log.info("%s", note)
    scratch, master = None, os.getpid()
    if not os.environ.get(ServiceSettings.env_name("card_store")):
        # The workers must share the CDS card store (feedback may reach another worker than the one that
        # issued the card): a private folder of this instance, removed when it stops.
        scratch = tempfile.mkdtemp(prefix="cart-fhir-cards-")
        overrides["card_store"] = os.path.join(scratch, "cards.sqlite3")
    try:
        _serve(create_app(overrides), host, port, workers, timeout, threads, allow_no_auth, control_socket,
               header_timeout, body_timeout)
    finally:
        # gunicorn's workers leave by sys.exit through this frame too (they are forks of it): only the master
        # removes the store, when the whole instance stops.
        if scratch is not None and os.getpid() == master:
            shutil.rmtree(scratch, ignore_errors=True)


def _serve(app: Flask, host: str, port: int, workers: int | None, timeout: int, threads: int, allow_no_auth: bool,
           control_socket: str | None, header_timeout: float, body_timeout: float) -> None:
    # ConfigError from create_app or here: the CLI prints it and exits 2, nothing is listening
    settings = app.extensions["cart_fhir"].settings
    if not settings.auth and not is_loopback(host):
        if not allow_no_auth:
            raise ConfigError(f"refusing to listen on {host} with inbound auth off: anyone who can reach it could "
                              "grade and (with an upstream server) read and write patient data. Set "
                              "CART_FHIR_AUDIENCE, CART_FHIR_JWKS and CART_FHIR_ISSUERS, listen on 127.0.0.1, or "
                              "pass --allow-no-auth if something in front authenticates every caller")
        log.warning("inbound auth is OFF on %s (--allow-no-auth): every caller who can reach it is trusted", host)
    if settings.deadline >= timeout:
        raise ConfigError(f"CART_FHIR_DEADLINE ({settings.deadline:g} s) must be shorter than --timeout "
                          f"({timeout} s): a request must end before its worker could be restarted")
    if not (0 < header_timeout < timeout and 0 < body_timeout < timeout):
        raise ConfigError(f"--header-timeout and --body-timeout must be between 0 and --timeout ({timeout} s)")
    # Class attributes set in the master before the workers fork: each worker inherits them.
    ServiceWorker.header_timeout, ServiceWorker.body_timeout = header_timeout, body_timeout
    workers = workers or default_workers()
    log.info("cart-fhir service on http://%s:%d: %d workers x %d threads, %d gradings in flight per worker, "
             "deadline %g s per request, request head %g s and body %g s; CDS card store shared by the workers%s",
             host, port, workers, threads, settings.max_gradings, settings.deadline, header_timeout, body_timeout,
             "" if os.environ.get(ServiceSettings.env_name("card_store")) else " (temporary: CART_FHIR_CARD_STORE "
             "keeps it across restarts)")
    _Server(app, gunicorn_options(host, port, workers, timeout, threads, control_socket)).run()
