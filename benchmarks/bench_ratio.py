"""Issue 18 benchmark: `cart-fhir grade DIR -o out.json -q` against a plain orjson parse of the same lines.

Whole processes, paired runs (grade, parse, grade, parse, ...): CPU = user + sys of each child process
(os.wait4), peak RSS = the child's ru_maxrss. `--ref TREE` runs another source tree (e.g. a `git archive`
of the commit before) in the same rounds, so before and after are measured side by side on the same
machine state. `--stages N` adds N in-process passes split by stage (the min of each stage), in CPU
seconds and × the in-process parse of the same lines.

    cart-fhir synth --patients 200 --seed 1 --format ndjson -o /tmp/d200
    python benchmarks/bench_ratio.py /tmp/d200/fhir --ref /tmp/base-tree --runs 5 --stages 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
PARSE = """
import sys, orjson
from pathlib import Path
for p in sorted(Path(sys.argv[1]).rglob('*.ndjson')):
    with open(p, 'rb') as f:
        for line in f:
            if line.strip():
                orjson.loads(line)
"""
# The console script of that tree: entry() where it exists (fast exit), else sys.exit(main()).
GRADE = ("import sys; sys.path.insert(0, {src!r}); import cart_fhir.cli as c; "
         "(getattr(c, 'entry', None) or (lambda: sys.exit(c.main())))()")


def run(argv: list[str]) -> tuple[float, float, float]:
    """One child process: (CPU s, wall s, peak RSS MB)."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed ({status}): {' '.join(argv)}")
    return ru.ru_utime + ru.ru_stime, time.perf_counter() - t, ru.ru_maxrss / 1024


def stages(src: Path, data: Path, maps: list[str]) -> dict[str, Any]:
    """One in-process pass of the tree at `src`, split by stage (CPU seconds); run in a child process."""
    code = f"""
import sys, time, gc, json, orjson
sys.path.insert(0, {str(src / 'adapter')!r})
from pathlib import Path
from datetime import datetime, UTC
from cart_fhir.ingest.read import read_all
from cart_fhir.ingest.index import build_index
from cart_fhir.ingest.extract import Extractor
from cart_fhir.pipeline import Engine, RunResult
from cart_fhir.report import RunReport
try:  # the fast Observation reader (issue 18 item 1), in trees that have it
    from cart_fhir.ingest.fast import FastReader
except ImportError:
    FastReader = None
files = sorted(Path({str(data)!r}).rglob('*.ndjson'))
c = time.process_time
t = c()
for p in files:
    for line in p.read_bytes().splitlines():
        if line.strip():
            orjson.loads(line)
parse = c() - t
eng = Engine(strict=False, concept_maps=[(m, orjson.loads(Path(m).read_bytes())) for m in {maps!r}])
fast = FastReader(eng.terminology, eng.units) if FastReader is not None and getattr(eng, 'fast_read', 0) else None
out = {{}}
gc.disable()
t = c()
if hasattr(eng, 'read'):  # Engine.read: the fast reader makes each plain Observation's item as its line is parsed
    got = eng.read([str(p) for p in files])
    items = list(got)
    fast = getattr(got, 'reader', None)
else:
    items = list(read_all([str(p) for p in files]) if fast is None else fast.compact(read_all([str(p) for p in files])))
out['read'] = c() - t
report = RunReport()
t = c(); idx = build_index(items, report); out['index'] = c() - t
ex = Extractor(eng.terminology, eng.units, report)
t = c(); datas = [ex.patient(idx, k) for k in idx.by_patient]; out['extract'] = c() - t
t = c(); res = [eng.grade_patient(d, report) for d in datas]; out['grade'] = c() - t
rr = RunResult(res, report, eng.tables, eng.toxicities, eng.needs)
t = c(); w = eng.resources(rr, datetime(2026, 1, 2, tzinfo=UTC)); b = eng.bundle(w); out['output build'] = c() - t
t = c(); orjson.dumps(b); out['dumps'] = c() - t
out['total'] = sum(out.values())
out['parse'] = parse
if fast is not None:
    out['observations'] = {{'fast': fast.fast, 'fallback': fast.fallback}}
print(json.dumps(out))
"""
    return json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                     text=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="a folder of .ndjson files (cart-fhir synth --format ndjson)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ref", type=Path, help="another source tree to measure in the same rounds (before)")
    ap.add_argument("--stages", type=int, default=0, metavar="N",
                    help="also N in-process passes (fresh processes) split by stage; the min of each stage")
    ap.add_argument("--concept-map", action="append", default=[], metavar="FILE",
                    help="a site ConceptMap to grade with (cart-fhir synth --local-codes writes conceptmap.json)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    a = ap.parse_args()
    trees = {"after": HERE, **({"before": a.ref} if a.ref else {})}
    res: dict[str, dict[str, list[float]]] = {k: {"cpu": [], "wall": [], "rss": []} for k in [*trees, "parse"]}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.runs):
            for name, tree in trees.items():
                out = str(Path(tmp) / f"{name}.json")
                argv = [sys.executable, "-c", GRADE.format(src=str(tree / "adapter")), "grade", str(a.data),
                        "-o", out, "-q", *(x for m in a.concept_map for x in ("--concept-map", m))]
                for k, v in zip(("cpu", "wall", "rss"), run(argv), strict=True):
                    res[name][k].append(v)
            for k, v in zip(("cpu", "wall", "rss"), run([sys.executable, "-c", PARSE, str(a.data)]), strict=True):
                res["parse"][k].append(v)
    p_min, p_med = min(res["parse"]["cpu"]), statistics.median(res["parse"]["cpu"])
    report: dict[str, object] = {"runs": a.runs, "data": str(a.data), "raw": res}
    print(f"{'':8} {'CPU min':>8} {'median':>8} {'x parse min':>11} {'x median':>9} {'peak RSS MB':>11}")
    for name, r in res.items():
        cmin, cmed = min(r["cpu"]), statistics.median(r["cpu"])
        print(f"{name:8} {cmin:8.2f} {cmed:8.2f} {cmin / p_min:11.2f} {cmed / p_med:9.2f} {max(r['rss']):11.0f}")
    if a.stages:
        for name, tree in trees.items():
            passes = [stages(tree, a.data, a.concept_map) for _ in range(a.stages)]
            obs = passes[0].pop("observations", None)
            for p in passes[1:]:
                p.pop("observations", None)
            s = {k: min(p[k] for p in passes) for k in passes[0]}
            report[f"stages_{name}"] = {**s, **({"observations": obs} if obs else {})}
            parse = s.pop("parse")
            print(f"in-process {name}: parse {parse:.2f} s; "
                  + "; ".join(f"{k} {v:.2f} s ({v / parse:.2f}x)" for k, v in s.items()))
            if obs:  # Observations read on the fast path (ingest/fast.py) and by the extractor
                total = obs["fast"] + obs["fallback"]
                print(f"  Observations on the fast path: {obs['fast']} of {total} "
                      f"({100 * obs['fast'] / total if total else 0:.2f} %), {obs['fallback']} by the extractor")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
