#!/usr/bin/env python3
"""Scale benchmark: the real `cart-fhir grade` CLI on tiled synthetic cohorts of 1k/10k/100k patients.

For each cohort size (made with benchmarks/make_cohort.py under --cohort-root unless already there):
  (a) baseline: `orjson.loads` of every line of the cohort's NDJSON files, streamed line by line (time);
  (b) `cart-fhir grade` as a subprocess, per worker count:
        --mode stream:   cart-fhir grade DIR --out-dir OUT --workers N -q
        --mode inmemory: cart-fhir grade DIR -o OUT/out.json -q          (one process; --workers ignored)
      measuring wall time and the peak RSS of the process tree (VmRSS of the CLI and all its descendants,
      sampled every 0.1 s from /proc: the max of the sum, and the max of any single process), then counting
      the output (lines per output .ndjson file; Bundle entries for out.json).
Prints a markdown table and machine facts; --json FILE writes everything. Run on demand, never in the tests:

    python benchmarks/bench_scale.py --sizes 1000,10000 --workers 1,2 --mode stream --json /tmp/scale.json

The grade time is the CLI's wall time, so it includes interpreter start-up and building the Engine
(~1 s) and writing the output: what a user waits for. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
TYPES = ("Patient", "MedicationAdministration", "Observation")
SAMPLE_S = 0.1


# ---- process-tree RSS --------------------------------------------------------------------------------

def _ppids() -> dict[int, int]:
    """pid -> parent pid of every process now (no /proc/PID/task/*/children on this kernel, so scan)."""
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue  # exited while scanning
            # field 4 (ppid) follows the command name, which is in parentheses and may contain spaces
            out[int(name)] = int(stat[stat.rindex(b")") + 2:].split(b" ", 2)[1])
    return out


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0  # exited, or a zombie (no VmRSS line)


def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def tree(root: int) -> list[int]:
    parents = _ppids()
    kids: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        kids.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(kids.get(pid, ()))
    return found


class RssSampler(threading.Thread):
    """Samples the process tree under `root` every SAMPLE_S seconds; keeps the peak sum and single peak."""

    def __init__(self, root: int, disk: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.disk, self.stop = root, disk, threading.Event()
        self.peak_total_kib = self.peak_single_kib = self.max_procs = self.samples = 0
        self.disk_at_start = self.peak_disk = _used(disk)

    def run(self) -> None:
        while not self.stop.is_set():
            rss = [_rss_kib(p) for p in tree(self.root)]
            self.peak_total_kib = max(self.peak_total_kib, sum(rss))
            self.peak_single_kib = max(self.peak_single_kib, max(rss, default=0))
            self.max_procs = max(self.max_procs, sum(1 for r in rss if r))
            self.peak_disk = max(self.peak_disk, _used(self.disk))  # bucket files + output on that filesystem
            self.samples += 1
            self.stop.wait(SAMPLE_S)


# ---- measurements ------------------------------------------------------------------------------------

def ndjson_files(cohort: Path) -> list[Path]:
    return sorted(cohort.glob("*.ndjson"))


def baseline_parse(cohort: Path, repeat: int) -> dict[str, Any]:
    """Best of `repeat` passes (the first one also warms the page cache for the CLI run)."""
    runs = [parse_once(cohort) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["parse_s"])
    return {**best, "parse_runs_s": [round(r["parse_s"], 3) for r in runs]}


def parse_once(cohort: Path) -> dict[str, Any]:
    """orjson.loads of every non-empty line, reading the files line by line (memory stays flat)."""
    loads, n, nbytes = orjson.loads, 0, 0
    start, cpu = time.perf_counter(), time.process_time()
    for path in ndjson_files(cohort):
        with open(path, "rb", buffering=1 << 20) as fh:
            for line in fh:
                if line.strip():
                    loads(line)
                    n += 1
                    nbytes += len(line)
    return {"parse_s": time.perf_counter() - start, "parse_cpu_s": time.process_time() - cpu, "resources": n,
            "input_mb": nbytes / 1e6}


def count_output(out: Path) -> dict[str, int]:
    """Lines per output .ndjson file; for the in-memory out.json, its entries (a `"fullUrl"` line each)."""
    counts: dict[str, int] = {}
    for path in sorted(out.glob("*.ndjson")):
        with open(path, "rb", buffering=1 << 20) as fh:
            counts[path.stem] = sum(1 for line in fh if line.strip())
    bundle = out / "out.json"
    if bundle.exists():
        with open(bundle, "rb", buffering=1 << 20) as fh:
            counts["Bundle entries"] = sum(1 for line in fh if line.lstrip().startswith(b'"fullUrl"'))
    return counts


def run_cli(cohort: Path, out: Path, mode: str, workers: int, cli: str) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if mode == "stream":
        cmd = [cli, "grade", str(cohort), "--out-dir", str(out), "--workers", str(workers), "-q"]
    else:
        cmd = [cli, "grade", str(cohort), "-o", str(out / "out.json"), "-q"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = RssSampler(proc.pid, out)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    # CPU of the CLI and every descendant it waited for (its workers): less sensitive than wall time to
    # other load on a shared machine
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sampler.stop.set()
    sampler.join()
    report = out / "report.json"
    return {"command": " ".join(cmd), "exit": proc.returncode, "grade_s": wall, "cpu_s": cpu,
            "loadavg_after": os.getloadavg(),
            "report": orjson.loads(report.read_bytes()) if report.exists() else None,
            "stderr_tail": err.decode(errors="replace")[-2000:],
            "peak_total_rss_mb": sampler.peak_total_kib / 1024,
            "peak_single_rss_mb": sampler.peak_single_kib / 1024,
            "max_processes": sampler.max_procs, "rss_samples": sampler.samples,
            "peak_extra_disk_mb": (sampler.peak_disk - sampler.disk_at_start) / 1e6,
            "output_mb": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6,
            "output": count_output(out) if proc.returncode == 0 else {}}


def ensure_cohort(root: Path, size: int, args: argparse.Namespace) -> Path:
    cohort = root / f"n{size}"
    meta = cohort / "cohort.meta"
    if meta.exists():
        m = orjson.loads(meta.read_bytes())
        if (m.get("patients"), m.get("days"), m.get("seed")) == (size, args.days, args.seed):
            return cohort
    cmd = [sys.executable, str(ROOT / "benchmarks" / "make_cohort.py"), "--patients", str(size),
           "-o", str(cohort),
           "--block", str(args.block), "--days", str(args.days), "--seed", str(args.seed)]
    sys.stderr.write("$ " + " ".join(cmd) + "\n")
    subprocess.run(cmd, check=True)
    return cohort


# ---- machine facts -----------------------------------------------------------------------------------

def _first(path: str, key: str) -> str:
    try:
        with open(path) as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith(key)), "?")
    except OSError:
        return "?"


def _git(*cmd: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def source_fingerprint() -> str:
    """sha256 (12 hex) of adapter/**/*.py and mappings/: ties figures to code (the tree may be dirty)."""
    files = sorted((ROOT / "adapter").rglob("*.py"))
    files += sorted(p for p in (ROOT / "mappings").rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "cpu": _first("/proc/cpuinfo", "model name"),
            "ram": _first("/proc/meminfo", "MemTotal"), "kernel": platform.release(),
            "python": platform.python_version(), "orjson": orjson.__version__,
            "git_commit": _git("rev-parse", "--short=12", "HEAD"),
            "git_dirty_files": len(_git("status", "--porcelain").splitlines()),
            "adapter_sources_sha256": source_fingerprint(), "loadavg_at_start": os.getloadavg()}


# ---- report ------------------------------------------------------------------------------------------

COLUMNS = ("patients", "input MB", "resources", "workers", "parse s", "grade s", "grade/parse", "CPU s",
           "CPU/parse CPU", "patients/s",
           "peak total RSS MB", "peak single RSS MB", "procs", "output resources")


def row(r: dict[str, Any]) -> list[str]:
    return [f"{r['patients']:,}", f"{r['input_mb']:,.0f}", f"{r['resources']:,}", str(r["workers"]),
            f"{r['parse_s']:.1f}", f"{r['grade_s']:.1f}", f"{r['ratio']:.1f}x", f"{r['cpu_s']:.1f}",
            f"{r['cpu_s'] / r['parse_cpu_s']:.1f}x", f"{r['patients_per_s']:.1f}",
            f"{r['peak_total_rss_mb']:,.0f}", f"{r['peak_single_rss_mb']:,.0f}", str(r["max_processes"]),
            f"{sum(r['output'].values()):,}" if r["exit"] == 0 else f"exit {r['exit']}"]


def table(runs: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in runs]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000", help="comma-separated cohort sizes, e.g. 1000,10000,100000")
    ap.add_argument("--workers", default="1", help="comma-separated worker counts (stream mode), e.g. 1,2")
    ap.add_argument("--mode", choices=("stream", "inmemory"), default="stream")
    ap.add_argument("--cohort-root", type=Path, default=Path("/tmp/bench-scale"),
                    help="cohorts live in ROOT/n<size> (made if missing)")
    ap.add_argument("--cohort", type=Path, help="use this cohort folder (one size) instead of --cohort-root")
    ap.add_argument("--out-root", type=Path, default=None, help="grading output (default: COHORT-ROOT/out)")
    ap.add_argument("--block", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cli", default=str(Path(sys.executable).parent / "cart-fhir"),
                    help="the cart-fhir executable (default: next to this Python)")
    ap.add_argument("--keep-output", action="store_true", help="keep the grading output after counting")
    ap.add_argument("--parse-repeat", type=int, default=2, help="baseline passes, best kept (default 2)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    workers = [int(x) for x in args.workers.split(",")] if args.mode == "stream" else [1]
    if args.cohort and len(sizes) != 1:
        ap.error("--cohort takes one size")
    out_root = args.out_root or (args.cohort_root / "out")
    facts = machine()
    runs: list[dict[str, Any]] = []
    for size in sizes:
        cohort = args.cohort or ensure_cohort(args.cohort_root, size, args)
        base = baseline_parse(cohort, args.parse_repeat)
        sys.stderr.write(f"{size} patients: parse {base['parse_s']:.1f} s ({base['input_mb']:.0f} MB, "
                         f"{base['resources']:,} resources)\n")
        for n in workers:
            out = out_root / f"n{size}-w{n}-{args.mode}"
            r = {"patients": size, "mode": args.mode, "workers": n, "cohort": str(cohort), **base,
                 "loadavg_before": os.getloadavg(),
                 **run_cli(cohort, out, args.mode, n, args.cli)}
            r["ratio"] = r["grade_s"] / r["parse_s"]
            r["patients_per_s"] = size / r["grade_s"]
            if not args.keep_output:
                shutil.rmtree(out, ignore_errors=True)
            sys.stderr.write(f"  workers {n}: exit {r['exit']}, {r['grade_s']:.1f} s, "
                             f"CPU {r['cpu_s']:.1f} s, "
                             f"peak RSS total {r['peak_total_rss_mb']:.0f} MB\n")
            if r["exit"]:
                sys.stderr.write(r["stderr_tail"] + "\n")
            runs.append(r)
    print(table(runs))
    print()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    if args.json:
        args.json.write_bytes(orjson.dumps({"machine": facts, "runs": runs}, option=orjson.OPT_INDENT_2))
    return 0 if all(r["exit"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
