"""FHIR server settings: each with its default (defaults.py), its CART_FHIR_* variable, flag and TOML key.

Layered by layering.py: command-line flags > CART_FHIR_* environment > TOML config file > defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator

from ..errors import ConfigError
from ..layering import Env, LayeredSettings, read_toml_table

# The defaults and choices live in defaults.py (the CLI reads them without the settings machinery).
from .defaults import CHUNK_SIZE, MAX_RESOURCES, PAGE_SIZE, RETRIES, SCOPE, TIMEOUT, AuthKind, WriteMode

__all__ = ["CHUNK_SIZE", "MAX_RESOURCES", "PAGE_SIZE", "RETRIES", "SCOPE", "TIMEOUT", "AuthKind", "ServerSettings",
           "WriteMode", "load_settings"]


class ServerSettings(LayeredSettings):
    """Everything needed to talk to one FHIR server. Secrets (token, key path) are never printed.

    Variables are CART_FHIR_<NAME> but for two: the base URL is CART_FHIR_SERVER, and the auth kind is
    CART_FHIR_SERVER_AUTH (CART_FHIR_AUTH is the service's own inbound-auth switch, service/config.py)."""

    what: ClassVar[str] = "server"

    base_url: Annotated[str, Env("CART_FHIR_SERVER")]
    # None: "bearer" when a token is given, "smart" when a client id is, else none
    auth: Annotated[AuthKind | None, Env("CART_FHIR_SERVER_AUTH")] = None
    token: str | None = Field(default=None, repr=False)
    token_file: str | None = None
    client_id: str | None = None
    private_key: str | None = None  # PEM or JWKS file
    kid: str | None = None
    scope: str = SCOPE
    token_url: str | None = None  # discovered from .well-known/smart-configuration when not given
    jku: str | None = None
    page_size: int = Field(default=PAGE_SIZE, ge=1, le=10_000)
    chunk_size: int = Field(default=CHUNK_SIZE, ge=1, le=10_000)
    timeout: float = Field(default=TIMEOUT, gt=0, le=3600)
    retries: int = Field(default=RETRIES, ge=1, le=20)
    max_resources: int = Field(default=MAX_RESOURCES, ge=1)
    write_mode: WriteMode = "auto"
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

    @classmethod
    def missing(cls, name: str) -> str:
        if name == "base_url":
            return "no FHIR server: give --server URL, CART_FHIR_SERVER, or base_url in the config file"
        return super().missing(name)


def load_settings(flags: Mapping[str, Any], config_file: str | None = None,
                  environ: Mapping[str, str] | None = None) -> ServerSettings:
    """Flags given (not None) > environment (default os.environ) > config file ([server] table, or top level)
    > defaults."""
    given = {k: v for k, v in flags.items() if v is not None and k in ServerSettings.model_fields}
    file_values = read_toml_table(config_file, "server", ServerSettings) if config_file else None
    return ServerSettings.layered(given, environ=environ, file_values=file_values)
