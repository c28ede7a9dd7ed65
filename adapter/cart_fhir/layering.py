"""Configuration layering for the CLI and the service: given values > CART_FHIR_* variables > file > defaults.

Built on pydantic-settings: its environment source reads and prepares the variables (exact names, empty
values ignored, no JSON decoding, per the model's config), and pydantic validates the merged layers.
What is ours:
- the layers come from the caller (a test passes its own environment, not os.environ);
- each field reads exactly one variable, CART_FHIR_<NAME> or the one `Env` names; never both, as
  pydantic-settings would for an aliased field (CART_FHIR_AUTH, the service's switch, would set the
  server's auth kind);
- fields marked `FromCode` never come from the environment;
- every failure is one ConfigError line naming the setting and its variable.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .errors import ConfigError

ENV_PREFIX = "CART_FHIR_"


@dataclass(frozen=True)
class Env:
    """`Annotated[T, Env("CART_FHIR_SERVER")]`: the field's variable when it is not CART_FHIR_<NAME>."""

    name: str


class FromCode:
    """`Annotated[T, FromCode]`: set by the code that builds the settings (tests, the factory), never by a
    variable; e.g. the service's `testing` switch must not be turned on from the environment."""


class LayeredSettings(BaseSettings):
    """Base of the CLI's server settings and of the service's settings. Build them with `layered()`;
    constructing one directly (tests) takes the given values and defaults only, never the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True,
        case_sensitive=True,  # CART_FHIR_TOKEN, not cart_fhir_token (Windows folds case: the library follows)
        enable_decoding=False,  # lists in variables are "a,b", not JSON: the models' validators split them
    )
    what: ClassVar[str] = "settings"  # "server", "service": the first word of every error message

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # layered() has already merged the layers; no .env or secrets folder

    @classmethod
    def layered(cls, given: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None,
                file_values: Mapping[str, Any] | None = None) -> Self:
        """The settings from `given` over `environ` (default os.environ) over `file_values` over the defaults;
        ConfigError names the first setting that is wrong or missing."""
        merged = {**(file_values or {}), **_Environment(cls, environ)(), **(given or {})}  # by field name
        try:
            return cls(**merged)
        except ValidationError as exc:
            raise cls.config_error(exc.errors()[0]) from exc

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of a field."""
        named = [m.name for m in cls.model_fields[field].metadata if isinstance(m, Env)]
        return named[0] if named else str(cls.model_config.get("env_prefix", ENV_PREFIX)) + field.upper()

    @classmethod
    def config_error(cls, error: Any) -> ConfigError:
        loc = error.get("loc") or ()
        name = loc[0] if loc and loc[0] in cls.model_fields else None
        if name is None:
            return ConfigError(f"{cls.what} setting {'.'.join(map(str, loc)) or '?'}: {error['msg']}")
        if error.get("type") == "missing":
            return ConfigError(cls.missing(name))
        return ConfigError(f"{cls.what} setting {name} ({cls.env_name(name)}): {error['msg']}")

    @classmethod
    def missing(cls, name: str) -> str:
        return f"{cls.what} setting {name} ({cls.env_name(name)}) is required"


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping: one variable per field (`env_name`), none
    for `FromCode` fields."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None) -> None:
        super().__init__(settings_cls)
        if environ is not None:  # as the source reads os.environ: case folded if asked, empty values out
            self.env_vars = {(k if self.case_sensitive else k.lower()): v for k, v in environ.items()
                             if not (self.env_ignore_empty and v == "")}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if FromCode in field.metadata:
            return None, field_name, False
        name = self.settings_cls.env_name(field_name)  # type: ignore[attr-defined]
        return self.env_vars.get(name if self.case_sensitive else name.lower()), field_name, False


def read_toml_table(path: str, table: str, settings_cls: type[LayeredSettings]) -> dict[str, Any]:
    """The `[table]` of a TOML file (or its top level when it has none), its keys checked as field names."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    values = doc.get(table, doc)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: [{table}] must be a table")
    unknown = sorted(set(values) - set(settings_cls.model_fields))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    return dict(values)
