"""Shared fixtures: one Engine per session (the mapping tables are parsed once)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import day_grade, run

from adapter.pipeline import Engine

# The real FHIR server for integration tests (tests/fhirserver, started on 127.0.0.1 on first use).
pytest_plugins = ["fhir_server_fixture"]


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine()


@pytest.fixture()
def grade(engine: Engine):
    """grade(builder, tox, day) -> (state, grade) of that day."""
    def _grade(builder: Any, tox: str, day: int) -> tuple[str, int | None]:
        return day_grade(run(engine, builder.bundle()), tox, day)
    return _grade
