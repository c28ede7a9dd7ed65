"""The SMART timeline app (/app/): EHR launch in headless Chromium against the real FHIR test server (its
authorization endpoint consents at once and issues the launch context), standalone launch, the v1 scope
fallback, a confidential client, and every way a launch can go wrong. The token never reaches the browser.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from browser_fixture import artefact_dir
from test_cli import EXAMPLES
from test_report_browser import _dom_daily
from timeline_helpers import bundle_daily_grades, render_and_grade
from werkzeug.serving import make_server

from cart_fhir.cli_synth import synth_command
from cart_fhir.errors import ConfigError
from cart_fhir.service.app import create_app

CLIENT = "cart-timeline"


@contextlib.contextmanager
def serving(engine: Any, **app_settings: Any) -> Iterator[tuple[str, Any]]:
    """The service on a loopback port in a thread; the app's redirect URI names that port."""
    holder: dict[str, Any] = {}
    # werkzeug's request log prints query strings (the authorization code and state): keep it quiet.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, lambda env, start: holder["app"](env, start), threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    settings = {"testing": True, "auth": False, "upstream": False, "tables": engine.tables,
                "app_client_id": CLIENT, "app_redirect_uri": f"{base}/app/callback", **app_settings}
    holder["app"] = create_app(settings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base, holder["app"]
    finally:
        server.shutdown()
        thread.join(5)


def transaction(bundle: dict[str, Any]) -> dict[str, Any]:
    """A collection Bundle as a transaction of PUTs by id (ids kept; urn:uuid references resolve)."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": e.get("fullUrl"), "resource": e["resource"],
         "request": {"method": "PUT", "url": f"{e['resource']['resourceType']}/{e['resource']['id']}"}}
        for e in bundle["entry"]]}


def storable(bundle: dict[str, Any]) -> dict[str, Any]:
    """The server enforces invariant mad-1 (dosage needs dose or rate), which route-only dosages (one
    example, synthetic antipyretics) break: those dosages are dropped; the caller grades what is stored."""
    for e in bundle["entry"]:
        dosage = e["resource"].get("dosage")
        if e["resource"]["resourceType"] == "MedicationAdministration" and dosage and not (
                "dose" in dosage or any(k.startswith("rate") for k in dosage)):
            del e["resource"]["dosage"]
    return bundle


def seed(fhir: Any, engine: Any, path: Path, tmp_path: Path) -> tuple[str, dict[str, Any], str]:
    """Load one patient's Bundle into the server; (patient id, expected daily grades as `cart-fhir grade`
    writes them, the first infusion's reference)."""
    bundle = storable(json.loads(path.read_text()))
    fhir.load(transaction(bundle))
    path = tmp_path / f"stored-{path.name}"
    path.write_text(json.dumps(bundle))
    html, graded = render_and_grade(engine, [str(path)])
    pid = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    infusion = re.search(r'data-infusion="([^"]+)"', html)
    assert infusion is not None
    return pid, bundle_daily_grades(graded), infusion.group(1)


def smart_app(fhir: Any, base: str, **extra: Any) -> None:
    fhir.configure(smart_app={"client_id": CLIENT, "redirect_uris": [f"{base}/app/callback"], **extra})


def _synthetic(tmp_path: Path) -> Path:
    assert synth_command(1, 5, str(tmp_path / "synth"), "bundle", 30) == 0
    return next((tmp_path / "synth" / "fhir").glob("*.json"))


@pytest.mark.parametrize("source", [*(pytest.param(p, id=p.stem) for p in EXAMPLES),
                                    pytest.param(None, id="synthetic")])
def test_ehr_launch_draws_the_launched_patients_timeline(fhir, engine, page, tmp_path, source) -> None:
    path = source if source is not None else _synthetic(tmp_path)
    pid, expected, infusion = seed(fhir, engine, path, tmp_path)
    with serving(engine) as (base, _):
        smart_app(fhir, base)
        # As from a CDS card: the EHR passes the card's appContext through the launch.
        context = json.dumps({"patient": pid, "infusion": infusion, "toxicity": "crs"})
        launch = fhir.launch(pid, app_context=context)
        page.goto(f"{base}/app/launch?iss={fhir.base_url}&launch={launch}")
        page.wait_for_selector("section.patient[data-patient]")
        assert page.url == f"{base}/app/"
        assert page.get_attribute("section.course[data-focus]", "data-infusion") == infusion
        assert page.eval_on_selector_all("section.patient", "s => s.map(x => x.dataset.patient)") == [pid]
        assert _dom_daily(page) == expected
        # The page's own script runs under its CSP (hash-allowed): clicking a cell shows its details.
        first = page.locator(".cell").first
        first.click()
        assert "Decided by" in page.locator(".panel").first.inner_text() or \
            "Missing input" in page.locator(".panel").first.inner_text()
        # No token visible to page scripts: not in the HTML, not in document.cookie, not in web storage.
        tokens = fhir.tokens()
        assert len(tokens) == 1
        html = page.content()
        assert not any(t in html for t in tokens)
        assert page.evaluate("() => document.cookie") == ""
        assert page.evaluate("() => localStorage.length + sessionStorage.length") == 0
        cookie = next(c for c in page.context.cookies() if c["name"] == "cart_fhir_app")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["value"] not in tokens
        assert page.blocked_requests == []  # type: ignore[attr-defined]
        stats = fhir.stats()
        assert stats["authorize_requests"] == 1 and stats["tokens_issued"] == 1
        shot = artefact_dir() / f"app-ehr-launch-{path.stem}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")


