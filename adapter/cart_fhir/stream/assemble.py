"""Phase 3: concatenate the tasks' part files, in task order, into the run's outputs (never all in memory)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson

from .worker import TaskResult

RESOURCE_PARTS_EXCLUDED = frozenset({"entries", "summary", "registry"})


def part_files(parts: Path, results: list[TaskResult], name: str) -> Iterator[Path]:
    for res in results:  # results are in task order: the output does not depend on which worker ran what
        if name in res.parts:
            yield parts / f"{res.index:06d}.{name}"


def _concat(out: IO[bytes], files: Iterator[Path]) -> None:
    for f in files:
        with f.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        f.unlink()  # each part feeds one output: freed as it goes, the disk holds the output about once


def write_ndjson(folder: Path, parts: Path, results: list[TaskResult]) -> list[str]:
    """DIR/<Type>.ndjson per resource type, Bulk Data style; the Device once, in Device.ndjson."""
    device = next((r.device for r in results if r.device is not None), None)
    written: list[str] = []
    if device is not None:
        (folder / "Device.ndjson").write_bytes(device + b"\n")
        written.append("Device")
    types = sorted({n for r in results for n in r.parts} - RESOURCE_PARTS_EXCLUDED)
    for rtype in types:
        with (folder / f"{rtype}.ndjson").open("wb") as out:
            _concat(out, part_files(parts, results, rtype))
        written.append(rtype)
    return written


def write_bundle(target: Path, parts: Path, results: list[TaskResult], bundle_type: str) -> None:
    """One Bundle, written entry by entry: the in-memory path's entries, each patient's in the same order."""
    device = next((r.device_entry for r in results if r.device_entry is not None), None)
    with target.open("wb") as out:
        out.write(b'{"resourceType":"Bundle","type":%s,"entry":[' % orjson.dumps(bundle_type))
        if device is not None:
            out.write(b"\n" + device)
            for f in part_files(parts, results, "entries"):
                with f.open("rb") as src:
                    for line in src:
                        out.write(b",\n" + line.rstrip(b"\n"))
                f.unlink()
        out.write(b"\n]}\n")


def write_summary(target: Path, parts: Path, results: list[TaskResult]) -> None:
    """The --summary-json array of episode rows, one row per line."""
    first = True
    with target.open("wb") as out:
        out.write(b"[")
        for f in part_files(parts, results, "summary"):
            with f.open("rb") as src:
                for line in src:
                    out.write((b"\n  " if first else b",\n  ") + line.rstrip(b"\n"))
                    first = False
            f.unlink()
        out.write(b"]\n" if first else b"\n]\n")


def write_registry(target: Path, parts: Path, results: list[TaskResult], header: bytes) -> None:
    with target.open("wb") as out:
        out.write(header)
        _concat(out, part_files(parts, results, "registry"))
