"""Row ids (issue 12 item 2): every row of a table list has an `id`, unique in its file, checked on load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from helpers import edit_once

from cart_fhir.errors import ConfigError
from cart_fhir.grading.attribution import AttributionRulesTable
from cart_fhir.grading.bcell_aplasia import AplasiaTable
from cart_fhir.grading.hematotox import HematotoxTable
from cart_fhir.grading.hypogamma import HypogammaTable
from cart_fhir.grading.icaht import IcahtTable
from cart_fhir.grading.iechs import IecHsTable
from cart_fhir.grading.infections import InfectionGradingTable
from cart_fhir.grading.late_cytopenia import CytopeniaTable
from cart_fhir.grading.neuro_other import NeuroGradingTable
from cart_fhir.grading.registry import GRADERS, table_files
from cart_fhir.grading.treatments import TreatmentTable
from cart_fhir.synth.table import SynthTable
from cart_fhir.table_ids import check_row_ids
from cart_fhir.tables import (
    _FILES,
    RegistryColumnTable,
    Row,
    Table,
    load_tables,
    load_yaml_table,
    mappings_dir,
)

# The tables the grader registry declares (load_all loads them after the core ones), and the synth's own.
OWN_LOADER: dict[str, type[Table]] = {
    "astct-iechs-2023.yaml": IecHsTable,
    "eha-ebmt-icaht-2023.yaml": IcahtTable,
    "car-hematotox-2021.yaml": HematotoxTable,
    "infection-grading.yaml": InfectionGradingTable,
    "neurotoxicity-grading.yaml": NeuroGradingTable,
    "treatment-response.yaml": TreatmentTable,
    "attribution-rules.yaml": AttributionRulesTable,
    "synth-cohort.yaml": SynthTable,
    "registry-columns.yaml": RegistryColumnTable,
    "hypogammaglobulinemia.yaml": HypogammaTable,
    "b-cell-aplasia.yaml": AplasiaTable,
    "prolonged-cytopenia.yaml": CytopeniaTable,
}
KEBAB = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
FILES = sorted(p.name for p in mappings_dir().glob("*.yaml"))


def list_rows(node: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(where, row) for every mapping inside a list of the parsed YAML, read without the models."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += list_rows(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, dict):
                found.append((f"{where}[{i}]", value))
            found += list_rows(value, f"{where}[{i}]")
    return found


def test_every_table_file_has_a_loader() -> None:
    core = {name for name, _ in _FILES.values()}
    declared = {f.file for f in table_files(GRADERS)}
    assert sorted(core | declared | {"synth-cohort.yaml"}) == FILES and not core & declared
    assert {f.file: f.model for f in table_files(GRADERS)}.items() <= OWN_LOADER.items()


@pytest.mark.parametrize("name", FILES)
def test_every_list_row_has_a_unique_kebab_id_first(name: str) -> None:
    rows = list_rows(yaml.safe_load((mappings_dir() / name).read_text(encoding="utf-8")))
    ids = [row.get("id") for _, row in rows]
    for (where, row), row_id in zip(rows, ids, strict=True):
        assert isinstance(row_id, str) and KEBAB.fullmatch(row_id), f"{name}: {where}: id {row_id!r}"
        assert next(iter(row)) == "id", f"{name}: {where}: id is not the first key"
    assert len(set(ids)) == len(ids), f"{name}: repeated ids {sorted({i for i in ids if ids.count(i) > 1})}"


def test_shipped_tables_load_with_their_ids() -> None:
    tables = load_tables()
    for field in ("concepts", "units", "drugs", "products", "condition_findings", "infections",
                  "neuro_events", "crs", "icans", "output"):
        check_row_ids(field, getattr(tables, field))
    assert tables.crs.oxygen.devices[2].id == "nasal-cannula" and tables.icans.ice_bands[1].id == "ice-7-9"
    for name, model in OWN_LOADER.items():
        check_row_ids(name, load_yaml_table(name, model))


def test_a_row_without_an_id_stops_load_tables(mappings_folder: Path) -> None:
    edit_once(mappings_folder / "drugs.yaml", "{id: tocilizumab, agent: tocilizumab,", "{agent: tocilizumab,")
    with pytest.raises(ConfigError, match=r"drugs\.yaml: rows\[6\]: row has no id"):
        load_tables(str(mappings_folder))


def test_a_repeated_id_stops_load_tables(mappings_folder: Path) -> None:
    # unique per file, not per list: a conversion may not take an alias row's id
    edit_once(mappings_folder / "units.yaml", '{id: degf-to-cel, from: "[degF]"', '{id: degf, from: "[degF]"')
    with pytest.raises(ConfigError, match=r"units\.yaml: conversions\[0\]: id 'degf' repeats rows\[7\]"):
        load_tables(str(mappings_folder))


def test_a_row_without_an_id_in_a_dict_of_lists_is_named(mappings_folder: Path) -> None:
    edit_once(mappings_folder / "astct-icans-2019.yaml", "{id: seizure-prolonged, code: prolonged,",
              "{code: prolonged,")
    with pytest.raises(ConfigError, match=r"astct-icans-2019\.yaml: domains\.seizure\[3\]: row has no id"):
        load_tables(str(mappings_folder))


@pytest.mark.parametrize(("name", "old", "new", "message"), [
    ("treatment-response.yaml", "{id: siltuximab, agent: siltuximab,", "{agent: siltuximab,",
     r"treatment-response\.yaml: agents\[1\]: row has no id"),
    ("treatment-response.yaml", "{id: crs-cart-toxicity,", "{id: tocilizumab,",
     r"treatment-response\.yaml: reasons\[2\]: id 'tocilizumab' repeats agents\[0\]"),
    ("synth-cohort.yaml", "{id: tisa-cel-b-all,", "{id: tisa-cel-lbcl,",
     r"synth-cohort\.yaml: products\[2\]: id 'tisa-cel-lbcl' repeats products\[1\]"),
    ("registry-columns.yaml", "{id: icans, column: icans,", "{column: icans,",
     r"registry-columns\.yaml: rows\[15\]: row has no id"),
], ids=["treatments-missing", "treatments-repeated", "synth-repeated", "registry-missing"])
def test_own_loader_tables_are_checked_too(mappings_folder: Path, name: str, old: str, new: str, message: str) -> None:
    edit_once(mappings_folder / name, old, new)
    with pytest.raises(ConfigError, match=message):
        load_yaml_table(name, OWN_LOADER[name], str(mappings_folder))


class _Plain(msgspec.Struct):
    code: str


class _Single(Row):
    value: int


class _Listed(Row):
    code: str


class _Demo(Table):
    single: _Single
    keyed: dict[str, _Single]
    rows: tuple[_Listed, ...]
    plain: tuple[_Plain, ...] = ()


def _demo(**changes: Any) -> _Demo:
    data: dict[str, Any] = {"table": "demo", "version": 1, "source": "test", "single": {"value": 1},
                            "keyed": {"a": {"value": 2}},
                            "rows": [{"id": "a", "code": "x"}, {"id": "b", "code": "y"}]}
    return msgspec.convert({**data, **changes}, _Demo)


def test_rows_outside_lists_need_no_id() -> None:
    check_row_ids("demo.yaml", _demo())  # single and keyed rows are named by their key


def test_rows_built_in_code_may_omit_the_id() -> None:
    assert _Listed(code="x").id is None  # the model allows it; only a file is checked


def test_a_list_of_models_without_an_id_field_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"demo\.yaml: plain\[0\]: row has no id"):
        check_row_ids("demo.yaml", _demo(plain=[{"code": "x"}]))