def _follow(session: requests.Session, url: str) -> requests.Response:
    return session.get(url, timeout=60, allow_redirects=True)


def test_standalone_launch_confidential_client_and_v1_scopes(fhir, engine, tmp_path) -> None:
    pid, expected, _ = seed(fhir, engine, EXAMPLES[0], tmp_path)
    v1 = ["openid", "fhirUser", "launch", "launch/patient", "patient/*.read"]
    with serving(engine, app_client_secret="s3cret", app_standalone_iss=fhir.base_url,
                 app_issuers=fhir.base_url) as (base, _):
        smart_app(fhir, base, client_secret="s3cret", patient=pid, scopes_supported=v1)
        with requests.Session() as s:
            first = s.get(f"{base}/app/launch", timeout=30, allow_redirects=False)
            assert first.status_code == 302
            q = parse_qs(urlsplit(first.headers["Location"]).query)
            assert q["scope"] == ["launch/patient openid fhirUser patient/*.read"]  # v1 fallback
            assert q["code_challenge_method"] == ["S256"] and len(q["code_challenge"][0]) == 43
            assert q["aud"] == [fhir.base_url] and "launch" not in q
            page = _follow(s, first.headers["Location"])
    assert page.status_code == 200, page.text[:500]
    assert f'data-patient="{pid}"' in page.text
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"
    assert not any(t in page.text for t in fhir.tokens())


def test_launch_failures_are_pages_that_say_why(fhir, engine, tmp_path) -> None:
    pid, _, _ = seed(fhir, engine, EXAMPLES[0], tmp_path)
    with serving(engine, app_issuers=fhir.base_url) as (base, _):
        smart_app(fhir, base)
        with requests.Session() as s:
            # Not signed in.
            r = s.get(f"{base}/app/", timeout=30)
            assert r.status_code == 401 and "launch the app again" in r.text and r.headers["Content-Type"].startswith(
                "text/html")
            # An iss that is not allowed, and one that is not a URL.
            r = s.get(f"{base}/app/launch", params={"iss": "https://evil.example/fhir", "launch": "x"}, timeout=30)
            assert r.status_code == 403 and "not allowed" in r.text
            r = s.get(f"{base}/app/launch", params={"iss": "javascript:alert(1)", "launch": "x"}, timeout=30)
            assert r.status_code == 400
            # A callback with no launch in progress, then one whose state does not match.
            r = s.get(f"{base}/app/callback", params={"code": "c", "state": "s"}, timeout=30)
            assert r.status_code == 400 and "no launch in progress" in r.text
            launch = fhir.launch(pid)
            first = s.get(f"{base}/app/launch", params={"iss": fhir.base_url, "launch": launch}, timeout=30,
                          allow_redirects=False)
            auth = s.get(first.headers["Location"], timeout=30, allow_redirects=False)
            back = parse_qs(urlsplit(auth.headers["Location"]).query)
            r = s.get(f"{base}/app/callback", params={"code": back["code"][0], "state": "forged"}, timeout=30)
            assert r.status_code == 400 and "state mismatch" in r.text
            # The real answer still works once; replaying it finds no launch (single use).
            r = s.get(auth.headers["Location"], timeout=60)
            assert r.status_code == 200 and f'data-patient="{pid}"' in r.text
            r = s.get(auth.headers["Location"], timeout=30, allow_redirects=False)
            assert r.status_code == 400
            # The EHR refuses: an unknown launch id comes back as an error with our state.
            first = s.get(f"{base}/app/launch", params={"iss": fhir.base_url, "launch": "unknown"}, timeout=30,
                          allow_redirects=False)
            r = _follow(s, first.headers["Location"])
            assert r.status_code == 403 and "did not authorize" in r.text


def test_discovery_without_s256_or_endpoints_is_refused(fhir, engine, tmp_path) -> None:
    with serving(engine) as (base, _):
        # No SMART configured on the server at all: discovery answers 404.
        r = requests.get(f"{base}/app/launch", params={"iss": fhir.base_url, "launch": "x"}, timeout=30)
        assert r.status_code == 502 and "SMART configuration" in r.text


def test_not_configured_means_no_app_routes(engine) -> None:
    app = create_app({"testing": True, "auth": False, "upstream": False, "tables": engine.tables})
    assert app.test_client().get("/app/launch?iss=https://x/fhir&launch=1").status_code == 404


