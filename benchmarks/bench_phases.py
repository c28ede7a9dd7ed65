"""Issue 18: where a real `cart-fhir grade DIR -o OUT -q` process spends its CPU, phase by phase.

bench_ratio.py --stages times the stages of an in-process pass it assembles itself; this runs the CLI's own
`main()` and wraps the engine's entry points, so the figures include everything the command does (imports,
building the Engine, grading, building the output, writing it, the run report):

    python benchmarks/bench_phases.py /tmp/d200/fhir [--runs 3]

Prints, per run, CPU seconds of: imports, Engine(), Engine.grade (read, index, extract, graders),
Engine.resources (output build), and the rest (bundle dumps, writing, run report). Unset
PYTHONDONTWRITEBYTECODE first, or every run compiles the modules again.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
CHILD = r"""
import functools, sys, time
t0 = time.process_time()
sys.path.insert(0, {src!r})
import cart_fhir.cli as cli
import cart_fhir.pipeline as pipeline
imports = time.process_time() - t0
spent = {{}}

def timed(owner, name, label):
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.process_time() - t
    setattr(owner, name, wrapper)

timed(pipeline.Engine, "__init__", "Engine()")
timed(pipeline.Engine, "grade", "grade")
timed(pipeline.Engine, "resources", "resources")
sys.argv = ["cart-fhir", "grade", {data!r}, "-o", {out!r}, "-q"]
try:
    cli.main()
except SystemExit:
    pass
total = time.process_time() - t0
rest = total - imports - sum(spent.values())
print(f"imports {{imports:.3f}}  " + "  ".join(f"{{k}} {{v:.3f}}" for k, v in spent.items())
      + f"  rest {{rest:.3f}}  total {{total:.3f}}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="a folder of .ndjson files (cart-fhir synth --format ndjson)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--src", type=Path, default=HERE, help="the source tree to measure (default: this one)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.runs):
            code = CHILD.format(src=str(a.src / "adapter"), data=str(a.data), out=str(Path(tmp) / "out.json"))
            subprocess.run([sys.executable, "-c", code], check=True)


if __name__ == "__main__":
    main()
