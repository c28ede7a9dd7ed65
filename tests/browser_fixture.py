"""pytest fixtures for tests in a real browser: Debian's chromium (installed by apt-get when missing), driven
by Playwright for Python pointed at it, and axe-core from the npm registry (installed once into the cache).

Never `playwright install`: browsers that download themselves cannot be fetched here (and the system
browser gets security updates with the OS). With CI set, a browser that cannot be had FAILS the tests.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cache_install import COMPLETE, install_once, run_tool

CHROMIUM = os.environ.get("CART_FHIR_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling Google's hosts, which this closed network refuses.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
AXE_VERSION = "4.14.1"
APT_TIMEOUT_S = float(os.environ.get("CART_FHIR_APT_TIMEOUT", "900"))
NPM_TIMEOUT_S = float(os.environ.get("CART_FHIR_NPM_TIMEOUT", "300"))


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cart-fhir"


def artefact_dir() -> Path:
    """Screenshots and pages the browser tests save: CART_FHIR_ARTEFACTS, else a folder under the temp dir."""
    root = Path(os.environ.get("CART_FHIR_ARTEFACTS") or Path(tempfile.gettempdir()) / "cart-fhir-artefacts")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser unavailable (CI is set, so this fails instead of skipping): {reason}", pytrace=False)
    pytest.skip(f"browser unavailable: {reason}")


def ensure_chromium() -> str:
    """The system Chromium; installed with apt-get (as root) when it is missing. Returns its path."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"{CHROMIUM} is missing and apt-get cannot run here (needs root): "
                           "apt-get install chromium")
    _cache().mkdir(parents=True, exist_ok=True)
    with open(_cache() / "chromium-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install at a time across parallel pytest sessions
        if Path(CHROMIUM).exists():
            return CHROMIUM
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S,
                                      check=False)
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"`{' '.join(cmd)}` took longer than {APT_TIMEOUT_S:.0f} s") from exc
            if done.returncode != 0:
                tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
                raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{tail}")
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"apt-get installed chromium but {CHROMIUM} is not there")
    return CHROMIUM


def ensure_axe() -> Path:
    """axe-core's browser build (axe.min.js), installed from the npm registry into the user cache once."""
    target = _cache() / f"axe-core-{AXE_VERSION}"
    script = target / "node_modules" / "axe-core" / "axe.min.js"
    if (target / COMPLETE).exists() and script.exists():
        return script
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not on PATH: the accessibility check needs axe-core from the npm registry")

    def build(work: Path) -> None:
        (work / "package.json").write_text('{"private": true}')
        run_tool(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--ignore-scripts",
                  f"axe-core@{AXE_VERSION}"], work, NPM_TIMEOUT_S, RuntimeError)

    install_once(target, build)
    return script


@pytest.fixture(scope="session")
def chromium_path() -> str:
    try:
        return ensure_chromium()
    except RuntimeError as exc:
        _unavailable(str(exc))
        raise  # unreachable: _unavailable skips or fails


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[Any]:
    """One headless Chromium for the session (Playwright's sync API)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # the test extra was not installed
        _unavailable(f"playwright is not installed ({exc}); pip install -e '.[test]'")
        raise
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    """A fresh context and page; any request off loopback (or file:) is aborted and recorded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    blocked: list[str] = []

    def guard(route: Any) -> None:
        url = route.request.url
        if url.startswith(("file:", "data:", "about:", "http://127.0.0.1", "http://localhost")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    context.route("**/*", guard)
    pg = context.new_page()
    pg.blocked_requests = blocked  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture(scope="session")
def axe_script() -> str:
    try:
        return ensure_axe().read_text(encoding="utf-8")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(str(exc))
        raise


def axe_violations(page: Any, axe_source: str, impacts: tuple[str, ...] = ("serious", "critical")) -> list[Any]:
    """Run axe-core in the page; the violations of the given impacts (id, impact, help, first targets)."""
    page.add_script_tag(content=axe_source)
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "targets": [n["target"] for n in v["nodes"][:5]]}
            for v in result["violations"] if v.get("impact") in impacts]
