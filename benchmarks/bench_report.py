"""Timeline page cost for one 30-day patient: render time and page size (`cart-fhir report`), and the SMART
app's time from the EHR launch redirect to the drawn page in headless Chromium.

    python benchmarks/bench_report.py [--days 30] [--repeat 7] [--no-browser]

1. Offline: a seeded synthetic patient (`cart-fhir synth --patients 1 --days D`), graded once; then the
   view model and HTML are built --repeat times (median and best), plus read+grade+render end to end. The
   page's size is reported raw and gzip-compressed (what gunicorn behind a proxy usually sends).
2. The app (unless --no-browser): the test suite's FHIR server (tests/fhirserver; SMART authorization
   endpoint auto-consents) holds the patient; the service runs on loopback (werkzeug, threaded) with the
   app configured; Chromium (Debian's, as the tests use it) opens /app/launch?iss=...&launch=... and the
   clock stops when the timeline's first grade cell is in the DOM and the load event has fired. Each run
   is a fresh browser context (new session, new token). The goal in issue 17: under 1 s, page < 500 KB.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cart_fhir.ingest.read import read_paths  # noqa: E402
from cart_fhir.pipeline import Engine  # noqa: E402
from cart_fhir.view.render import patient_views, report_html  # noqa: E402


def synth(folder: Path, days: int) -> Path:
    subprocess.run([sys.executable, "-m", "cart_fhir.cli", "synth", "--patients", "1", "--seed", "3", "--days",
                    str(days), "-o", str(folder)], check=True, capture_output=True)
    return next((folder / "fhir").glob("*.json"))


def offline(engine: Engine, path: Path, repeat: int) -> None:
    import orjson

    resources = len(orjson.loads(path.read_bytes())["entry"])
    result = engine.grade(read_paths([str(path)]))
    times, html = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        html = report_html(patient_views(engine, result), with_index=False)
        times.append(time.perf_counter() - t0)
    e2e = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        report_html(patient_views(engine, engine.grade(read_paths([str(path)]))), with_index=False)
        e2e.append(time.perf_counter() - t0)
    raw = html.encode()
    cells = html.count('class="cell')
    print(f"patient: {resources} input resources ({path.name})")
    print(f"render (view model + HTML): median {1000 * statistics.median(times):.1f} ms, best "
          f"{1000 * min(times):.1f} ms over {repeat}")
    print(f"read + grade + render:     median {1000 * statistics.median(e2e):.1f} ms, best {1000 * min(e2e):.1f} ms")
    print(f"page: {len(raw) / 1024:.1f} KB ({len(gzip.compress(raw)) / 1024:.1f} KB gzip), "
          f"{cells} grade cells")


def app_launch(engine: Engine, path: Path, repeat: int) -> None:
    import orjson
    from browser_fixture import CHROMIUM_ARGS, ensure_chromium
    from fhir_server_fixture import running_server
    from playwright.sync_api import sync_playwright
    from test_app_launch import CLIENT, storable, transaction
    from werkzeug.serving import make_server

    from cart_fhir.service.app import create_app

    bundle = orjson.loads(path.read_bytes())
    pid = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    with running_server() as fhir:
        fhir.reset()
        fhir.load(transaction(storable(bundle)))
        holder: dict[str, Any] = {}
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # its request log prints code and state
        server = make_server("127.0.0.1", 0, lambda env, start: holder["app"](env, start), threaded=True)
        base = f"http://127.0.0.1:{server.server_port}"
        holder["app"] = create_app({"auth": False, "upstream": False, "tables": engine.tables,
                                    "app_client_id": CLIENT, "app_redirect_uri": f"{base}/app/callback"})
        threading.Thread(target=server.serve_forever, daemon=True).start()
        fhir.configure(smart_app={"client_id": CLIENT, "redirect_uris": [f"{base}/app/callback"]})
        times, size = [], 0
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=ensure_chromium(), args=CHROMIUM_ARGS)
            for i in range(repeat + 1):  # the first run warms the server's worker up; not counted
                ctx = browser.new_context()
                page = ctx.new_page()
                launch = fhir.launch(pid)
                t0 = time.perf_counter()
                page.goto(f"{base}/app/launch?iss={fhir.base_url}&launch={launch}", wait_until="load")
                page.wait_for_selector(".cell")
                elapsed = time.perf_counter() - t0
                size = len(page.content().encode())
                if i:
                    times.append(elapsed)
                ctx.close()
            browser.close()
        server.shutdown()
    print(f"SMART EHR launch -> drawn page (discovery, authorize, token, $everything, grade, render, "
          f"draw): median {1000 * statistics.median(times):.0f} ms, best {1000 * min(times):.0f} ms over "
          f"{repeat}; page {size / 1024:.1f} KB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-browser", action="store_true", help="offline render only")
    args = ap.parse_args()
    engine = Engine()
    with tempfile.TemporaryDirectory() as tmp:
        path = synth(Path(tmp) / "synth", args.days)
        offline(engine, path, args.repeat)
        if not args.no_browser:
            app_launch(engine, path, args.repeat)


if __name__ == "__main__":
    main()
