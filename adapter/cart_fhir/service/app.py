"""The Flask application factory: settings, services in app.extensions, guards, logging, blueprints (the
shared context the views use is context.py)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from flask import Flask, Response, g, request

from ..errors import ConfigError
from ..pipeline import Engine
from .artefacts import artefacts
from .cdshooks import cds
from .config import load_service_settings
from .context import EXTENSION, Services
from .errors import register_error_handlers
from .health import health
from .openapi import build_spec
from .operations import fhir

log = logging.getLogger("cart_fhir.service")
access_log = logging.getLogger("cart_fhir.access")


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Settings are layered defaults -> CART_FHIR_* environment -> overrides, and checked: a service missing
    what its switched-on features need refuses to start (ConfigError)."""
    from .app_launch import init_app as init_smart_app
    from .app_launch import split_overrides

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

        if settings.jwks is None or settings.audience is None:  # ServiceSettings refuses this; say so if not
            raise ConfigError("inbound auth needs CART_FHIR_JWKS and CART_FHIR_AUDIENCE")
        svc.verifier = TokenVerifier(settings.jwks, issuers=settings.issuers, audience=settings.audience)
        svc.cds_verifier = CdsJwtVerifier(settings.cds_jwks or settings.jwks,
                                          issuers=settings.cds_issuers or settings.issuers)
    else:
        log.warning("inbound auth is OFF (CART_FHIR_AUTH=off): every caller is trusted; for local trials only")
    app.extensions[EXTENSION] = svc
    register_error_handlers(app)
    _register_request_log(app)
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
