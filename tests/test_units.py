"""UCUM conversion: the fast-path table agrees with ucumvert; aliases; errors for non-UCUM units."""

from __future__ import annotations

import pytest

from cart_fhir.ingest.units import UnitConverter, UnitError
from cart_fhir.tables import load_tables

TABLE = load_tables().units


@pytest.mark.parametrize("row", TABLE.conversions, ids=lambda r: f"{r.from_}->{r.to}")
def test_fast_path_rows_agree_with_ucumvert(row) -> None:
    slow = UnitConverter({})
    for value in (0.0, 1.0, 37.5, 100.4, 1234.5):
        expected = slow.convert(value, row.from_, row.to)
        assert value * row.scale + row.offset == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(("value", "unit", "target", "expected"), [
    (100.4, "[degF]", "Cel", 38.0),
    (100.4, "°F", "Cel", 38.0),
    (101.3, "degF", "Cel", 38.5),
    (38.0, "Cel", "Cel", 38.0),
    (38.0, "°C", "Cel", 38.0),
    (1.2, "K/uL", "/uL", 1200.0),
    (4.1, "10*9/L", "/uL", 4100.0),
    (250, "/mm3", "/uL", 250.0),
    (12.5, "g/dL", "g/L", 125.0),
    (6, "LPM", "L/min", 6.0),
])
def test_conversions(value, unit, target, expected) -> None:
    conv = UnitConverter({r.alias: r.ucum for r in TABLE.rows},
                         {(c.from_, c.to): (c.scale, c.offset) for c in TABLE.conversions})
    assert conv.convert(value, unit, target) == expected


@pytest.mark.parametrize(("unit", "message"), [("xyz", "not a UCUM unit"), ("mg", "cannot be converted"),
                                               ("mg/dl/", "not a UCUM unit")])
def test_bad_units_raise(unit, message) -> None:
    with pytest.raises(UnitError, match=message):
        UnitConverter({}).convert(1.0, unit, "Cel")
