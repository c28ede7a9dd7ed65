"""The state of an unfinished Bulk Data export, kept in its output folder so a second run resumes it."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import BadInput, Location

STATE_FILE = ".bulk-export.json"  # there only while the export is unfinished: removed once all files are in
VERSION = 1


@dataclass(frozen=True, slots=True)
class ExportParams:
    """What names an export: the same server and the same kick-off parameters mean the same export."""

    base_url: str
    group: str | None = None
    since: str | None = None
    types: str | None = None

    def describe(self) -> str:
        shown = [f"server {self.base_url}"] + [f"{k} {v}" for k, v in
                                               (("group", self.group), ("since", self.since),
                                                ("type", self.types)) if v]
        return ", ".join(shown)


@dataclass(frozen=True, slots=True)
class ExportState:
    params: ExportParams
    status_url: str
    kicked_off: str  # ISO instant, for the user deciding whether an old export is still worth waiting for


def state_path(out_dir: Path) -> Path:
    return out_dir / STATE_FILE


def load_state(out_dir: Path) -> ExportState | None:
    """The saved state, or None when the folder holds none; a damaged file is bad input, not a fresh start
    (starting over silently would leave an export job running on the server)."""
    path = state_path(out_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadInput(f"cannot read the export state: {exc.strerror}", Location(str(path))) from exc
    try:
        data: Any = orjson.loads(raw)
        params = data["params"]
        state = ExportState(ExportParams(str(params["base_url"]), params.get("group"), params.get("since"),
                                         params.get("types")), str(data["status_url"]), str(data["kicked_off"]))
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadInput("the export state file is damaged: remove it, or run again with --restart",
                       Location(str(path))) from exc
    if data.get("version") != VERSION:
        raise BadInput(f"export state version {data.get('version')!r} is not {VERSION}: run again with --restart",
                       Location(str(path)))
    return state


def save_state(out_dir: Path, state: ExportState) -> None:
    """Written atomically (temp file, then rename): a kill mid-write must not leave half a status URL."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = state_path(out_dir)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps({"version": VERSION, "params": asdict(state.params), "status_url": state.status_url,
                                  "kicked_off": state.kicked_off}, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def clear_state(out_dir: Path) -> None:
    state_path(out_dir).unlink(missing_ok=True)
