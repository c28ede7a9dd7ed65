#!/usr/bin/env python3
"""Write a large Bulk-Data style NDJSON cohort by tiling a block of `cart_fhir.synth` patients.

`cart-fhir synth` takes ~5 s per 100 patients and 100k x 30 days is ~32 GB, so this script generates a
base block of B distinct patients once (`cart_fhir.synth.generate.cohort`) and writes it N/B times. Copy 0
is the block as generated; copy i >= 1 gets the suffix `-t{i}` after the patient id wherever it occurs as
an id, an id prefix, a reference or the MRN (``"synth-00001"`` -> ``"synth-00001-t3"``,
``"synth-00001-temp-12"`` -> ``"synth-00001-t3-temp-12"``, ``"Patient/synth-00001"`` ->
``"Patient/synth-00001-t3"``). The rewrite is done on the serialised bytes: each type's block is split
once at the points where the suffix goes, and copy i is ``suffix_i.join(pieces)`` (a memcpy), so the
output streams at disk speed with memory flat in N (about 2x the block's size).

    python benchmarks/make_cohort.py --patients 10000 -o /tmp/bench10k [--block 1000] [--days 30]
        [--seed 1] [--check]

Writes one OUT/<Type>.ndjson per resource type the generator yields (Patient, MedicationAdministration,
Observation, ...; each file holds copy 0, then copy 1, ...; within a copy, patients in block order) and
OUT/cohort.meta (JSON; its suffix keeps `cart-fhir grade OUT` from reading it). `--check` re-reads the
output and verifies that every id is unique per type, every reference resolves to a resource of the
output and stays inside its own copy, and every resource equals its base resource once the suffix is
removed (use it on small cohorts).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from cart_fhir.synth.generate import cohort

META = "cohort.meta"
_SERIAL = orjson.OPT_SORT_KEYS  # same key order as `cart-fhir synth`


def suffix(copy: int) -> bytes:
    return b"-t%d" % copy


def build_block(block: int, seed: int, days: int) -> tuple[dict[str, list[bytes]], dict[str, int]]:
    """Per type, the block's NDJSON bytes split where a copy's suffix goes; and per type, resource counts."""
    # one file per resource type the generator yields (Patient, MedicationAdministration, Observation, ...)
    pieces: dict[str, list[bytes]] = {}
    current: dict[str, list[bytes]] = {}  # lines since the last split point
    counts: Counter[str] = Counter()
    for s, resources in cohort(block, seed, days):
        pid = s.pid.encode()
        # The patient id as a whole JSON string, a reference tail or an id prefix: "pid" /pid" "pid-
        at = re.compile(rb'(?<=["/])' + re.escape(pid) + rb'(?=["-])')
        for r in resources:
            rtype = r["resourceType"]
            if rtype not in pieces:
                pieces[rtype], current[rtype] = [], []
            counts[rtype] += 1
            line = orjson.dumps(r, option=_SERIAL) + b"\n"
            cur, start = current[rtype], 0
            for m in at.finditer(line):
                cur.append(line[start:m.end()])
                pieces[rtype].append(b"".join(cur))
                cur.clear()
                start = m.end()
            cur.append(line[start:])
    for rtype, done in pieces.items():
        done.append(b"".join(current[rtype]))
    return pieces, dict(counts)


def write(out: Path, pieces: dict[str, list[bytes]], copies: int) -> int:
    """Write each type's file as `copies` copies of the block, one large write per copy; return bytes."""
    total = 0
    for rtype in sorted(pieces):
        block0 = b"".join(pieces[rtype])
        with open(out / f"{rtype}.ndjson", "wb", buffering=0) as f:
            for i in range(copies):
                data = block0 if i == 0 else suffix(i).join(pieces[rtype])
                f.write(data)
                total += len(data)
    return total


def references(node: Any) -> list[str]:
    """Every Reference.reference in a resource, at any depth."""
    if isinstance(node, dict):
        own = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return own + [x for v in node.values() for x in references(v)]
    if isinstance(node, list):
        return [x for v in node for x in references(v)]
    return []


def check(out: Path, block_pieces: dict[str, list[bytes]], copies: int) -> dict[str, int]:
    """Every id unique per type, every reference resolves, every resource = its base minus the suffix."""
    types = sorted(block_pieces)
    base: dict[str, list[Any]] = {t: [orjson.loads(x) for x in b"".join(block_pieces[t]).splitlines()]
                                  for t in types}
    ids: dict[str, set[str]] = {t: set() for t in types}
    refs: list[str] = []
    for rtype in types:
        lines = (out / f"{rtype}.ndjson").read_bytes().splitlines()
        n = len(base[rtype])
        if len(lines) != n * copies:
            raise SystemExit(f"check: {rtype}: {len(lines)} lines, expected {n * copies}")
        for k, raw in enumerate(lines):
            r = orjson.loads(raw)
            if r["id"] in ids[rtype]:
                raise SystemExit(f"check: duplicate {rtype}/{r['id']}")
            ids[rtype].add(r["id"])
            copy = k // n
            own = references(r)
            tag = suffix(copy).decode()
            if copy and not all(x.endswith(tag) or tag + "-" in x for x in own):
                raise SystemExit(f"check: {rtype} line {k + 1} refers to another copy: {own}")
            refs.extend(own)
            undone = raw if copy == 0 else raw.replace(suffix(copy) + b'"', b'"').replace(
                suffix(copy) + b"-", b"-")
            if orjson.loads(undone) != base[rtype][k % n]:
                raise SystemExit(f"check: {rtype} line {k + 1} differs from its base beyond the suffix")
    missing = [x for x in refs if x.count("/") != 1 or x.split("/")[1] not in ids.get(x.split("/")[0], ())]
    if missing:
        raise SystemExit(f"check: {len(missing)} unresolved references, e.g. {missing[0]}")
    return {"resources": sum(len(v) for v in ids.values()), "references": len(refs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, required=True, help="a multiple of --block, or below it")
    ap.add_argument("-o", "--out", type=Path, required=True, help="output folder (created)")
    ap.add_argument("--block", type=int, default=1000, help="distinct synthetic patients (default 1000)")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check", action="store_true", help="verify ids and references (small cohorts)")
    args = ap.parse_args(argv)
    block = min(args.block, args.patients)
    if args.patients % block:
        ap.error(f"--patients {args.patients} is not a multiple of --block {block}")
    copies = args.patients // block
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pieces, counts = build_block(block, args.seed, args.days)
    t1 = time.perf_counter()
    nbytes = write(args.out, pieces, copies)
    t2 = time.perf_counter()
    meta = {"generator": "benchmarks/make_cohort.py (adapter.synth cohort(), tiled)",
            "patients": args.patients,
            "block": block, "copies": copies, "days": args.days, "seed": args.seed, "bytes": nbytes,
            "resources": {t: counts[t] * copies for t in sorted(counts)},
            "block_seconds": round(t1 - t0, 2), "write_seconds": round(t2 - t1, 2),
            "write_mb_per_s": round(nbytes / 1e6 / max(t2 - t1, 1e-9), 1)}
    (args.out / META).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    sys.stderr.write(f"{args.patients} patients ({copies} x {block}), {nbytes / 1e6:.1f} MB, "
                     f"{sum(meta['resources'].values()):,} resources: block {t1 - t0:.1f} s, "
                     f"write {t2 - t1:.1f} s ({meta['write_mb_per_s']} MB/s) -> {args.out}\n")
    if args.check:
        sys.stderr.write(f"check ok: {check(args.out, pieces, copies)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
