"""The Flask application factory: settings, services in app.extensions, guards, logging, blueprints."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from flask import Flask, Response, current_app, g, request

from ..pipeline import Engine
from ..remote.auth import BearerToken
from ..remote.client import FhirClient
from ..remote.connect import connect
from ..remote.http import FhirHttp, RetryPolicy
from ..remote.locks import PatientLocks
from ..remote.settings import ServerSettings
from .config import ServiceSettings, load_service_settings
from .errors import register_error_handlers
from .openapi import build_spec

log = logging.getLogger("cart_fhir.service")
access_log = logging.getLogger("cart_fhir.access")
EXTENSION = "cart_fhir"


@dataclass
class Services:
    """What the views use, built once per process at start-up (tables parsed and checked then)."""

    settings: ServiceSettings
    engine: Engine
    verifier: Any = None  # security.TokenVerifier, None when inbound auth is off
    cds_verifier: Any = None  # security.CdsJwtVerifier, None when inbound auth is off
    connect_upstream: Callable[[ServerSettings], FhirClient] = connect
    _upstream: FhirClient | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _locks: PatientLocks | None = field(default=None, repr=False)

    def upstream(self) -> FhirClient:
        """The configured upstream FHIR server's client: one pooled session per process."""
        if self.settings.server is None:
            from .errors import ServiceError

            raise ServiceError(501, "this service has no upstream FHIR server (CART_FHIR_SERVER is not set): "
                                    "post a Bundle to $grade-toxicity instead", code="not-supported")
        with self._lock:
            if self._upstream is None:
                self._upstream = self.connect_upstream(self.settings.server)
            return self._upstream

    def patient_locks(self) -> PatientLocks:
        base = self.upstream().base_url  # outside the lock: upstream() takes it too
        with self._lock:
            if self._locks is None:
                self._locks = PatientLocks(base)
            return self._locks

    def client_for(self, base_url: str, access_token: str | None) -> FhirClient:
        """A client for a FHIR server named in a request (CDS Hooks fhirServer + fhirAuthorization)."""
        auth = BearerToken(access_token) if access_token else None
        http = FhirHttp(base_url, auth=auth, timeout=30.0, retry=RetryPolicy(attempts=2))
        return FhirClient(http)


def services() -> Services:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Settings are layered defaults -> CART_FHIR_* environment -> overrides, and checked: a service missing
    what its switched-on features need refuses to start (ConfigError)."""
    from .app_launch import init_app as init_smart_app, split_overrides

    overrides, app_overrides = split_overrides(overrides)  # CART_FHIR_APP_*: the SMART app's own settings
    settings = load_service_settings(overrides)
    app = Flask("cart_fhir")
    app.config.update(TESTING=settings.testing, MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    if settings.proxy_hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n, x_prefix=n)  # type: ignore[method-assign]
    svc = Services(settings, Engine(tables=settings.tables))
    if settings.auth:
        from .security import CdsJwtVerifier, TokenVerifier

        svc.verifier = TokenVerifier(settings.jwks, issuers=settings.issuers, audience=settings.audience)
        svc.cds_verifier = CdsJwtVerifier(settings.cds_jwks or settings.jwks,
                                          issuers=settings.cds_issuers or settings.issuers)
    else:
        log.warning("inbound auth is OFF (CART_FHIR_AUTH=off): every caller is trusted; for local trials only")
    app.extensions[EXTENSION] = svc
    register_error_handlers(app)
    _register_request_log(app)
    from .artefacts import artefacts
    from .cdshooks import cds
    from .health import health
    from .operations import fhir

    app.register_blueprint(fhir)
    app.register_blueprint(artefacts)
    app.register_blueprint(cds)
    app.register_blueprint(health)
    init_smart_app(app, app_overrides)  # /app/: the SMART timeline app, only when configured

    @app.get("/openapi.json")
    def openapi() -> Response:
        return Response(orjson.dumps(build_spec(app, secured=settings.auth)), mimetype="application/json")

    return app


def _register_request_log(app: Flask) -> None:
    """One structured line per request: method, path, status, duration, request id; never bodies or queries."""

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _done(resp: Response) -> Response:
        resp.headers["X-Request-Id"] = g.get("request_id", "")
        access_log.info(orjson.dumps({
            "event": "request", "method": request.method, "path": request.path, "status": resp.status_code,
            "ms": round(1000 * (time.perf_counter() - g.get("started", time.perf_counter())), 1),
            "request_id": g.get("request_id"), "bytes_in": request.content_length or 0,
        }).decode())
        return resp
