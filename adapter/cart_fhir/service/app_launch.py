"""The SMART on FHIR timeline app under /app/: EHR launch and standalone launch (SMART App Launch 2.x),
the patient read through cart-fhir's FHIR client, graded and drawn by the same renderer as `cart-fhir report`.

Off unless configured (CART_FHIR_APP_CLIENT_ID, CART_FHIR_APP_REDIRECT_URI, optional
CART_FHIR_APP_CLIENT_SECRET); configured but incomplete refuses to start. The access token is kept in a
server-side session; the browser holds only an opaque, HttpOnly, SameSite=Lax cookie. Pages (and their
errors) are HTML for a person, not OperationOutcomes: this is the one part of the service a browser shows.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from html import escape
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson
import requests
from flask import Blueprint, Flask, Response, current_app, redirect, request
from pydantic import Field, field_validator
from werkzeug.wrappers import Response as BaseResponse  # what flask.redirect returns

from ..errors import AdapterError, BadInput, ConfigError
from ..layering import LayeredSettings
from ..remote.auth import BearerToken
from ..remote.client import FhirClient
from ..remote.errors import AuthFailed, ServerError
from ..remote.http import FhirHttp, RetryPolicy
from ..remote.read import PatientNotFound, PatientReader
from ..view.page import script_hash
from ..view.render import patient_views, report_html
from .app_sessions import SessionStore
from .smart_launch import LaunchError, authorize_url, check_url, discover, exchange_code, pkce_pair

log = logging.getLogger("cart_fhir.service")
EXTENSION = "cart_fhir_app"
COOKIE = "cart_fhir_app"
PENDING_TTL = 600.0  # seconds from the launch to the callback

class AppSettings(LayeredSettings):
    """The SMART app's settings, each from CART_FHIR_<NAME> (layering.py: given > environment > defaults)."""

    what: ClassVar[str] = "app"

    app_client_id: str  # the client id the EHR registered for this app
    app_redirect_uri: str  # https://<service>/app/callback, as registered
    app_client_secret: str | None = None  # confidential-symmetric client (else a public one)
    app_issuers: tuple[str, ...] = ("*",)  # FHIR bases allowed as `iss` (comma-separated; "*": any)
    app_standalone_iss: str | None = None  # FHIR base of a standalone launch (/app/launch)
    app_session_ttl: int = Field(default=3600, ge=60, le=12 * 3600)  # seconds a signed-in session lasts
    app_session_dir: str | None = None  # sealed session files (default: a private temp folder)

    @field_validator("app_issuers", mode="before")
    @classmethod
    def _list(cls, v: Any) -> Any:
        return tuple(i.strip().rstrip("/") for i in v.split(",") if i.strip()) if isinstance(v, str) else v

    @field_validator("app_redirect_uri")
    @classmethod
    def _redirect(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.hostname or not parts.path.endswith("/app/callback"):
            raise ValueError("must be this service's https URL ending in /app/callback")
        return v

    def issuer_allowed(self, iss: str) -> bool:
        return "*" in self.app_issuers or iss.rstrip("/") in self.app_issuers


def split_overrides(overrides: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(service overrides, app overrides): create_app's overrides minus the app's own keys."""
    rest = dict(overrides or {})
    mine = {k: rest.pop(k) for k in list(rest) if k in AppSettings.model_fields}
    return rest, mine


def load_app_settings(overrides: Mapping[str, Any] | None = None,
                      environ: Mapping[str, str] | None = None) -> AppSettings | None:
    """None when the app is not configured at all; ConfigError when it is configured but incomplete."""


    env = os.environ if environ is None else environ
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    configured = {k for k in AppSettings.model_fields if given.get(k) or env.get(AppSettings.env_name(k))}
    if not configured:
        return None
    missing = [AppSettings.env_name(k) for k in ("app_client_id", "app_redirect_uri") if k not in configured]
    if missing:
        raise ConfigError(f"cannot start: the SMART app is configured but these settings are missing: "
                          f"{', '.join(missing)}")
    settings = AppSettings.layered(given, environ=env)
    if settings.app_client_secret and "*" in settings.app_issuers:
        # Any `iss` names its own token endpoint: a forged launch would collect the client secret.
        secret, issuers = AppSettings.env_name("app_client_secret"), AppSettings.env_name("app_issuers")
        raise ConfigError(f"cannot start: {secret} is set, so {issuers} must list "
                          "the EHR's FHIR base URLs (the secret is only sent to their token endpoints)")
    return settings


class SmartApp:
    """What the app's views use: settings, the session store, one HTTP session for discovery and tokens."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self.sessions = SessionStore(settings.app_session_dir)
        self.http = requests.Session()
        self.csp = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                    f"script-src '{script_hash()}'; base-uri 'none'; form-action 'none'")


def init_app(app: Flask, overrides: Mapping[str, Any] | None = None) -> None:
    """Register /app/ when configured (see load_app_settings)."""
    settings = load_app_settings(overrides)
    if settings is None:
        return
    if "*" in settings.app_issuers:
        log.warning("SMART app: any FHIR server may launch it (set CART_FHIR_APP_ISSUERS to the EHR's bases)")
    app.extensions[EXTENSION] = SmartApp(settings)
    app.register_blueprint(bp)


# The service's old placeholder default for CART_FHIR_TIMELINE_URL (config.py): never a real app.
PLACEHOLDER_TIMELINE_URL = "https://cart-fhir.org/timeline/launch"


def timeline_link(configured: str | None) -> str:
    """The CDS cards' `smart` link: CART_FHIR_TIMELINE_URL when set, else this service's own /app/launch when
    the app is configured (the EHR launches it with iss and launch), else none ("")."""
    if configured and configured != PLACEHOLDER_TIMELINE_URL:
        return configured
    if EXTENSION in current_app.extensions:
        return request.host_url.rstrip("/") + "/app/launch"
    return ""


def _app() -> SmartApp:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


bp = Blueprint("smart_app", __name__, url_prefix="/app")


@bp.errorhandler(LaunchError)
def _launch_error(exc: LaunchError) -> Response:
    return _page(_message_html("The timeline cannot be shown", exc.text), exc.status)


@bp.get("/launch")
def launch() -> BaseResponse:
    """EHR launch (iss + launch) or standalone launch (no launch: iss from the query or the settings)."""
    s = _app().settings
    launch_id = request.args.get("launch")
    iss = request.args.get("iss") or (s.app_standalone_iss if not launch_id else None)
    if not iss:
        raise LaunchError(400, "launch needs iss (the EHR's FHIR base URL): start the app from the EHR")
    iss = check_url(iss, "iss")
    if not s.issuer_allowed(iss):
        raise LaunchError(403, "this FHIR server is not allowed to launch the app (CART_FHIR_APP_ISSUERS)")
    cfg = discover(_app().http, iss)
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(32)
    scope = cfg.scopes(standalone=not launch_id)
    sid = _app().sessions.new_id()
    _app().sessions.put(sid, {"pending": {"state": state, "verifier": verifier, "iss": iss,
                                          "token_endpoint": cfg.token_endpoint}}, PENDING_TTL)
    target = authorize_url(cfg, client_id=s.app_client_id, redirect_uri=s.app_redirect_uri, scope=scope,
                           state=state, challenge=challenge, aud=iss, launch=launch_id)
    log.info("app: %s launch, scopes %s", "EHR" if launch_id else "standalone", scope)
    resp = redirect(target, 302)
    _set_cookie(resp, sid, PENDING_TTL)
    return resp


@bp.get("/callback")
def callback() -> BaseResponse:
    """The authorization server's redirect: check state, exchange the code, keep the token server-side."""
    store, s = _app().sessions, _app().settings
    sid = request.cookies.get(COOKIE)
    record = store.get(sid)
    pending = record.get("pending") if record else None
    if not pending:
        raise LaunchError(400, "no launch in progress in this browser (or it expired): launch the app again")
    if not secrets.compare_digest(request.args.get("state", ""), pending["state"]):
        raise LaunchError(400, "the authorization answer does not belong to this launch (state mismatch)")
    store.delete(sid)  # single use: a replayed callback finds nothing
    if request.args.get("error"):
        raise LaunchError(403, f"the EHR did not authorize the app ({request.args['error'][:100]})")
    code = request.args.get("code")
    if not code:
        raise LaunchError(400, "the authorization answer has no code")
    answer = exchange_code(_app().http, pending["token_endpoint"], code=code, verifier=pending["verifier"],
                           client_id=s.app_client_id, redirect_uri=s.app_redirect_uri,
                           client_secret=s.app_client_secret)
    patient = answer.get("patient")
    if not isinstance(patient, str) or not patient:
        raise LaunchError(403, "the EHR gave no patient context: launch the app from a patient's chart")
    expires_in = answer.get("expires_in")
    ttl = min(float(expires_in), s.app_session_ttl) if isinstance(expires_in, int | float) else s.app_session_ttl
    new_sid = store.new_id()  # a fresh id once signed in (no session fixation)
    store.put(new_sid, {"iss": pending["iss"], "token": answer["access_token"], "patient": patient,
                        "app_context": _app_context(answer.get("appContext"))}, max(ttl, 60.0))
    log.info("app: authorized (token kept server-side, patient context present)")
    resp = redirect("/app/", 303)
    _set_cookie(resp, new_sid, max(ttl, 60.0))
    return resp


@bp.get("/")
def timeline() -> Response:
    """The launched patient's timeline, read from the EHR with the session's token."""
    record = _app().sessions.get(request.cookies.get(COOKIE))
    if not record or "token" not in record:
        raise LaunchError(401, "not signed in, or the session expired: launch the app again from the EHR")
    from .context import services  # the Flask service's engine (tables parsed once at start-up)

    engine = services().engine
    http = FhirHttp(record["iss"], auth=BearerToken(record["token"]), timeout=60.0, retry=RetryPolicy(attempts=2))
    client = FhirClient(http)
    try:
        items = PatientReader(client, engine.terminology).patient(record["patient"])
    except PatientNotFound as exc:
        raise LaunchError(404, "the launched patient was not found on the EHR's FHIR server") from exc
    except AuthFailed as exc:
        raise LaunchError(401, "the EHR refused the app's token (expired?): launch the app again") from exc
    except ServerError as exc:
        raise LaunchError(502, "the EHR's FHIR server answered an error; try again later") from exc
    finally:
        client.close()
    try:
        result = engine.grade(items, strict=False)  # one odd resource must not cost the clinician the page
    except (BadInput, AdapterError) as exc:
        raise LaunchError(422, "the patient's record could not be graded") from exc
    views = patient_views(engine, result, [record["patient"]])
    context = record.get("app_context") or {}
    html = report_html(views, title="CAR-T toxicity timeline", with_index=False,
                       focus_infusion=context.get("infusion") if context.get("patient") == record["patient"] else None)
    return _page(html, 200)


def _app_context(raw: Any) -> dict[str, Any] | None:
    """CDS Hooks Link.appContext passed through the launch: {"patient", "infusion", "toxicity"} (optional)."""
    if not isinstance(raw, str) or len(raw) > 2000:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return {k: str(v) for k, v in doc.items() if k in ("patient", "infusion", "toxicity")} \
        if isinstance(doc, dict) else None


def _set_cookie(resp: BaseResponse, sid: str, ttl: float) -> None:
    # SameSite=Lax: sent on the authorization server's top-level redirect back, never on cross-site
    # sub-requests. Secure whenever the service is reached over https.
    resp.set_cookie(COOKIE, sid, max_age=int(ttl), httponly=True, samesite="Lax", secure=request.is_secure,
                    path="/app/")


def _page(html: str, status: int) -> Response:
    resp = Response(html, status=status, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = _app().csp
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


def _message_html(title: str, text: str) -> str:
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>cart-fhir: '
            f'{escape(title)}</title></head><body><main><h1>{escape(title)}</h1><p role="alert">{escape(text)}</p>'
            "</main></body></html>")
