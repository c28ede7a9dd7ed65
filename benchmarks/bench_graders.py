"""Issue 18: where the grading and output stages spend their time, per grader and per writer.

Reads a folder of .ndjson files once (untimed), extracts every patient, then runs N passes of
`timeline.courses()`, the coverage gate, each registered grader (clinician attribution included, as the
engine runs it) and the output build split by kind, and prints the min of each in CPU seconds and as a
multiple of the in-process orjson parse of the same lines. `--profile` also prints a cProfile of one
pass of the graders and the output build (top functions by own time).

    python benchmarks/bench_graders.py /tmp/d200/fhir --passes 3 [--profile] [--src TREE]

`--src TREE` measures another source tree (its `adapter/` folder goes first on sys.path).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def parse_time(files: list[Path]) -> float:
    import orjson

    t = time.process_time()
    for p in files:
        for line in p.read_bytes().splitlines():
            if line.strip():
                orjson.loads(line)
    return time.process_time() - t


def one_pass(eng: Any, datas: list[Any], split: dict[str, float]) -> None:
    """courses, coverage, each grader, episodes/filing and the output build, timed separately."""
    from cart_fhir.grading import clinician
    from cart_fhir.grading.registry import CourseResult, _file
    from cart_fhir.pipeline import PatientResult, RunResult
    from cart_fhir.report import RunReport
    from cart_fhir.timeline import courses

    c = time.process_time
    results = []
    for data in datas:
        t = c()
        course_list, _ = courses(data)
        split["courses"] += c() - t
        t = c()
        missing = [eng.coverage.missing(course) for course in course_list]
        split["coverage"] += c() - t
        crs = []
        for course in course_list:
            cr = CourseResult(course)
            for g in eng.graders:
                t = c()
                if g.spec.attribution is not None:
                    seen, dropped = clinician.view(course, g.spec.attribution)
                    out = clinician.annotate(g.spec.run(g.grader, seen, cr), dropped, course)
                else:
                    out = g.spec.run(g.grader, course, cr)
                t2 = c()
                _file(g.spec, out, cr)
                g.spec.unverified(g.grader, out)
                cr.notices.extend(g.spec.notices(g.grader, out))
                t3 = c()
                split["grader " + g.spec.name] += t2 - t
                split["filing (episodes ...)"] += t3 - t2
            crs.append(cr)
        results.append(PatientResult(data, crs, missing))
    rr = RunResult(results, RunReport(), eng.tables, eng.toxicities, eng.needs)
    t = c()
    w = eng.resources(rr, datetime(2026, 1, 2, tzinfo=UTC))
    split["output resources"] += c() - t
    t = c()
    eng.bundle(w)
    split["output bundle"] += c() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--src", type=Path, help="another source tree to measure")
    a = ap.parse_args()
    if a.src:
        sys.path.insert(0, str(a.src / "adapter"))
    from cart_fhir.ingest.extract import Extractor
    from cart_fhir.ingest.index import build_index
    from cart_fhir.ingest.read import read_all
    from cart_fhir.pipeline import Engine
    from cart_fhir.report import RunReport

    files = sorted(a.data.rglob("*.ndjson"))
    parse = parse_time(files)
    eng = Engine(strict=False)
    gc.disable()
    report = RunReport()
    idx = build_index(list(read_all([str(p) for p in files])), report)
    ex = Extractor(eng.terminology, eng.units, report)
    datas = [ex.patient(idx, k) for k in idx.by_patient]
    passes = []
    for _ in range(a.passes):
        split: dict[str, float] = defaultdict(float)
        one_pass(eng, datas, split)
        passes.append(split)
    best = {k: min(p[k] for p in passes) for k in passes[0]}
    graders = sum(v for k, v in best.items() if k.startswith("grader "))
    print(f"parse {parse:.3f} s ({len(datas)} patients, min of {a.passes} passes)")
    for k, v in [*best.items(), ("all graders", graders)]:
        print(f"  {k:32} {v:7.3f} s {v / parse:6.2f}x")
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
        one_pass(eng, datas, defaultdict(float))
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(40)


if __name__ == "__main__":
    main()
