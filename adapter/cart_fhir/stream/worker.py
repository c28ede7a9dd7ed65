"""Phase 2, in a worker process: grade one bucket (or one whole Bundle) and write its output parts."""

from __future__ import annotations

import io
import multiprocessing
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import Any

import orjson

from ..errors import AdapterError, BadInput, Location
from ..ingest.fast import enabled as fast_read_enabled
from ..ingest.index import ref_key
from ..ingest.read import Item, check_resource, read_all, read_bundle
from ..pipeline import BundleType, Engine, RunResult
from ..report import Issue, RunReport

MAX_ISSUES = 1000  # per severity and task: the parent keeps totals, and a capped list for report.json


@dataclass(frozen=True, slots=True)
class Outputs:
    """What each task writes into its part files; chosen by the parent, the same for every task."""

    ndjson: bool = True
    bundle_type: BundleType | None = None  # entries for a single Bundle assembled by the parent
    summary: bool = False
    registry: bool = False


@dataclass(frozen=True, slots=True)
class Task:
    index: int  # output order: buckets first, then units
    kind: str  # "bucket" | "unit-file" | "unit-line"
    path: str  # bucket or unit lines file, or the Bundle file itself
    names: tuple[str, ...]
    shared: str | None  # the shared Medications file (buckets only)
    shared_keys: frozenset[str]
    parts: str  # folder for this task's part files


@dataclass(slots=True)
class TaskResult:
    """Small: counts and capped issues travel back to the parent, resources stay in the part files."""

    index: int
    report: RunReport
    errors_total: int = 0
    warnings_total: int = 0
    shared_used: set[str] = field(default_factory=set)
    device: bytes | None = None
    device_entry: bytes | None = None  # the Device as a Bundle entry, when the parent assembles a Bundle
    parts: dict[str, int] = field(default_factory=dict)  # part file name -> lines written
    config_error: str | None = None
    fatal: tuple[str, Location] | None = None  # unreadable input: the run stops, as the in-memory reader does


_engine: Engine | Exception | None = None
_recorded: datetime | None = None
_outputs = Outputs()
_maps: list[tuple[str, dict[str, Any]]] | None = None


def init(concept_maps: list[tuple[str, dict[str, Any]]], recorded: datetime, outputs: Outputs) -> None:
    """Pool initializer: the Engine (tables, profile check) is built once per worker, not once per bucket."""
    global _engine, _recorded, _outputs, _maps
    _recorded, _outputs = recorded, outputs
    if multiprocessing.parent_process() is not None:
        # Ctrl-C reaches every process of the terminal's group: the parent stops the pool and removes the
        # staging folder; a worker printing its own KeyboardInterrupt traceback would only add noise.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if isinstance(_engine, Engine) and _maps == concept_maps and _engine.fast_read == fast_read_enabled():
        return  # in-process runs (one worker) reuse the engine of an earlier run with the same settings
    _maps = concept_maps
    try:
        _engine = Engine(concept_maps=concept_maps, strict=False)
    except AdapterError as exc:  # raised here it would kill and respawn workers forever: report it per task
        _engine = exc


def grade_task(task: Task) -> TaskResult:
    engine = _engine
    if not isinstance(engine, Engine):
        return TaskResult(task.index, RunReport(), config_error=str(engine))
    assert _recorded is not None
    shared_used: set[str] = set()
    items = _items(task)
    if task.shared:
        items = chain(_tap_shared(items, task.shared_keys, shared_used), _lines(Path(task.shared), task.names))
    try:
        # A generator, not a list: the engine consumes it with the cyclic collector off (a list built here
        # would be re-scanned by the collector again and again as it grows).
        result = engine.grade(items, strict=False)
    except BadInput as err:  # unreadable input stops the run, as in the in-memory path; sent as data because
        # the exception's own pickling would lose its Location
        return TaskResult(task.index, RunReport(), fatal=(err.message, err.location))
    out = TaskResult(task.index, result.report, shared_used=shared_used)
    _write_parts(engine, result, task, out)
    if task.kind != "unit-file":  # a bucket (or Bundle line) is read once: free its disk space now, not at the end
        Path(task.path).unlink()
    _cap_issues(out)
    return out


