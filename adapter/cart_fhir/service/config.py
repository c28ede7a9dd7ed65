"""Service settings: defaults, then CART_FHIR_* variables, then the factory's overrides; checked at start-up.

Layered by layering.py, as the CLI's server settings are; the upstream FHIR server's own settings are those
of the CLI (remote/settings.py: CART_FHIR_SERVER and friends).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

import orjson
from pydantic import Field, field_validator

from ..errors import ConfigError
from ..layering import FromCode, LayeredSettings
from ..remote.settings import ServerSettings, load_settings

ON = frozenset({"1", "true", "on", "yes"})
OFF = frozenset({"0", "false", "off", "no"})


class ServiceSettings(LayeredSettings):
    """The service's own settings, each from CART_FHIR_<NAME> (CART_FHIR_AUTH, CART_FHIR_AUDIENCE, ...)."""

    what: ClassVar[str] = "service"

    testing: Annotated[bool, FromCode] = False
    auth: bool = True  # on | off: inbound bearer-token checks
    audience: str | None = None  # this service's public base URL: the `aud` tokens must carry
    jwks: str | None = None  # the token issuers' keys: a JWKS file or https URL
    issuers: tuple[str, ...] = ()  # comma-separated allow-list of token issuers (`iss`)
    cds_jwks: str | None = None  # the EHRs' CDS Hooks keys: a JWKS file or URL (default: jwks)
    cds_issuers: tuple[str, ...] = ()  # allowed CDS Hooks clients (`iss`), default: issuers
    upstream: bool = True  # on | off: Patient/$grade-toxicity needs CART_FHIR_SERVER
    # The upstream FHIR server: the CLI's server settings (CART_FHIR_SERVER and friends, remote/settings.py).
    server: Annotated[ServerSettings | None, FromCode] = None
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    timeline_url: str = "https://cart-fhir.org/timeline/launch"  # the SMART app the CDS cards link to
    # fhirServer URL prefixes CDS calls may name ("*": any). The EHR's access token travels to the fhirServer
    # a CDS call names: production lists its FHIR bases.
    cds_fhir_servers: tuple[str, ...] = ("*",)
    # Reverse proxies in front whose X-Forwarded-* headers to trust: behind a proxy the public URL (CDS Hooks
    # `aud`, links) comes from them; trusted only this deep.
    proxy_hops: int = Field(default=0, ge=0, le=5)
    tables: Annotated[Any, FromCode] = None  # preloaded mapping tables (tests share one parse); None: load
    # Site ConceptMaps (comma-separated files), as `cart-fhir grade --concept-map`: every operation and CDS.
    concept_maps: tuple[str, ...] = ()
    # One budget per request, seconds: every upstream call and retry fits in it; past it the answer is 504.
    # Shorter than gunicorn's worker timeout (serve.py checks), so a request ends before its worker is killed.
    deadline: float = Field(default=30.0, gt=0, le=600)
    # Gradings in flight per worker process; a request waits briefly for a slot, then 503 + Retry-After.
    max_gradings: int = Field(default=4, ge=1, le=256)
    # Resources one request may carry: a 30-day CAR-T record is a few thousand; 380k tiny Patients is an attack.
    max_entries: int = Field(default=50_000, ge=1)
    # The authorization server that issues this service's tokens (SMART discovery: smart-configuration and the
    # CapabilityStatement's oauth-uris). Without it the service checks tokens but does not claim SMART.
    smart_token_endpoint: str | None = None
    smart_authorize_endpoint: str | None = None
    # The CDS card store (card uuid -> Condition business key, service/card_store.py): a SQLite file every
    # worker of the service opens, so feedback reaching any worker is recorded. Unset: one per process
    # (`cart-fhir serve` sets a private temporary file when this is unset).
    card_store: str | None = None

    @field_validator("auth", "upstream", mode="before")
    @classmethod
    def _switch(cls, v: Any) -> Any:
        if isinstance(v, str):
            low = v.strip().lower()
            if low in ON:
                return True
            if low in OFF:
                return False
            raise ValueError(f"must be on or off, not {v!r}")
        return v

    @field_validator("issuers", "cds_issuers", "cds_fhir_servers", "concept_maps", mode="before")
    @classmethod
    def _list(cls, v: Any) -> Any:
        return tuple(i.strip() for i in v.split(",") if i.strip()) if isinstance(v, str) else v

    def fhir_server_allowed(self, url: str) -> bool:
        return "*" in self.cds_fhir_servers or any(url.startswith(p) for p in self.cds_fhir_servers)

    def check(self) -> None:
        """Refuse to start without what the switched-on features need (testing is exempt from nothing but
        the upstream server: tests inject fakes)."""
        missing = []
        if self.auth:
            missing += [self.env_name(k) for k in ("audience", "jwks", "issuers") if not getattr(self, k)]
        if self.upstream and self.server is None and not self.testing:
            missing.append(f"{ServerSettings.env_name('base_url')} (or {self.env_name('upstream')}=off "
                           "for bundle operations only)")
        if missing:
            what = "inbound auth is on" if self.auth else "server-backed operations are on"
            trial = f" (or {self.env_name('auth')}=off for a local trial)" if self.auth else ""
            raise ConfigError(f"cannot start: {what} but these settings are missing: "
                              f"{', '.join(missing)}{trial}")


def load_service_settings(overrides: Mapping[str, Any] | None = None,
                          environ: Mapping[str, str] | None = None) -> ServiceSettings:
    """Overrides > environment (default os.environ) > defaults, then checked: ConfigError stops start-up."""
    env = os.environ if environ is None else environ
    values = dict(overrides or {})
    if values.get("server") is None and env.get(ServerSettings.env_name("base_url")):
        values["server"] = load_settings({}, None, env)
    settings = ServiceSettings.layered(values, environ=env)
    settings.check()
    return settings


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_defaults(host: str, environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """What `cart-fhir serve` assumes when a newcomer sets nothing, and the lines saying so at start-up.

    No upstream server named -> bundle-only (`Patient/$grade-toxicity` is not offered). No inbound auth setting
    at all and a loopback address -> auth off (nobody else can connect). Anything set explicitly wins.
    """
    out: dict[str, Any] = {}
    notes: list[str] = []
    env = ServiceSettings.env_name
    if not environ.get(env("upstream")) and not environ.get(ServerSettings.env_name("base_url")):
        out["upstream"] = False
        notes.append(f"bundle-only mode: no upstream FHIR server ({ServerSettings.env_name('base_url')} is not "
                     "set): POST a Bundle to /fhir/$grade-toxicity; Patient/$grade-toxicity is not offered")
    if not any(environ.get(env(k)) for k in ("auth", "audience", "jwks", "issuers")) and is_loopback(host):
        out["auth"] = False
        notes.append(f"inbound auth off: no {env('audience')}/{env('jwks')}/{env('issuers')} set and listening on "
                     f"{host} only (set them, or {env('auth')}=on, to check bearer tokens)")
    return out, notes


def load_concept_maps(paths: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """The site ConceptMap files of CART_FHIR_CONCEPT_MAPS, read once at start-up (the engine checks each
    target, as `cart-fhir grade --concept-map` does): a bad map stops start-up naming the file."""
    maps = []
    for p in paths:
        try:
            maps.append((p, orjson.loads(Path(p).read_bytes())))
        except OSError as exc:
            raise ConfigError(f"{ServiceSettings.env_name('concept_maps')}: {p}: cannot read ConceptMap: "
                              f"{exc.strerror}") from exc
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{ServiceSettings.env_name('concept_maps')}: {p}: ConceptMap is not valid JSON: "
                              f"{exc}") from exc
    return maps
