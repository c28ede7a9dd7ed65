"""A streamed run: partition NDJSON by patient, grade buckets in worker processes, publish atomically."""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ..errors import BadInput, ConfigError, InputErrors
from ..ingest.read import expand_paths
from ..pipeline import BundleType
from ..report import Issue
from . import assemble
from .partition import partition
from .progress import Progress
from .tally import Tally, tally
from .worker import Outputs, Task, TaskResult, grade_task, init

BUCKET_BYTES = 64 << 20  # input per bucket: one bucket's in-memory grading is what a worker holds
MAX_BUCKETS = 512  # open files in phase 1 (a 256 KB buffer each, partition.py)


@dataclass(slots=True)
class StreamJob:
    inputs: list[str]
    out_dir: Path | None = None
    bundle_out: Path | None = None
    bundle_type: BundleType = "collection"
    summary_json: Path | None = None
    registry_csv: Path | None = None
    workers: int = 1
    buckets: int | None = None
    strict: bool = True
    concept_maps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    progress: bool = False
    dask: str | None = None  # a Dask scheduler name or address: phase 2 on Dask (adapter/cart_fhir/stream/dask.py)
    # Called with the tally once every bucket is graded, before anything is assembled or published: raising
    # aborts the run with nothing written (the CLI's --require gate).
    check: Callable[[Tally], None] | None = None


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, as a container or taskset sets it)."""
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if counter is not None:
        return counter() or 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_buckets(total_bytes: int, workers: int) -> int:
    """~64 MB of input per bucket, rounded up to a multiple of the workers: the last round keeps all busy."""
    k = max(1, math.ceil(total_bytes / BUCKET_BYTES))
    return min(MAX_BUCKETS, workers * math.ceil(k / workers))


def run_stream(job: StreamJob, recorded: datetime | None = None) -> Tally:
    """Grade job.inputs; write the requested outputs only when everything succeeded. `recorded` fixes the
    timestamp written on every resource (tests compare runs byte for byte)."""
    start = time.monotonic()
    recorded = recorded or datetime.now(UTC).replace(microsecond=0)
    workers = cpu_count() if job.workers == 0 else job.workers
    if workers < 0:
        raise ConfigError("--workers must be 0 (all cores) or more")
    paths = expand_paths(job.inputs)
    total = sum(p.stat().st_size for p in paths)
    k = job.buckets or default_buckets(total, workers)
    if k < 1 or k > MAX_BUCKETS:
        raise ConfigError(f"--buckets must be between 1 and {MAX_BUCKETS}")
    stage = _stage_dir(job)
    ok = False
    try:
        work = stage / ".work"
        parts = work / "parts"
        parts.mkdir(parents=True)
        bar = Progress(job.progress)
        bar.start("partition", total, "B", scale=True)
        part = partition(paths, work, k, bar.advance)
        t1 = time.monotonic()
        results = _grade(job, part, parts, workers, recorded, bar)
        t2 = time.monotonic()
        t = tally(results, part)
        if part.bad_total:  # NDJSON lines phase 1 could not parse: listed first, as the input has them
            t.errors = [Issue("error", e.message, e.location) for e in part.bad_lines] + t.errors
            t.errors_total += part.bad_total
        if job.strict and t.errors_total:
            raise InputErrors([i.bad_input() for i in t.errors], t.errors_total)
        if job.check is not None:
            job.check(t)
        _assemble(job, stage, parts, results)
        shutil.rmtree(work)
        t.timings = {"partition": t1 - start, "grade": t2 - t1, "assemble": time.monotonic() - t2,
                     "total": time.monotonic() - start}
        extra = {"recorded": recorded.isoformat(), "inputs": [str(p) for p in paths], "input_bytes": total,
                 "workers": workers, "buckets": k, "bundle_units": len(part.units)}
        if job.out_dir is not None:
            (stage / "report.json").write_bytes(orjson.dumps(t.to_json(extra), option=orjson.OPT_INDENT_2))
        _publish(job, stage)
        ok = True
        t.timings["total"] = time.monotonic() - start
        return t
    finally:
        if not ok:
            shutil.rmtree(stage, ignore_errors=True)


def _stage_dir(job: StreamJob) -> Path:
    """A temporary folder beside the output: renames into place are atomic, and a failure leaves nothing."""
    anchor = job.out_dir or job.bundle_out or job.summary_json or job.registry_csv
    if anchor is None:
        raise ConfigError("a streamed run needs --out-dir, -o, --summary-json or --registry-csv")
    out = job.out_dir
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{job.out_dir}: output folder exists and is not empty")
    try:
        anchor.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{anchor.name}.", dir=anchor.parent))
    except OSError as exc:
        raise ConfigError(f"{anchor}: cannot write: {exc.strerror or exc}") from exc
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the published folder gets the usual permissions
    return stage


def _grade(job: StreamJob, part: Any, parts: Path, workers: int, recorded: datetime,
           bar: Progress) -> list[TaskResult]:
    names = tuple(part.names)
    shared = str(part.shared) if part.shared_lines else None
    keys = frozenset(part.shared_keys)
    tasks = [Task(b, "bucket", str(p), names, shared, keys, str(parts))
             for b, p in enumerate(part.buckets) if p.stat().st_size]
    for j, (i, line) in enumerate(part.units):
        unit_lines = str(part.work / f"unit-{j:05d}.lines")
        kind, path = ("unit-file", names[i]) if line is None else ("unit-line", unit_lines)
        tasks.append(Task(len(part.buckets) + j, kind, path, names, None, frozenset(), str(parts)))
    outputs = Outputs(ndjson=job.out_dir is not None, bundle_type=job.bundle_type if job.bundle_out else None,
                      summary=job.summary_json is not None, registry=job.registry_csv is not None)
    bar.start("grade", len(tasks), "bucket")
    results: dict[int, TaskResult] = {}
    initargs = (job.concept_maps, recorded, outputs)
    if job.dask is not None:
        from .dask import grade_on_dask

        _collect(grade_on_dask(tasks, initargs, job.dask), results, bar)
    elif workers == 1:
        # One worker: grade here, one bucket at a time (the same memory as a pool worker, without the start-up
        # of a second interpreter and a second engine).
        init(*initargs)
        _collect(map(grade_task, tasks), results, bar)
    else:
        # spawn, not fork: the parent may hold threads (tqdm's monitor); a forked lock would hang a worker.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, max(1, len(tasks))), initializer=init, initargs=initargs) as pool:
            _collect(pool.imap_unordered(grade_task, tasks), results, bar)
    bar.close()
    return [results[i] for i in sorted(results)]


def _collect(done: Iterable[TaskResult], results: dict[int, TaskResult], bar: Progress) -> None:
    patients = 0
    for res in done:
        if res.config_error is not None:
            raise ConfigError(res.config_error)
        if res.fatal is not None:
            raise BadInput(*res.fatal)
        results[res.index] = res
        patients += res.report.patients
        bar.note(patients=patients)
        bar.advance(1)


def _assemble(job: StreamJob, stage: Path, parts: Path, results: list[TaskResult]) -> None:
    if job.out_dir is not None:
        assemble.write_ndjson(stage, parts, results)
    if job.bundle_out is not None:
        assemble.write_bundle(stage / ".bundle", parts, results, job.bundle_type)
    if job.summary_json is not None:
        assemble.write_summary(stage / ".summary", parts, results)
    if job.registry_csv is not None:
        from ..grading.registry import load_all
        from ..registry import csv_text

        header = csv_text([], load_all()).encode()  # the workers' engines grade with the shipped tables too
        assemble.write_registry(stage / ".registry", parts, results, header)


def _publish(job: StreamJob, stage: Path) -> None:
    """Rename every output into place, files first, the folder last."""
    files = ((".bundle", job.bundle_out), (".summary", job.summary_json), (".registry", job.registry_csv))
    for name, target in files:
        if target is not None:
            os.replace(stage / name, target)
    if job.out_dir is not None:
        if job.out_dir.exists():
            job.out_dir.rmdir()  # checked empty at the start
        os.replace(stage, job.out_dir)
    else:
        shutil.rmtree(stage)
