"""Every row of a table list carries an `id`, unique in its file: evidence trails cite table id + row id."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from .errors import ConfigError


def _rows(node: Any, where: str) -> Iterator[tuple[msgspec.Struct, str]]:
    """(row, where) for every Struct (table row) inside a list/tuple, at any depth of a parsed table."""
    if isinstance(node, msgspec.Struct):
        for name in node.__struct_fields__:
            yield from _rows(getattr(node, name), f"{where}.{name}" if where else name)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _rows(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            if isinstance(value, msgspec.Struct):
                yield value, f"{where}[{i}]"
            yield from _rows(value, f"{where}[{i}]")


def check_row_ids(table_name: str, table: msgspec.Struct) -> None:
    """ConfigError naming the file and the row when a list row has no id or an id repeats in the table.

    Rows outside lists (a single settings row, the values of a keyed dict) are named by their key: no id.
    """
    seen: dict[str, str] = {}
    for row, where in _rows(table, ""):
        row_id = getattr(row, "id", None)
        if not row_id:
            raise ConfigError(f"{table_name}: {where}: row has no id (every row of a list needs one)")
        if row_id in seen:
            raise ConfigError(f"{table_name}: {where}: id {row_id!r} repeats {seen[row_id]} "
                              "(ids are unique per file)")
        seen[row_id] = where
