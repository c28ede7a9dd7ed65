"""Round trips and time per patient against a real FHIR server: read, grade, write back, twice.

Starts the test suite's FHIR server (tests/fhirserver, Medplum's engine; installed on first use), seeds
synthetic CAR-T patients with vitals every 4 hours, then runs `cart-fhir grade --all-infused
--write-back` twice and prints requests per patient (by method) and wall time, and checks that the second
run created nothing. Run on demand:

    python benchmarks/bench_server.py --patients 50 --days 14

Numbers describe cart-fhir's side plus an in-memory server on loopback; a production server (HAPI on
Postgres, an EHR's API) will answer slower, which is why the figure that carries over is the round trips.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fhir_server_fixture import running_server  # noqa: E402 - tests/ goes on the path first
from fhirbuild import PatientBuilder, bundle_of  # noqa: E402

from cart_fhir.cli import main  # noqa: E402

OUR_TYPES = ("Observation", "Condition", "AdverseEvent", "Provenance", "Device")


def patient(i: int, days: int) -> list[dict[str, Any]]:
    b = PatientBuilder(f"bench-{i}")
    for d in range(days):
        for h in ("02:00", "06:00", "10:00", "14:00", "18:00", "22:00"):
            fever = 38.6 + (i % 5) * 0.3 if 1 <= d <= 3 else 36.9
            b.temp(d, h, round(fever, 1))
            b.bp(d, h, 88 if d == 2 else 118, 55 if d == 2 else 72)
        b.ice(d, "12:00", 10 if d != 5 or i % 3 else 6)
    out = []
    for r in b.resources:
        if r["resourceType"] != "Patient":
            r["id"] = f"{b.pid}-{r['id']}"
        out.append(r)
    return out


def run(base: str, server: Any, label: str) -> dict[str, Any]:
    before = server.stats()["by_method"]
    start = time.perf_counter()
    code = main(["grade", "--server", base, "--all-infused", "--write-back", "-q"])
    elapsed = time.perf_counter() - start
    after = server.stats()["by_method"]
    used = {m: after.get(m, 0) - before.get(m, 0) for m in sorted(set(after) | set(before))}
    counts = {t: server.count(t) for t in OUR_TYPES}
    print(f"{label}: exit {code}, {elapsed:.2f} s, requests {used}, stored {counts}")
    return {"seconds": elapsed, "requests": used, "counts": counts}


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=50)
    ap.add_argument("--days", type=int, default=14)
    args = ap.parse_args()
    with running_server() as server:
        server.reset()
        resources = [r for i in range(args.patients) for r in patient(i, args.days)]
        for i in range(0, len(resources), 500):
            server.load(bundle_of(resources[i:i + 500], "transaction"))
        print(f"seeded {args.patients} patients, {len(resources)} resources")
        first = run(server.base_url, server, "first run ")
        second = run(server.base_url, server, "second run")
        n = args.patients
        for label, r in (("first", first), ("second", second)):
            per = {m: round(v / n, 2) for m, v in r["requests"].items()}
            print(f"{label}: {per} requests per patient, {1000 * r['seconds'] / n:.0f} ms per patient")
        assert second["counts"] == first["counts"], "the second run must create nothing"
        print("second run created nothing: counts identical")


if __name__ == "__main__":
    main_()
