"""FHIR server settings, layered: defaults, then a TOML config file, then CART_FHIR_* environment, then flags."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError

AuthKind = Literal["none", "bearer", "smart"]

# Setting name -> environment variable. The upstream server's auth kind is CART_FHIR_SERVER_AUTH: CART_FHIR_AUTH
# is the service's own inbound-auth switch (on/off).
ENV = {
    "base_url": "CART_FHIR_SERVER", "auth": "CART_FHIR_SERVER_AUTH", "token": "CART_FHIR_TOKEN",
    "token_file": "CART_FHIR_TOKEN_FILE", "client_id": "CART_FHIR_CLIENT_ID",
    "private_key": "CART_FHIR_PRIVATE_KEY", "kid": "CART_FHIR_KID", "scope": "CART_FHIR_SCOPE",
    "token_url": "CART_FHIR_TOKEN_URL", "jku": "CART_FHIR_JKU", "page_size": "CART_FHIR_PAGE_SIZE",
    "chunk_size": "CART_FHIR_CHUNK_SIZE", "timeout": "CART_FHIR_TIMEOUT", "retries": "CART_FHIR_RETRIES",
    "max_resources": "CART_FHIR_MAX_RESOURCES", "write_mode": "CART_FHIR_WRITE_MODE",
    "everything": "CART_FHIR_EVERYTHING", "observation_categories": "CART_FHIR_OBSERVATION_CATEGORIES",
}


class ServerSettings(BaseModel):
    """Everything needed to talk to one FHIR server. Secrets (token, key path) are never printed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str
    auth: AuthKind | None = None  # None: "bearer" when a token is given, "smart" when a client id is, else none
    token: str | None = Field(default=None, repr=False)
    token_file: str | None = None
    client_id: str | None = None
    private_key: str | None = None  # PEM or JWKS file
    kid: str | None = None
    scope: str = "system/Patient.rs system/Observation.rs system/MedicationAdministration.rs " \
                 "system/MedicationStatement.rs system/Medication.rs system/Procedure.rs system/Condition.rs " \
                 "system/Group.rs system/Observation.cu system/Condition.cu system/AdverseEvent.cu " \
                 "system/Provenance.cu system/Device.cu"
    token_url: str | None = None  # discovered from .well-known/smart-configuration when not given
    jku: str | None = None
    page_size: int = Field(default=1000, ge=1, le=10_000)
    chunk_size: int = Field(default=100, ge=1, le=10_000)
    timeout: float = Field(default=60.0, gt=0, le=3600)
    retries: int = Field(default=4, ge=1, le=20)  # attempts in all, for 429/502/503/504 and dropped connections
    max_resources: int = Field(default=100_000, ge=1)
    write_mode: Literal["auto", "transaction", "batch"] = "auto"
    everything: bool = True  # use Patient/$everything when the server has it
    observation_categories: tuple[str, ...] = ()

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL of the FHIR base, e.g. https://fhir.example.org/r4")
        return v

    @field_validator("observation_categories", mode="before")
    @classmethod
    def _cats(cls, v: Any) -> Any:
        return tuple(c.strip() for c in v.split(",") if c.strip()) if isinstance(v, str) else v

    def auth_kind(self) -> AuthKind:
        if self.auth is not None:
            return self.auth
        if self.client_id:
            return "smart"
        return "bearer" if self.token or self.token_file else "none"

    def bearer_token(self) -> str:
        if self.token:
            return self.token
        if not self.token_file:
            raise ConfigError("auth 'bearer' needs a token (CART_FHIR_TOKEN or --token-file)")
        try:
            token = Path(self.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{self.token_file}: cannot read the token file: {exc.strerror}") from exc
        if not token:
            raise ConfigError(f"{self.token_file}: the token file is empty")
        return token


def load_settings(flags: Mapping[str, Any], config_file: str | None = None,
                  environ: Mapping[str, str] | None = None) -> ServerSettings:
    """Defaults < config file ([server] table, or top level) < environment < flags given (not None)."""
    merged: dict[str, Any] = {}
    if config_file:
        merged.update(_read_config(config_file))
    env = os.environ if environ is None else environ
    merged.update({name: env[var] for name, var in ENV.items() if env.get(var)})
    merged.update({k: v for k, v in flags.items() if v is not None and k in ServerSettings.model_fields})
    if not merged.get("base_url"):
        raise ConfigError("no FHIR server: give --server URL, CART_FHIR_SERVER, or base_url in the config file")
    try:
        return ServerSettings(**merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"server setting {where}: {first['msg']}") from exc


def _read_config(path: str) -> dict[str, Any]:
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    table = doc.get("server", doc)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [server] must be a table")
    unknown = sorted(set(table) - set(ServerSettings.model_fields))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    return dict(table)
