"""Shared fixtures: one Engine per session (the mapping tables are parsed once)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import day_grade, run

from cart_fhir.conformance import Checker, Package, default_package_dir
from cart_fhir.conformance.validate import validate_bundle
from cart_fhir.pipeline import Engine
from cart_fhir.tables import mappings_dir

# The real FHIR server for integration tests (tests/fhirserver, started on 127.0.0.1 on first use); browser:
# Debian chromium + Playwright; r4_examples: the official HL7 R4 examples from npm (tests/test_fast_read.py).
pytest_plugins = ["fhir_server_fixture", "browser_fixture", "r4_examples_fixture"]


class CheckingEngine(Engine):
    """The engine, with every resource it emits checked against base R4 and cart-fhir's published profiles
    (issue 6: every test that emits resources runs them through the checker)."""

    def resources_by_patient(self, result: Any, recorded: Any) -> Any:
        device, groups = super().resources_by_patient(result, recorded)
        written = [device, *(w for g in groups for w in g.resources)] if groups else []
        if written:
            bundle = {"resourceType": "Bundle", "type": "collection",
                      "entry": [{"fullUrl": w.full_url, "resource": w.resource} for w in written]}
            issues = validate_bundle(bundle, _PACKAGE, _CHECKER)
            assert not issues, "emitted resources do not conform:\n" + "\n".join(
                f"entry[{i.entry}] {i.resource}: {i.path}: {i.message}" for i in issues[:20])
        return device, groups


_PACKAGE = Package.load(default_package_dir())
_CHECKER = Checker(_PACKAGE)


@pytest.fixture(scope="session")
def engine() -> Engine:
    return CheckingEngine()


@pytest.fixture()
def grade(engine: Engine):
    """grade(builder, tox, day) -> (state, grade) of that day."""
    def _grade(builder: Any, tox: str, day: int) -> tuple[str, int | None]:
        return day_grade(run(engine, builder.bundle()), tox, day)
    return _grade


@pytest.fixture
def mappings_folder(tmp_path: Path) -> Path:
    """A private copy of the shipped mapping tables, for a test that edits one (helpers.edit_once)."""
    shutil.copytree(mappings_dir(), tmp_path / "mappings")
    return tmp_path / "mappings"
