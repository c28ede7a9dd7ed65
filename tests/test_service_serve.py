"""`cart-fhir serve` as the README starts it: gunicorn on a free port, real HTTP, then malformed requests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import requests

EXAMPLE = Path("examples/crs-grade2-tocilizumab.json")
FHIR = "application/fhir+json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cart_fhir() -> list[str]:
    script = Path(sys.executable).with_name("cart-fhir")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cart_fhir.cli"]


@pytest.fixture(scope="module")
def service():
    port = _free_port()
    env = {**os.environ, "CART_FHIR_AUTH": "off", "CART_FHIR_UPSTREAM": "off",
           "CART_FHIR_MAX_BODY_BYTES": str(5 * 1024 * 1024)}
    proc = subprocess.Popen([*_cart_fhir(), "serve", "--port", str(port), "--workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"cart-fhir serve exited: {proc.stdout.read().decode(errors='replace')[-3000:]}")
        try:
            if requests.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    else:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        pytest.fail("cart-fhir serve did not answer /health within 60 s")
    yield base, proc
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.stdout.close()


def test_served_by_gunicorn_and_grades_the_example(service):
    base, _ = service
    resp = requests.post(f"{base}/fhir/$grade-toxicity", data=EXAMPLE.read_bytes(),
                         headers={"Content-Type": FHIR}, timeout=60)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith(FHIR)
    assert "gunicorn" in resp.headers.get("Server", "")
    body = resp.json()
    codes = {e["resource"]["code"]["coding"][0]["code"] for e in body["entry"]
             if e["resource"]["resourceType"] == "Observation"}
    assert "crs-grade-astct" in codes


@pytest.mark.parametrize("data,content_type,status", [
    pytest.param(b'{"resourceType": ', FHIR, 400, id="broken-json"),
    pytest.param(orjson.dumps({"resourceType": "Patient"}), FHIR, 400, id="wrong-resource-type"),
    pytest.param(b"x" * (20 * 1024 * 1024), FHIR, 413, id="20-MB"),
    pytest.param(b"hello", "text/plain", 415, id="wrong-content-type"),
])
def test_malformed_payloads_and_still_healthy(service, data, content_type, status):
    base, proc = service
    try:
        resp = requests.post(f"{base}/fhir/$grade-toxicity", data=data, headers={"Content-Type": content_type},
                             timeout=60)
        assert resp.status_code == status
        assert resp.json()["resourceType"] == "OperationOutcome"
    except requests.ConnectionError:
        # gunicorn may close the socket while a client is still sending a body it already refused (413);
        # what matters is that the service stays up.
        assert status == 413
    assert requests.get(f"{base}/health", timeout=5).status_code == 200
    assert proc.poll() is None


def test_refuses_to_start_without_auth_material():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CART_FHIR_")}
    env["CART_FHIR_UPSTREAM"] = "off"
    done = subprocess.run([*_cart_fhir(), "serve", "--port", str(_free_port())], env=env, capture_output=True,
                          check=False, timeout=60)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "CART_FHIR_AUDIENCE" in err and "CART_FHIR_JWKS" in err and "CART_FHIR_ISSUERS" in err
