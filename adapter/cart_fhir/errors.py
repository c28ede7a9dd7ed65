"""One error tree for the whole adapter; the CLI prints it as one line, the service as an OperationOutcome."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Location:
    """Where in the input a problem sits: file, and NDJSON line or Bundle entry, and the resource."""

    file: str = "<input>"
    line: int | None = None
    entry: int | None = None
    resource: str | None = None  # "Observation/o1", or None when the resource has no id yet

    def __str__(self) -> str:
        parts = [self.file]
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.entry is not None:
            parts.append(f"entry[{self.entry}]")
        if self.resource:
            parts.append(self.resource)
        return ": ".join(parts)


class AdapterError(Exception):
    """Root of every error the adapter raises on purpose."""


class ConfigError(AdapterError):
    """A mapping table, ConceptMap or setting is wrong: stops start-up."""


class BadInput(AdapterError):
    """The input data is malformed or inconsistent; carries where and what."""

    def __init__(self, message: str, location: Location | None = None) -> None:
        self.message = message
        self.location = location or Location()
        super().__init__(f"{self.location}: {message}")


class InputErrors(AdapterError):
    """Several BadInput problems collected over one run (strict mode fails on any of them)."""

    def __init__(self, errors: list[BadInput], total: int | None = None) -> None:
        self.errors = errors
        self.total = len(errors) if total is None else total  # a streamed run lists only the first ones
        first = errors[0] if errors else None
        more = f" (and {self.total - 1} more)" if self.total > 1 else ""
        super().__init__(f"{first}{more}")
