"""SMART App Launch 2.x client steps (EHR and standalone launch): discovery, PKCE S256, authorize URL, code
exchange. http://hl7.org/fhir/smart-app-launch/app-launch.html (2.2.0); no Flask here, only HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

from ..errors import AdapterError

V2_SCOPES = "launch openid fhirUser patient/*.rs"
V1_SCOPES = "launch openid fhirUser patient/*.read"
_V2_PATTERN = re.compile(r"^(patient|user|system)/[^.\s]+\.c?r?u?d?s?$")
_V1_PATTERN = re.compile(r"^(patient|user|system)/[^.\s]+\.(read|write|\*)$")
TIMEOUT = (5.0, 20.0)


class LaunchError(AdapterError):
    """A launch that cannot go on; `status` is what the app page answers, `text` what it says."""

    def __init__(self, status: int, text: str) -> None:
        self.status = status
        self.text = text
        super().__init__(text)


@dataclass(frozen=True, slots=True)
class SmartConfig:
    authorization_endpoint: str
    token_endpoint: str
    scopes_supported: tuple[str, ...]
    capabilities: tuple[str, ...]

    def scopes(self, standalone: bool) -> str:
        """v2 scopes unless the server says it only knows v1 ones (SMART 2.x, scopes: v1 fallback)."""
        v1 = not self.v2()
        base = V1_SCOPES if v1 else V2_SCOPES
        return base.replace("launch ", "launch/patient ", 1) if standalone else base

    def v2(self) -> bool:
        if "permission-v2" in self.capabilities:
            return True
        if "permission-v1" in self.capabilities:
            return False
        if any(_V2_PATTERN.match(s) and not _V1_PATTERN.match(s) for s in self.scopes_supported):
            return True
        return not any(_V1_PATTERN.match(s) for s in self.scopes_supported)


def check_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.username or parts.password:
        raise LaunchError(400, f"{what} must be an http(s) URL")
    return url.rstrip("/")


def discover(session: requests.Session, iss: str) -> SmartConfig:
    """GET {iss}/.well-known/smart-configuration (SMART 2.x: the app's only discovery source)."""
    url = f"{iss}/.well-known/smart-configuration"
    try:
        resp = session.get(url, headers={"Accept": "application/json"}, timeout=TIMEOUT, allow_redirects=False)
    except requests.RequestException as exc:
        raise LaunchError(502, f"the EHR's SMART configuration could not be read ({type(exc).__name__})") from exc
    if resp.status_code != 200:
        raise LaunchError(502, f"the EHR's SMART configuration answered HTTP {resp.status_code}")
    try:
        doc = resp.json()
    except ValueError as exc:
        raise LaunchError(502, "the EHR's SMART configuration is not JSON") from exc
    if not isinstance(doc, dict):
        raise LaunchError(502, "the EHR's SMART configuration is not a JSON object")
    auth, token = doc.get("authorization_endpoint"), doc.get("token_endpoint")
    if not isinstance(auth, str) or not isinstance(token, str):
        raise LaunchError(502, "the EHR's SMART configuration has no authorization_endpoint or token_endpoint")
    methods = doc.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        # SMART 2.x requires S256 and forbids "plain": a server without it is not one this app talks to.
        raise LaunchError(502, "the EHR does not support PKCE S256 (code_challenge_methods_supported)")
    scopes = doc["scopes_supported"] if isinstance(doc.get("scopes_supported"), list) else []
    caps = doc["capabilities"] if isinstance(doc.get("capabilities"), list) else []
    return SmartConfig(check_url(auth, "authorization_endpoint"), check_url(token, "token_endpoint"),
                       tuple(str(s) for s in scopes), tuple(str(c) for c in caps))


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge): RFC 7636 4.1-4.2, 64 random bytes -> 86 characters."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize_url(cfg: SmartConfig, *, client_id: str, redirect_uri: str, scope: str, state: str,
                  challenge: str, aud: str, launch: str | None) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": scope,
              "state": state, "aud": aud, "code_challenge": challenge, "code_challenge_method": "S256"}
    if launch:
        params["launch"] = launch
    sep = "&" if "?" in cfg.authorization_endpoint else "?"
    return f"{cfg.authorization_endpoint}{sep}{urlencode(params)}"


def exchange_code(session: requests.Session, token_endpoint: str, *, code: str, verifier: str, client_id: str,
                  redirect_uri: str, client_secret: str | None) -> dict[str, Any]:
    """POST the code (RFC 6749 4.1.3) with the PKCE verifier; a confidential client authenticates with HTTP
    Basic (SMART client-confidential-symmetric). Never logged: the answer holds the access token."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": verifier}
    auth = None
    if client_secret:
        auth = (client_id, client_secret)
    else:
        form["client_id"] = client_id
    try:
        resp = session.post(token_endpoint, data=form, auth=auth, timeout=TIMEOUT, allow_redirects=False,
                            headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        raise LaunchError(502, f"the EHR's token endpoint could not be reached ({type(exc).__name__})") from exc
    try:
        answer = resp.json()
    except ValueError:
        answer = {}
    if resp.status_code != 200 or not isinstance(answer, dict):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise LaunchError(502 if resp.status_code >= 500 else 403,
                          f"the EHR refused the authorization code ({error or f'HTTP {resp.status_code}'})")
    token = answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise LaunchError(502, "the EHR's token answer has no access_token")
    if str(answer.get("token_type", "")).lower() != "bearer":
        raise LaunchError(502, "the EHR's token is not a bearer token")
    return answer
