"""Service settings: defaults, then CART_FHIR_* environment, then the factory's overrides; checked at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError
from ..remote.settings import ENV as SERVER_ENV
from ..remote.settings import ServerSettings

ON = frozenset({"1", "true", "on", "yes"})
OFF = frozenset({"0", "false", "off", "no"})

# Setting -> environment variable (the upstream server's own settings are those of the CLI, remote/settings.py).
ENV = {
    "auth": "CART_FHIR_AUTH",                  # on | off (inbound bearer-token checks)
    "audience": "CART_FHIR_AUDIENCE",          # this service's public base URL: the `aud` tokens must carry
    "jwks": "CART_FHIR_JWKS",                  # the token issuers' keys: a JWKS file or https URL
    "issuers": "CART_FHIR_ISSUERS",            # comma-separated allow-list of token issuers (`iss`)
    "cds_jwks": "CART_FHIR_CDS_JWKS",          # the EHRs' CDS Hooks keys: a JWKS file or URL (default: jwks)
    "cds_issuers": "CART_FHIR_CDS_ISSUERS",    # allowed CDS Hooks clients (`iss`), default: issuers
    "upstream": "CART_FHIR_UPSTREAM",          # on | off: Patient/$grade-toxicity needs CART_FHIR_SERVER
    "max_body_bytes": "CART_FHIR_MAX_BODY_BYTES",
    "timeline_url": "CART_FHIR_TIMELINE_URL",  # the SMART app the CDS cards link to
    "cds_fhir_servers": "CART_FHIR_CDS_FHIR_SERVERS",  # fhirServer URL prefixes CDS calls may name ("*": any)
    "proxy_hops": "CART_FHIR_PROXY_HOPS",      # reverse proxies in front whose X-Forwarded-* headers to trust
}


class ServiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    testing: bool = False
    auth: bool = True
    audience: str | None = None
    jwks: str | None = None
    issuers: tuple[str, ...] = ()
    cds_jwks: str | None = None
    cds_issuers: tuple[str, ...] = ()
    upstream: bool = True
    server: ServerSettings | None = None  # the upstream FHIR server (CART_FHIR_SERVER and friends)
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    timeline_url: str = "https://cart-fhir.org/timeline/launch"
    # The EHR's access token travels to the fhirServer a CDS call names: production lists its FHIR bases.
    cds_fhir_servers: tuple[str, ...] = ("*",)
    # Behind a proxy the public URL (CDS Hooks `aud`, links) comes from X-Forwarded-*; trusted only this deep.
    proxy_hops: int = Field(default=0, ge=0, le=5)
    tables: Any = None  # preloaded mapping tables (tests share one parse); None: load at start-up

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

    @field_validator("issuers", "cds_issuers", "cds_fhir_servers", mode="before")
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
            missing += [ENV[k] for k in ("audience", "jwks") if not getattr(self, k)]
            if not self.issuers:
                missing.append(ENV["issuers"])
        if self.upstream and self.server is None and not self.testing:
            missing.append(f"{SERVER_ENV['base_url']} (or {ENV['upstream']}=off for bundle operations only)")
        if missing:
            what = "inbound auth is on" if self.auth else "server-backed operations are on"
            raise ConfigError(f"cannot start: {what} but these settings are missing: {', '.join(missing)}"
                              + ("" if not self.auth else f" (or {ENV['auth']}=off for a local trial)"))


def load_service_settings(overrides: Mapping[str, Any] | None = None,
                          environ: Mapping[str, str] | None = None) -> ServiceSettings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {name: env[var] for name, var in ENV.items() if env.get(var)}
    values.update(overrides or {})
    server = values.pop("server", None)
    if server is None and env.get(SERVER_ENV["base_url"]):
        from ..remote.settings import load_settings

        server = load_settings({}, None, env)
    try:
        settings = ServiceSettings(server=server, **values)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        raise ConfigError(f"service setting {ENV.get(name, name)}: {first['msg']}") from exc
    settings.check()
    return settings