def _items(task: Task) -> Iterator[Item | BadInput]:
    """Items of a task; a bad file, line or entry comes as its BadInput (the index files it: one pass)."""
    if task.kind == "unit-file":
        yield from read_all([task.path])
    else:
        yield from _lines(Path(task.path), task.names)


def _lines(path: Path, names: tuple[str, ...]) -> Iterator[Item | BadInput]:
    """Items of a bucket file: each line 'file-index TAB line TAB resource', so errors name the input line."""
    with path.open("rb") as fh:
        for raw in fh:
            i, n, line = raw.split(b"\t", 2)
            name, lineno = names[int(i)], int(n)
            loc = Location(name, line=lineno)
            try:
                try:
                    res = orjson.loads(line)  # phase 1 parsed it already; kept exact if it ever stops parsing
                except orjson.JSONDecodeError as exc:
                    raise BadInput(f"not valid JSON: {exc}", loc) from exc
                if type(res) is not dict or type(res.get("resourceType")) is not str or "id" in res and (
                        type(res["id"]) is not str or not res["id"]):
                    check_resource(res, loc)  # raises the in-memory reader's precise error
            except BadInput as err:
                yield err
                continue
            if res["resourceType"] == "Bundle":
                try:
                    for item in read_bundle(res, name, inband=True):
                        if isinstance(item, Item):
                            item.line = lineno
                        yield item
                except BadInput as err:
                    yield err
            else:
                yield Item(res, None, name, lineno)


def _tap_shared(items: Iterator[Item | BadInput], shared: frozenset[str], used: set[str]
                ) -> Iterator[Item | BadInput]:
    """Pass items through, noting the shared Medications their administrations refer to, as the extractor
    follows them (a medicationReference when there is no medicationCodeableConcept): the parent counts each
    used one once, whichever buckets used it."""
    for item in items:
        if isinstance(item, BadInput):
            yield item
            continue
        res = item.resource
        if res["resourceType"] in ("MedicationAdministration", "MedicationStatement") and \
                "medicationCodeableConcept" not in res:
            ref = res.get("medicationReference")
            target = ref.get("reference") if isinstance(ref, dict) else None
            if isinstance(target, str) and not target.startswith("#") and ref_key(target) in shared:
                used.add(ref_key(target))
        yield item


def _write_parts(engine: Engine, result: RunResult, task: Task, out: TaskResult) -> None:
    """One part file per output (resource type, bundle entries, summary rows, registry rows) for this task."""
    folder = Path(task.parts)
    stem = f"{task.index:06d}"
    device, groups = engine.resources_by_patient(result, _recorded)  # type: ignore[arg-type]
    files: dict[str, io.BufferedWriter] = {}

    def emit(name: str, data: bytes) -> None:
        fh = files.get(name)
        if fh is None:
            fh = files[name] = (folder / f"{stem}.{name}").open("wb")  # type: ignore[assignment]
            out.parts[name] = 0
        fh.write(data)
        out.parts[name] += 1

    try:
        if groups:
            out.device = orjson.dumps(device.resource)
            if _outputs.bundle_type is not None:
                out.device_entry = orjson.dumps(engine.bundle([device], _outputs.bundle_type)["entry"][0])
        for g in groups:
            for w in g.resources:
                if _outputs.ndjson:
                    emit(w.resource["resourceType"], orjson.dumps(w.resource) + b"\n")
            if _outputs.bundle_type is not None:
                for entry in engine.bundle(g.resources, _outputs.bundle_type)["entry"]:
                    emit("entries", orjson.dumps(entry) + b"\n")
        if _outputs.summary:
            from ..summary import episode_rows

            for row in episode_rows(result):
                emit("summary", orjson.dumps(row) + b"\n")
        if _outputs.registry:
            from ..registry import csv_text, registry_rows

            text = csv_text((row for pr in result.patients
                             for row in registry_rows(pr, engine.tables, result.reviews)), engine.tables, header=False)
            if text:
                emit("registry", text.encode())
    finally:
        for fh in files.values():
            fh.close()


def _cap_issues(out: TaskResult) -> None:
    issues = out.report.issues
    errors = [i for i in issues if i.severity == "error"]
    others = [i for i in issues if i.severity != "error"]
    out.errors_total, out.warnings_total = len(errors), len(others)
    kept: list[Issue] = errors[:MAX_ISSUES] + others[:MAX_ISSUES]
    out.report.issues = kept