@pytest.mark.parametrize("settings, message", [
    pytest.param({"app_client_id": "x"}, "CART_FHIR_APP_REDIRECT_URI", id="no-redirect-uri"),
    pytest.param({"app_redirect_uri": "https://svc.example/app/callback"}, "CART_FHIR_APP_CLIENT_ID",
                 id="no-client-id"),
    pytest.param({"app_client_secret": "s"}, "CART_FHIR_APP_CLIENT_ID", id="secret-only"),
    pytest.param({"app_client_id": "x", "app_redirect_uri": "https://svc.example/elsewhere"},
                 "CART_FHIR_APP_REDIRECT_URI", id="redirect-not-our-callback"),
    pytest.param({"app_client_id": "x", "app_redirect_uri": "https://svc.example/app/callback",
                  "app_client_secret": "s"}, "CART_FHIR_APP_ISSUERS", id="secret-needs-an-issuer-list"),
])
def test_configured_but_incomplete_refuses_to_start(engine, settings, message) -> None:
    with pytest.raises(ConfigError, match=message):
        create_app({"testing": True, "auth": False, "upstream": False, "tables": engine.tables, **settings})


def test_environment_configures_the_app(engine, monkeypatch) -> None:
    monkeypatch.setenv("CART_FHIR_APP_CLIENT_ID", "env-client")
    monkeypatch.setenv("CART_FHIR_APP_REDIRECT_URI", "https://svc.example/app/callback")
    app = create_app({"testing": True, "auth": False, "upstream": False, "tables": engine.tables})
    r = app.test_client().get("/app/")
    assert r.status_code == 401 and r.mimetype == "text/html"


@pytest.mark.parametrize("settings, link", [
    pytest.param({"app_client_id": CLIENT, "app_redirect_uri": "https://svc.example/app/callback"},
                 "http://localhost/app/launch", id="own-app"),
    pytest.param({"app_client_id": CLIENT, "app_redirect_uri": "https://svc.example/app/callback",
                  "timeline_url": "https://apps.example.org/timeline/launch"},
                 "https://apps.example.org/timeline/launch", id="explicit-setting-wins"),
    pytest.param({}, None, id="no-app-no-link"),
])
def test_cds_card_link_launches_the_timeline_app(engine, settings, link) -> None:
    from test_service_cdshooks import grade2_patient, hook_call, patient_prefetch

    app = create_app({"testing": True, "auth": False, "upstream": False, "tables": engine.tables, **settings})
    r = app.test_client().post("/cds-services/cart-toxicity",
                               json=hook_call(prefetch=patient_prefetch(grade2_patient())))
    assert r.status_code == 200, r.json
    [card] = r.json["cards"]
    if link is None:
        assert card["links"] == []
    else:
        [got] = card["links"]
        assert (got["type"], got["url"]) == ("smart", link)
        assert json.loads(got["appContext"])["patient"] == "p1"


def test_sessions_work_across_gunicorn_workers(fhir, engine, tmp_path) -> None:
    """`cart-fhir serve` with two workers: a launch, its callback and the page may each land on either worker
    (the session folder and key are made before gunicorn forks)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    pid, _, _ = seed(fhir, engine, EXAMPLES[0], tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    smart_app(fhir, base)
    env = {**os.environ, "CART_FHIR_AUTH": "off", "CART_FHIR_UPSTREAM": "off", "CART_FHIR_APP_CLIENT_ID": CLIENT,
           "CART_FHIR_APP_REDIRECT_URI": f"{base}/app/callback", "CART_FHIR_APP_ISSUERS": fhir.base_url}
    entry = Path(sys.executable).parent / "cart-fhir"
    cmd = [str(entry)] if entry.exists() else [sys.executable, "-m", "cart_fhir.cli"]
    proc = subprocess.Popen([*cmd, "serve", "--port", str(port), "--workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(f"{base}/health", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.2)
        pages = []
        for _ in range(6):
            with requests.Session() as s:
                r = s.get(f"{base}/app/launch", params={"iss": fhir.base_url, "launch": fhir.launch(pid)}, timeout=60)
                pages.append(r.status_code == 200 and f'data-patient="{pid}"' in r.text)
                pages.extend(s.get(f"{base}/app/", timeout=60).status_code == 200 for _ in range(3))
        assert all(pages) and len(pages) == 24
    finally:
        proc.terminate()
        log = proc.communicate(timeout=30)[0].decode()
    # The log names paths and statuses, never a token, code, state or the patient.
    assert "/app/callback" in log and "code=" not in log and pid not in log
    assert not any(t in log for t in fhir.tokens())


def test_app_page_accessibility(fhir, engine, browser, axe_script, tmp_path) -> None:
    """axe-core on the page as the app serves it (its CSP bypassed only so that axe can be injected)."""
    from browser_fixture import axe_violations

    pid, _, _ = seed(fhir, engine, EXAMPLES[1], tmp_path)
    with serving(engine) as (base, _):
        smart_app(fhir, base)
        context = browser.new_context(bypass_csp=True)
        try:
            page = context.new_page()
            page.goto(f"{base}/app/launch?iss={fhir.base_url}&launch={fhir.launch(pid)}")
            page.wait_for_selector(".cell")
            page.locator(".cell").nth(3).click()
            violations = axe_violations(page, axe_script)
        finally:
            context.close()
    assert violations == [], json.dumps(violations, indent=1)
