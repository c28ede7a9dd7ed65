"""Throughput and latency of `cart-fhir serve` on loopback, and /health under idle and slow clients (issue 15).

Starts the service as a newcomer would (no settings: bundle-only, auth off, 127.0.0.1), then for each
concurrency measures `$grade-toxicity` on one synthetic 30-day patient and `/health`: requests per second,
p50 and p99. Then the issue's load scenario: 50 idle connections and 20 slow-body clients open while one
client grades in a loop and another samples /health. Everything is bounded in time and count and stays
on 127.0.0.1. Run on demand:

    python benchmarks/bench_service.py                   # this tree
    python benchmarks/bench_service.py --ref 6c5b445     # another commit, for a before/after

`--ref` exports that commit's adapter/, mappings/ and profiles/ (git archive) to a temporary folder and runs
its `cart-fhir serve` with CART_FHIR_AUTH=off CART_FHIR_UPSTREAM=off (what it needed to start).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
FHIR = "application/fhir+json"


def one_patient(days: int = 30) -> bytes:
    from cart_fhir.synth.generate import cohort

    _, resources = next(cohort(1, seed=1, days=days))
    return orjson.dumps({"resourceType": "Bundle", "type": "collection",
                         "entry": [{"resource": r} for r in resources]})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(ref: str | None, workers: int | None) -> Iterator[str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CART_FHIR_")}
    extra = ["--workers", str(workers)] if workers else []
    with tempfile.TemporaryDirectory() as tmp:
        if ref:
            archive = subprocess.run(["git", "archive", ref, "adapter", "mappings", "profiles"], cwd=ROOT,
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            env.update(CART_FHIR_AUTH="off", CART_FHIR_UPSTREAM="off", PYTHONPATH=str(Path(tmp) / "adapter"))
            cmd = [sys.executable, "-c", "import sys; from cart_fhir.cli import main; sys.exit(main(sys.argv[1:]))"]
        else:
            cmd = [sys.executable, "-m", "cart_fhir.cli"]
        log = open(Path(tmp) / "serve.log", "wb")  # closed below
        proc = subprocess.Popen([*cmd, "serve", "--port", str(port), *extra], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp if ref else ROOT)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if requests.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    time.sleep(0.2)
            else:
                raise SystemExit("the service did not start: " + (Path(tmp) / "serve.log").read_text()[-2000:])
            yield base
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=40)
            log.close()


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def load(call: Callable[[requests.Session], int], concurrency: int, seconds: float) -> dict[str, float]:
    """`concurrency` clients, each with its own keep-alive session, calling for `seconds`."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        session = requests.Session()
        mine, bad = [], 0
        while time.perf_counter() < stop:
            start = time.perf_counter()
            status = call(session)
            mine.append(time.perf_counter() - start)
            bad += status != 200
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    begin = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - begin
    return {"rps": len(latencies) / wall, "p50_ms": 1000 * _pct(latencies, 50), "p99_ms": 1000 * _pct(latencies, 99),
            "n": len(latencies), "errors": errors[0]}


def hostile_scenario(base: str, body: bytes, seconds: float) -> dict[str, float]:
    """Issue 15: 50 idle connections + 20 slow-body clients while a normal client grades; /health sampled."""
    host, port = "127.0.0.1", int(base.rsplit(":", 1)[1])
    sockets = [socket.create_connection((host, port), timeout=30) for _ in range(50)]
    for _ in range(20):
        s = socket.create_connection((host, port), timeout=30)
        s.sendall(b"POST /fhir/$grade-toxicity HTTP/1.1\r\nHost: a\r\nContent-Type: application/fhir+json\r\n"
                  b"Content-Length: 1000000\r\n\r\n{\"resourceType\":")
        sockets.append(s)
    stop = time.perf_counter() + seconds
    graded = {"ok": 0, "other": 0}

    def grader() -> None:
        session = requests.Session()
        while time.perf_counter() < stop:
            try:
                ok = session.post(f"{base}/fhir/$grade-toxicity", data=body, headers={"Content-Type": FHIR},
                                  timeout=30).status_code == 200
            except requests.RequestException:
                ok = False
            graded["ok" if ok else "other"] += 1

    def trickle() -> None:  # the slow clients send a byte now and then
        while time.perf_counter() < stop:
            for s in sockets[50:]:
                try:
                    s.send(b" ")
                except OSError:
                    pass
            time.sleep(1)

    threads = [threading.Thread(target=grader), threading.Thread(target=trickle)]
    for t in threads:
        t.start()
    health: list[float] = []
    failures = 0
    session = requests.Session()
    while time.perf_counter() < stop:
        start = time.perf_counter()
        try:
            failures += session.get(f"{base}/health", timeout=30).status_code != 200
        except requests.RequestException:
            failures += 1
        health.append(time.perf_counter() - start)
        time.sleep(0.02)
    for t in threads:
        t.join()
    for s in sockets:
        s.close()
    return {"health_p50_ms": 1000 * _pct(health, 50), "health_p99_ms": 1000 * _pct(health, 99),
            "health_max_ms": 1000 * max(health), "health_n": len(health), "health_failures": failures,
            "graded_ok": graded["ok"], "graded_other": graded["other"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", help="a git commit to measure instead of this tree")
    p.add_argument("--seconds", type=float, default=8.0, help="per measurement (default 8)")
    p.add_argument("--workers", type=int, help="worker processes (default: the service's default)")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--no-hostile", action="store_true", help="skip the idle/slow-client scenario")
    args = p.parse_args()
    body = one_patient()
    resources = body.count(b'"resourceType"') - 1
    print(f"one 30-day patient: {len(body) / 1024:.0f} KiB, {resources} resources")
    with served(args.ref, args.workers) as base:
        def grade(s: requests.Session) -> int:
            return s.post(f"{base}/fhir/$grade-toxicity", data=body, headers={"Content-Type": FHIR},
                          timeout=60).status_code

        def health(s: requests.Session) -> int:
            return s.get(f"{base}/health", timeout=30).status_code

        grade(requests.Session())  # warm up both workers' first request
        grade(requests.Session())
        for name, call in (("$grade-toxicity", grade), ("/health", health)):
            for c in (int(x) for x in args.concurrency.split(",")):
                r = load(call, c, args.seconds)
                print(f"{name:16} c={c:<3} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                      f"p99 {r['p99_ms']:7.1f} ms  (n={r['n']}, non-200: {r['errors']})", flush=True)
        if not args.no_hostile:
            r = hostile_scenario(base, body, max(args.seconds, 10.0))
            print("50 idle + 20 slow-body clients, one client grading: "
                  + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
