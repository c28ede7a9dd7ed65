"""Turn input files (Bundles of any type, NDJSON files or folders) into a stream of located resources."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson

from ..errors import BadInput, Location

BUNDLE_TYPES = frozenset({"collection", "searchset", "transaction", "batch", "document", "message",
                          "transaction-response", "batch-response", "history"})


class Item(msgspec.Struct, gc=False):
    """One input resource with its Bundle fullUrl (if any) and where it was read.

    One per input resource, and a second for each Observation the fast reader compacts (ingest/fast.py): a
    msgspec Struct builds in a third of the time of a slots dataclass with the same fields and attribute API.
    gc=False: it refers to the parsed resource and to strings, never back to itself (as model.Reading)."""

    resource: dict[str, Any]
    full_url: str | None
    file: str
    line: int | None = None
    entry: int | None = None

    @property
    def loc(self) -> Location:
        """Built only when needed (an error or warning): one per resource would cost more than the parse."""
        return Location(self.file, self.line, self.entry, label(self.resource))


# Builds an input resource's item from (resource, fullUrl, file, line, entry): Item, or the engine's fast
# Observation reader (ingest/fast.py FastReader.item), which may return a subclass of Item.
Make = Callable[[dict[str, Any], str | None, str, int | None, int | None], Item]


def label(resource: dict[str, Any]) -> str | None:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if isinstance(rtype, str) and isinstance(rid, str):
        return f"{rtype}/{rid}"
    return rtype if isinstance(rtype, str) else None


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; a folder stands for its *.ndjson and *.json files at any depth (not hidden ones, nor
    those in hidden folders), sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            # Hidden files are tools' state, not input (e.g. bulk-export's .bulk-export.json while it runs,
            # a streamed run's staging folder).
            found = sorted(q for q in p.rglob("*")
                           if q.suffix in (".ndjson", ".json") and q.is_file()
                           and not any(part.startswith(".") for part in q.relative_to(p).parts))
            if not found:
                raise BadInput("folder holds no .ndjson or .json files (subfolders searched too)", Location(str(p)))
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise BadInput("no such file or folder", Location(str(p)))
    return out


def read_bytes(data: bytes, name: str) -> Iterator[Item]:
    """Items of one input given as bytes: a JSON Bundle, or NDJSON (one resource per line)."""
    return _read(data, name, inband=False)  # type: ignore[return-value]


def _read(data: bytes, name: str, inband: bool, make: Make = Item) -> Iterator[Item | BadInput]:
    """inband: a bad NDJSON line or Bundle entry is yielded as its BadInput (see read_all), else raised."""
    stripped = data.lstrip()
    if not stripped:
        raise BadInput("file is empty", Location(name))
    if name.endswith(".ndjson") or looks_like_ndjson(stripped):
        yield from _read_ndjson(data, name, inband, make=make)
        return
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"not valid JSON: {exc}", Location(name)) from exc
    if not isinstance(doc, dict):
        raise BadInput("expected a FHIR Bundle (a JSON object) or NDJSON", Location(name))
    if doc.get("resourceType") != "Bundle":
        got = doc.get("resourceType")
        raise BadInput(f"expected resourceType 'Bundle' (or an NDJSON file), got {got!r}", Location(name))
    yield from _bundle_items(doc, name, None, inband, make)


def read_bundle(doc: Any, name: str, inband: bool = False) -> Iterator[Item]:
    """Items of a Bundle already parsed (the service's request body); `inband` as in read_all."""
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        got = doc.get("resourceType") if isinstance(doc, dict) else type(doc).__name__
        raise BadInput(f"expected resourceType 'Bundle', got {got!r}", Location(name))
    yield from _bundle_items(doc, name, None, inband)  # type: ignore[misc]


def read_paths(paths: Iterable[str | Path]) -> Iterator[Item]:
    for path in expand_paths(paths):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BadInput(f"cannot read: {exc.strerror}", Location(str(path))) from exc
        yield from read_bytes(data, str(path))


def read_all(paths: Iterable[str | Path], make: Make = Item) -> Iterator[Item | BadInput]:
    """Like read_paths, but a bad file, NDJSON line or Bundle entry is yielded as its BadInput and reading
    goes on, so one run reports every problem (the index files them in the run report; strict mode then
    fails with all of them, --skip-invalid skips them). A missing path still stops at once. `make` builds
    each resource's item (the engine's fast Observation reader, ingest/fast.py: FastReader.item)."""
    for path in expand_paths(paths):
        try:
            if path.suffix == ".ndjson":
                # Line by line: the file's bytes and its list of lines (twice the file) are never held whole,
                # and each line's parse is freed as soon as the index has what it keeps (issue 18).
                with path.open("rb") as fh:
                    yield from _read_ndjson(fh, str(path), inband=True, empty=Location(str(path)), make=make)
                continue
            data = path.read_bytes()
        except OSError as exc:
            yield BadInput(f"cannot read: {exc.strerror}", Location(str(path)))
            continue
        except BadInput as err:  # an NDJSON file with no line at all
            yield err
            continue
        try:
            yield from _read(data, str(path), inband=True, make=make)
        except BadInput as err:  # the file as a whole: empty, not JSON, not a Bundle
            yield err


def looks_like_ndjson(stripped: bytes) -> bool:
    """Whether input starting with these bytes (leading whitespace stripped; the first line whole) is NDJSON."""
    # A JSON document spanning several lines starts with "{" and its first line is not a whole object.
    first = stripped.split(b"\n", 1)[0].strip()
    if not first.startswith(b"{") or b"\n" not in stripped.strip():
        return False
    try:
        obj = orjson.loads(first)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("resourceType") not in (None, "Bundle")


def _read_ndjson(lines: bytes | Iterable[bytes], name: str, inband: bool = False, empty: Location | None = None,
                 make: Make = Item) -> Iterator[Item | BadInput]:
    """Items of NDJSON given as bytes or as its lines (an open file); `empty`: raise "file is empty" there
    when no line holds anything (bytes were checked by the caller)."""
    loads = orjson.loads  # hoisted: once per line
    seen = False
    for n, line in enumerate(lines.split(b"\n") if isinstance(lines, bytes) else lines, start=1):
        line = line.strip()
        if not line:
            continue
        seen = True
        try:
            try:
                res = loads(line)
            except orjson.JSONDecodeError as exc:
                raise BadInput(f"not valid JSON: {exc}", Location(name, line=n)) from exc
            rtype = res.get("resourceType") if type(res) is dict else None
            if type(rtype) is not str or "id" in res and (type(res["id"]) is not str or not res["id"]):
                check_resource(res, Location(name, line=n))  # raises the precise error
            if rtype == "Bundle":
                yield from _bundle_items(res, name, n, inband, make)
            else:
                yield make(res, None, name, n, None)
        except BadInput as err:
            if not inband:
                raise
            yield err
    if not seen and empty is not None:
        raise BadInput("file is empty", empty)


def check_resource(res: Any, loc: Location) -> None:
    """Raise the precise BadInput for a parsed line or entry that is not a resource (or has a bad id)."""
    if not isinstance(res, dict):
        raise BadInput("expected a FHIR resource (a JSON object)", loc)
    rtype = res.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise BadInput("resource has no resourceType", loc)
    rid = res.get("id")
    if rid is not None and (not isinstance(rid, str) or not rid):
        raise BadInput(f"{rtype}.id must be a non-empty string, got {rid!r}", loc)


def _bundle_items(bundle: dict[str, Any], name: str, line: int | None, inband: bool = False,
                  make: Make = Item) -> Iterator[Item | BadInput]:
    btype = bundle.get("type")
    if not isinstance(btype, str) or btype not in BUNDLE_TYPES:  # a dict here is unhashable: check the type first
        raise BadInput(f"Bundle.type {btype!r} is not a FHIR R4 Bundle type", Location(name, line=line))
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise BadInput("Bundle.entry must be a list", Location(name, line=line))
    for i, entry in enumerate(entries):
        loc = Location(name, line=line, entry=i)
        try:
            if not isinstance(entry, dict):
                raise BadInput("Bundle entry must be a JSON object", loc)
            res = entry.get("resource")
            if res is None:
                continue  # a DELETE in a transaction, or a response entry without a body
            check_resource(res, loc)
            full_url = entry.get("fullUrl")
            if full_url is not None and not isinstance(full_url, str):
                raise BadInput("Bundle entry fullUrl must be a string", loc)
        except BadInput as err:
            if not inband:
                raise
            yield err  # this entry only: the rest of the Bundle is read
            continue
        if res["resourceType"] == "Bundle":
            # nested (e.g. a batch-response or a message payload)
            yield from _bundle_items(res, name, line, inband, make)
            continue
        # search.mode "include" entries are used like any other; "outcome" entries are OperationOutcomes,
        # which the index skips with a warning.
        yield make(res, full_url, name, line, i)
