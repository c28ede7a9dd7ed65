"""The shipped examples (examples/README.md) give the grades their stories describe; golden files compared parsed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import RECORDED, episodes

from cart_fhir.ingest.read import read_paths

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "data" / "golden"

EXPECTED = {
    # file: {toxicity: [(onset_day, max_grade, resolved_day)]}  (examples/README.md)
    "crs-grade2-tocilizumab.json": {"crs": [(2, 2, 5)], "icans": []},
    "icans-grade3-steroids.json": {"crs": [(1, 1, 3)], "icans": [(5, 3, 9)]},
    "child-capd-icans.json": {"crs": [(1, 2, 4)], "icans": [(4, 3, 7)]},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_grades(engine, name: str) -> None:
    result = engine.grade(read_paths([REPO / "examples" / name]))
    for tox, expected in EXPECTED[name].items():
        assert episodes(result, tox) == expected, tox


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_output_matches_golden(engine, name: str) -> None:
    """Golden output (tests/data/golden/, made by this engine and reviewed against the example's story).
    Set CART_FHIR_UPDATE_GOLDEN=1 to rewrite after a reviewed change."""
    result = engine.grade(read_paths([REPO / "examples" / name]))
    got = engine.bundle(engine.resources(result, RECORDED))
    path = GOLDEN / name.replace(".json", ".out.json")
    if os.environ.get("CART_FHIR_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n")
    expected = json.loads(path.read_text())
    assert got == expected
