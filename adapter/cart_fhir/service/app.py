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
from ..remote.deadline import deadline
from .artefacts import artefacts
from .card_store import CARD_INDEX, open_card_index
from .cdshooks import cds
from .config import load_concept_maps, load_service_settings
from .context import EXTENSION, Services
from .discovery import discovery
from .errors import ServiceError, register_error_handlers
from .guard import JSON_TYPES
from .health import health
from .openapi import build_spec
from .operations import fhir

log = logging.getLogger("cart_fhir.service")
FORMAT_JSON = frozenset({"json", "application/json", "application/fhir+json", "application/json+fhir"})
access_log = logging.getLogger("cart_fhir.access")


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Settings are layered defaults -> CART_FHIR_* environment -> overrides, and checked: a service missing
    what its switched-on features need refuses to start (ConfigError)."""
    from .app_launch import init_app as init_smart_app
    from .app_launch import split_overrides

    overrides, app_overrides = split_overrides(overrides)  # CART_FHIR_APP_*: the SMART app's own settings
    settings = load_service_settings(overrides)
    app = Flask("cart_fhir")
    # No automatic OPTIONS: Flask's is an empty text/html 200; without it OPTIONS is a 405 OperationOutcome
    # with `Allow` like any other method a route does not take (this service sends no CORS headers).
    app.config.update(TESTING=settings.testing, MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False,
                      PROVIDE_AUTOMATIC_OPTIONS=False)
    if settings.proxy_hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n, x_prefix=n)  # type: ignore[method-assign]
    maps = load_concept_maps(settings.concept_maps)
    svc = Services(settings, Engine(tables=settings.tables, concept_maps=maps))
    if maps:
        log.info("site ConceptMaps for every operation and CDS: %s", ", ".join(name for name, _ in maps))
    if settings.auth:
        from .security import CdsJwtVerifier, TokenVerifier

        if settings.jwks is None or settings.audience is None:  # ServiceSettings refuses this; say so if not
            raise ConfigError("inbound auth needs CART_FHIR_JWKS and CART_FHIR_AUDIENCE")
        svc.verifier = TokenVerifier(settings.jwks, issuers=settings.issuers, audience=settings.audience)
        svc.cds_verifier = CdsJwtVerifier(settings.cds_jwks or settings.jwks,
                                          issuers=settings.cds_issuers or settings.issuers)
        if not settings.smart_token_endpoint:
            log.warning("inbound auth is on but CART_FHIR_SMART_TOKEN_ENDPOINT is not set: the CapabilityStatement "
                        "does not claim SMART and /.well-known/smart-configuration answers 404")
    else:
        log.warning("inbound auth is OFF (CART_FHIR_AUTH=off): every caller is trusted; for local trials only")
    app.extensions[EXTENSION] = svc
    # Opened (and its schema made) here, in gunicorn's master before the workers fork: a bad path stops start-up.
    app.extensions[CARD_INDEX] = open_card_index(settings.card_store)
    app.wsgi_app = _Deadline(app.wsgi_app, settings.deadline)  # type: ignore[method-assign]
    register_error_handlers(app)
    _register_request_log(app)
    _register_negotiation(app)
    app.register_blueprint(fhir)
    app.register_blueprint(artefacts)
    app.register_blueprint(cds)
    app.register_blueprint(health)
    app.register_blueprint(discovery)
    init_smart_app(app, app_overrides)  # /app/: the SMART timeline app, only when configured

    @app.get("/openapi.json")
    def openapi() -> Response:
        return Response(orjson.dumps(build_spec(app, secured=settings.auth)), mimetype="application/json")

    return app


class _Deadline:
    """Every request runs under one deadline (remote/deadline.py): each upstream call, retry and back-off
    within it. WSGI middleware, so that it spans the whole request whatever the view does."""

    def __init__(self, wsgi_app: Any, seconds: float) -> None:
        self.wsgi_app = wsgi_app
        self.seconds = seconds

    def __call__(self, environ: Any, start_response: Any) -> Any:
        with deadline(self.seconds):
            return self.wsgi_app(environ, start_response)


def _register_negotiation(app: Flask) -> None:
    """JSON only: a client that accepts no JSON (e.g. Accept: application/fhir+xml, or _format=xml) gets 406
    rather than a JSON body it did not ask for."""

    @app.before_request
    def _accept() -> None:
        if request.blueprint == "smart_app":  # the SMART timeline app (/app/) answers HTML to browsers
            return
        fmt = request.args.get("_format")
        if fmt is not None and fmt.lower() not in FORMAT_JSON:
            raise ServiceError(406, f"_format {fmt[:40]!r} is not served: this service answers JSON only",
                               expression="_format")
        if request.headers.get("Accept") and request.accept_mimetypes.best_match(sorted(JSON_TYPES)) is None:
            raise ServiceError(406, "this service answers JSON only (application/fhir+json or application/json); "
                                    "the Accept header allows neither")


def _register_request_log(app: Flask) -> None:
    """One structured line per request: method, route, status, duration, request id; never bodies, paths or
    queries."""

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _done(resp: Response) -> Response:
        resp.headers["X-Request-Id"] = g.get("request_id", "")
        access_log.info(orjson.dumps({
            # The route, not the path: a path can carry a patient id, a query string identifiers.
            "event": "request", "method": request.method,
            "route": request.url_rule.rule if request.url_rule is not None else "-", "status": resp.status_code,
            "ms": round(1000 * (time.perf_counter() - g.get("started", time.perf_counter())), 1),
            "request_id": g.get("request_id"), "bytes_in": request.content_length or 0,
        }).decode())
        return resp
