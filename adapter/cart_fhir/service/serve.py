"""`cart-fhir serve`: the service under gunicorn (a production WSGI server), never Flask's dev server."""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

log = logging.getLogger("cart_fhir.service")


def default_workers() -> int:
    """Grading is CPU-bound Python: one sync worker per core (at least 2 so one slow request never blocks
    /health), capped at 8; memory is ~150 MB per worker with the tables loaded."""
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


def gunicorn_options(host: str, port: int, workers: int, timeout: int) -> dict[str, Any]:
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "sync",
        "timeout": timeout,            # a worker silent this long is restarted (one grading per request)
        "graceful_timeout": 30,
        "keepalive": 5,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 16384,  # bearer JWTs with many scopes can be long
        "max_requests": 2000,          # recycle workers now and then; jitter so they do not all restart at once
        "max_requests_jitter": 200,
        "accesslog": None,             # the app logs one structured line per request itself
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "cart-fhir",
    }


def serve(host: str = "127.0.0.1", port: int = 8080, workers: int | None = None, timeout: int = 120) -> None:
    from .app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    app = create_app()  # ConfigError here: the CLI prints it and exits 2, nothing is listening
    workers = workers or default_workers()
    log.info("cart-fhir service on http://%s:%d (%d workers)", host, port, workers)
    _Server(app, gunicorn_options(host, port, workers, timeout)).run()
