"""Phase 1: stream NDJSON inputs line by line into K bucket files by patient, so each bucket grades alone."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import BadInput, Location
from ..ingest.index import RESULT_TYPES, SUBJECT_ELEMENT, ref_key
from ..ingest.read import looks_like_ndjson
from ..ours import is_ours

SHARED = "shared.lines"
_BUFFER = 1 << 20  # reading an input file, and the unit of progress reports
# Per bucket file: K files are open at once, so the buffers cost K x this in the partitioning process
# (measured: 1 MB each made the parent 344 MB at K = 288 buckets on the 100k cohort); 256 KB keeps K = 512
# under 130 MB and still writes in large sequential blocks.
_BUCKET_BUFFER = 256 << 10


@dataclass(slots=True)
class Partition:
    """Where phase 1 put everything: bucket files, the shared file, whole-Bundle units, and small counts."""

    work: Path
    names: list[str]  # origin file names; bucket lines carry an index into this list
    buckets: list[Path]
    units: list[tuple[int, int | None]] = field(default_factory=list)  # (name index, NDJSON line or None)
    shared_lines: int = 0
    shared_keys: set[str] = field(default_factory=set)  # Medication keys (latest version counted once)
    shared_anonymous: int = 0  # id-less Medications: each one its own key
    lines: int = 0
    bytes_read: int = 0
    bad_lines: list[BadInput] = field(default_factory=list)  # NDJSON lines that are not JSON (first 100)
    bad_total: int = 0

    @property
    def shared(self) -> Path:
        return self.work / SHARED


def bucket_of(key: str, buckets: int) -> int:
    """A stable hash (not Python's salted hash()): the same patient lands in the same bucket on every run."""
    return zlib.crc32(key.encode()) % buckets


def route(res: Any, origin: str) -> str | None:
    """The routing key of one parsed line: 'Patient/<id>' of the patient it belongs to, origin (file:line)
    when it belongs to no patient the grader could join (its bucket then reports it), or None for shared."""
    if not isinstance(res, dict):
        return origin
    rtype = res.get("resourceType")
    if rtype == "Patient":
        rid = res.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) and rid else origin
    element = SUBJECT_ELEMENT.get(rtype) if isinstance(rtype, str) else None
    if element is None and rtype in RESULT_TYPES and is_ours(res):  # a result of ours: its patient's bucket
        element = RESULT_TYPES[rtype]
    if element is not None:
        subj = res.get(element)
        ref = subj.get("reference") if isinstance(subj, dict) else None
        # The same normalisation the index joins with (NDJSON has no fullUrls, so no aliases to follow).
        return ref_key(ref) if isinstance(ref, str) else origin
    if rtype == "Medication":
        return None  # referenced from MedicationAdministrations of any patient: every bucket reads it
    return origin  # other types are counted as ignored by whichever bucket receives them


def is_ndjson(path: Path) -> bool:
    """.ndjson by name; a .json file is NDJSON when its first line is a whole non-Bundle resource."""
    if path.suffix == ".ndjson":
        return True
    with path.open("rb") as fh:
        first = b""
        for raw in fh:  # the first non-blank line, whole (the in-memory reader strips leading whitespace too)
            if raw.strip():
                first = raw
                break
        more = fh.read(4096)
    return looks_like_ndjson((first + more).lstrip())


def partition(paths: list[Path], work: Path, buckets: int, advance: Callable[[int], None]) -> Partition:
    """Append each NDJSON line, prefixed with its origin, to its patient's bucket file; Bundle files become
    units graded whole. A line that is not JSON is listed in bad_lines and skipped, so
    one run reports every one (the in-memory reader does the same)."""
    part = Partition(work, [str(p) for p in paths], [work / f"bucket-{b:05d}.lines" for b in range(buckets)])
    outs: list[IO[bytes]] = [p.open("wb", buffering=_BUCKET_BUFFER) for p in part.buckets]
    shared = part.shared.open("wb")
    try:
        for i, path in enumerate(paths):
            if not is_ndjson(path):
                part.units.append((i, None))
                size = path.stat().st_size
                part.bytes_read += size
                advance(size)
                continue
            _partition_file(part, i, path, outs, shared, advance)
    except OSError as exc:
        raise BadInput(f"cannot read: {exc.strerror}", Location(exc.filename or "<input>")) from exc
    finally:
        for fh in outs:
            fh.close()
        shared.close()
    return part


def _partition_file(part: Partition, i: int, path: Path, outs: list[IO[bytes]], shared: IO[bytes],
                    advance: Callable[[int], None]) -> None:
    name, k = str(path), len(outs)
    pending = 0
    with path.open("rb", buffering=_BUFFER) as fh:
        for n, raw in enumerate(fh, start=1):
            pending += len(raw)
            if pending >= _BUFFER:
                part.bytes_read += pending
                advance(pending)
                pending = 0
            line = raw.strip()
            if not line:
                continue
            part.lines += 1
            try:
                res = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                # Read on: one run lists every bad line (the run's strict check fails on them afterwards).
                part.bad_total += 1
                if len(part.bad_lines) < 100:
                    part.bad_lines.append(BadInput(f"not valid JSON: {exc}", Location(name, line=n)))
                continue
            record = b"%d\t%d\t%s\n" % (i, n, line)
            if isinstance(res, dict) and res.get("resourceType") == "Bundle":
                # A Bundle line is self-contained: graded whole, like a Bundle file, from a file of its own.
                (part.work / f"unit-{len(part.units):05d}.lines").write_bytes(record)
                part.units.append((i, n))
                continue
            key = route(res, f"{name}:{n}")
            if key is None:
                shared.write(record)
                part.shared_lines += 1
                rid = res.get("id")
                if isinstance(rid, str) and rid:
                    part.shared_keys.add(f"Medication/{rid}")
                else:
                    part.shared_anonymous += 1
            else:
                outs[bucket_of(key, k)].write(record)
    part.bytes_read += pending
    advance(pending)
