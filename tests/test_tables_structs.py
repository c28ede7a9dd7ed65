"""Table rows are frozen msgspec Structs (issue 18, start-up CPU): every shipped table loads to the values the
YAML says, with pydantic's former coercions (int -> float), and a bad row still stops start-up with a
ConfigError naming the file, the row's path and what is wrong."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from helpers import edit_once

from cart_fhir.errors import ConfigError
from cart_fhir.grading.icaht import IcahtTable
from cart_fhir.grading.neuro_other import NeuroGradingTable
from cart_fhir.grading.registry import load_all
from cart_fhir.synth.table import SynthTable, load_synth_table
from cart_fhir.tables import (
    ConceptRow,
    ConversionRow,
    DeviceRow,
    Row,
    Table,
    load_tables,
    load_yaml_table,
)


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def test_every_shipped_table_loads_to_its_yaml_values() -> None:
    t = load_all()
    assert t.units.conversions[0].from_ == "[degF]"  # the column named `from` in the file
    body = next(r for r in t.plausibility.rows if r.id == "body-temperature")
    assert (body.min, body.max, type(body.min)) == (25.0, 45.0, float)  # YAML int, float column
    cannula = next(d for d in t.crs.oxygen.devices if d.id == "nasal-cannula")
    assert (cannula.by_flow, cannula.grade_low, cannula.grade_high, cannula.grade) == (True, 2, 3, None)
    assert set(t.icans.domains) == {"consciousness", "seizure", "motor", "cerebral-edema"}
    assert t.icans.domains["consciousness"][0].code == "alert" and t.icans.domains["consciousness"][0].grade == 0
    assert isinstance(t.concepts.rows, tuple) and isinstance(t.concepts.values, dict)
    assert t.get(NeuroGradingTable).severity[0].grade == 1 and t.get(IcahtTable).settings
    synth = load_synth_table()
    assert synth.products[0].age == (30, 76) and type(synth.products[0].weight) is float
    assert all(type(p) is float for p in synth.trials[synth.products[0].trial].crs.grade_pct)


def test_every_table_model_is_a_frozen_struct_refusing_unknown_columns() -> None:
    load_all()  # imports every grader's module, and with it its table models
    models = [Row, Table, *_subclasses(Row), *_subclasses(Table), SynthTable]
    assert len(models) > 60
    for model in models:
        assert issubclass(model, msgspec.Struct), model
        config = model.__struct_config__
        assert config.frozen and config.forbid_unknown_fields, model


def test_rows_are_frozen_hashable_and_compare_by_value() -> None:
    row = load_tables().concepts.rows[0]
    with pytest.raises(AttributeError):
        row.code = "x"  # type: ignore[misc]
    same = msgspec.convert(msgspec.to_builtins(row), ConceptRow)
    assert same == row and hash(same) == hash(row) and same is not row
    assert msgspec.structs.replace(row, code="other") != row


def test_a_row_check_runs_when_built_in_code_too() -> None:
    with pytest.raises(ValueError, match="device x: needs a grade"):
        DeviceRow(device="x", tier="none", source="test")
    assert ConversionRow(from_="a", to="b", scale=1.0, offset=0.0).from_ == "a"


@pytest.mark.parametrize(("name", "old", "new", "message"), [
    pytest.param("units.yaml", "{id: degf-to-cel, from:", "{id: degf-to-cel, colour: red, from:",
                 r"units\.yaml: conversions\[0\]: Object contains unknown field `colour`$", id="unknown-column"),
    pytest.param("astct-crs-2019.yaml", "by_flow: true, grade_low: 2, grade_high: 3, unknown_flow: at-least-2",
                 "by_flow: true, grade_low: 2, grade_high: 3",
                 r"astct-crs-2019\.yaml: oxygen\.devices\[\d+\]: device nasal-cannula: by_flow needs grade_low, "
                 r"grade_high, unknown_flow$", id="row-check"),
    pytest.param("neurotoxicity-grading.yaml", 'display: "Mild", grade: 1,', 'display: "Mild", grade: 5,',
                 r"neurotoxicity-grading\.yaml: severity\[0\]\.grade: Expected `int` <= 3$", id="constraint"),
    pytest.param("neurotoxicity-grading.yaml", 'display: "Mild", grade: 1,', 'display: "Mild", grade: "1",',
                 r"neurotoxicity-grading\.yaml: severity\[0\]\.grade: Expected `int`, got `str`$",
                 id="no-str-to-int"),
    pytest.param("neurotoxicity-grading.yaml", "severity:", "severity:\n  - {id: severity-mild-again, "
                 'system: "http://snomed.info/sct", code: "255604002", display: "Mild", grade: 1, verified: false, '
                 'source: "test"}', r"neurotoxicity-grading\.yaml: duplicate severity code or support id$",
                 id="table-check"),
])
def test_a_bad_row_names_file_path_and_fault(mappings_folder: Path, name: str, old: str, new: str,
                                              message: str) -> None:
    edit_once(mappings_folder / name, old, new)
    with pytest.raises(ConfigError, match=message) as err:
        if name == "neurotoxicity-grading.yaml":  # a grader's own table (load_all loads it after the core)
            load_yaml_table(name, NeuroGradingTable, str(mappings_folder))
        else:
            load_tables(str(mappings_folder))
    assert str(err.value).startswith(f"{mappings_folder / name}: ")
    assert isinstance(err.value.__cause__, msgspec.ValidationError)


def test_an_optional_column_may_be_left_out(mappings_folder: Path) -> None:
    edit_once(mappings_folder / "plausibility.yaml", "concept: body-temperature, min: 25,",
              "concept: body-temperature,")
    rows = load_tables(str(mappings_folder)).plausibility.rows
    assert next(r for r in rows if r.id == "body-temperature").min is None


def test_a_dict_key_outside_its_literal_is_named(mappings_folder: Path) -> None:
    edit_once(mappings_folder / "astct-icans-2019.yaml", "  consciousness:\n", "  awareness:\n")
    with pytest.raises(ConfigError, match=r"astct-icans-2019\.yaml: key in domains: Invalid enum value 'awareness'"):
        load_tables(str(mappings_folder))
