"""The suite tests what `pip install .` installs: the package and the mapping tables shipped inside it."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest

import cart_fhir
from cart_fhir.conformance.invariants import table_path
from cart_fhir.tables import mappings_dir

SITE = Path(sysconfig.get_paths()["purelib"]).resolve()
SOURCE_TREE = Path(__file__).resolve().parent.parent
FROM_WHEEL = Path(cart_fhir.__file__).resolve().is_relative_to(SITE)


@pytest.mark.skipif(not FROM_WHEEL and os.environ.get("CI") != "true",
                    reason="an editable install imports the source tree; `pip install .` (as in CI) imports the wheel")
def test_package_and_tables_come_from_the_installed_wheel() -> None:
    assert FROM_WHEEL, f"CI must test the installed wheel, but adapter was imported from {cart_fhir.__file__}"
    assert not Path(cart_fhir.__file__).resolve().is_relative_to(SOURCE_TREE / "adapter")
    assert mappings_dir().resolve() == (SITE / "cart_fhir" / "_data" / "mappings").resolve()
    assert table_path().resolve() == (SITE / "cart_fhir" / "_data" / "r4-invariants.json").resolve()


def test_every_mapping_file_is_shipped() -> None:
    repo_mappings = Path(__file__).resolve().parent.parent / "mappings"
    shipped = {p.name for p in mappings_dir().iterdir()}
    assert {p.name for p in repo_mappings.iterdir() if p.suffix in (".yaml", ".json")} <= shipped
