"""`cart-fhir serve` under gunicorn with real HTTP on 127.0.0.1: out of the box, the HTTP layer's own answers,
slow and idle clients, a hung upstream, and SMART discovery read by a real SMART client (fhirclient).

Every load here is bounded in count and time and stays on loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import requests
from hung import hung_server
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

EXAMPLE = Path("examples/crs-grade2-tocilizumab.json")
FHIR = "application/fhir+json"
READ = "system/Observation.rs system/Condition.rs system/AdverseEvent.rs system/Patient.rs"
SECRET = "MRN-4711-secret"  # put in paths and queries: must never reach a log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cart_fhir() -> list[str]:
    script = Path(sys.executable).with_name("cart-fhir")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cart_fhir.cli"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CART_FHIR_")}
    env.update(extra)
    return env


class Served:
    def __init__(self, base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.base, self.proc, self.log = base, proc, log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _start(env: dict[str, str], log: Path, *args: str, port: int | None = None) -> Iterator[Served]:
    port = port or _free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([*_cart_fhir(), "serve", "--port", str(port), "--workers", "2", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"cart-fhir serve exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        pytest.fail("cart-fhir serve did not answer /health within 60 s")
    yield Served(base, proc, log)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Served]:
    """Out of the box: no CART_FHIR_* setting at all; short read budgets so the slow-client tests are quick."""
    log = tmp_path_factory.mktemp("open") / "serve.log"
    yield from _start(_clean_env(CART_FHIR_MAX_BODY_BYTES=str(5 * 1024 * 1024)), log,
                      "--header-timeout", "2", "--body-timeout", "3")


# ---- a token server and a SMART-configured instance with a hung upstream --------------------------

class TokenServer:
    """A SMART Backend Services token endpoint on loopback: client_credentials with a JWT assertion."""

    def __init__(self, key: Any, audience: str) -> None:
        self.key, self.audience = key, audience
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/token"
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def app(self, environ: Any, start_response: Any) -> Any:
        req = Request(environ)
        form = req.form
        if req.method != "POST" or form.get("grant_type") != "client_credentials" \
                or form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" \
                or not form.get("client_assertion"):
            return Response('{"error": "invalid_client"}', 400, mimetype="application/json")(environ, start_response)
        now = int(time.time())
        access = jwt.encode({"iss": self.issuer, "sub": "registry", "aud": self.audience, "iat": now,
                             "exp": now + 300, "jti": str(uuid.uuid4()), "scope": form.get("scope", "")},
                            self.key, algorithm="RS384", headers={"kid": "rsa-1"})
        body = orjson.dumps({"access_token": access, "token_type": "bearer", "expires_in": 300,
                             "scope": form.get("scope", "")})
        return Response(body, mimetype="application/json")(environ, start_response)


@pytest.fixture(scope="module")
def smart_service(tmp_path_factory) -> Iterator[tuple[Served, TokenServer]]:
    from test_service_auth import RSA_KEY, _jwk

    folder = tmp_path_factory.mktemp("smart")
    jwks = folder / "jwks.json"
    jwks.write_bytes(orjson.dumps({"keys": [_jwk(RSA_KEY, "rsa-1", "RS384")]}))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    tokens = TokenServer(RSA_KEY, audience=base)
    tokens.thread.start()
    with hung_server() as upstream:
        env = _clean_env(CART_FHIR_AUTH="on", CART_FHIR_AUDIENCE=base, CART_FHIR_JWKS=str(jwks),
                         CART_FHIR_ISSUERS=tokens.issuer, CART_FHIR_SMART_TOKEN_ENDPOINT=tokens.url,
                         CART_FHIR_SERVER=upstream, CART_FHIR_DEADLINE="3")
        for served in _start(env, folder / "serve.log", port=port):
            yield served, tokens
    tokens.server.shutdown()


def _token(tokens: TokenServer, scope: str = READ) -> str:
    return requests.post(tokens.url, data={
        "grant_type": "client_credentials", "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": "x.y.z"}, timeout=10).json()["access_token"]


# ---- out of the box ------------------------------------------------------------------------------

def test_out_of_the_box_bundle_only_on_loopback_with_auth_off_and_says_so(service):
    resp = requests.post(f"{service.base}/fhir/$grade-toxicity", data=EXAMPLE.read_bytes(),
                         headers={"Content-Type": FHIR}, timeout=60)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith(FHIR)
    assert "gunicorn" in resp.headers.get("Server", "")
    codes = {e["resource"]["code"]["coding"][0]["code"] for e in resp.json()["entry"]
             if e["resource"]["resourceType"] == "Observation"}
    assert "crs-grade-astct" in codes
    text = service.log_text()
    assert "bundle-only mode" in text and "inbound auth off" in text and "listening on 127.0.0.1 only" in text
    assert "ServiceWorker" in text and "Control socket listening" not in text


def test_capability_matches_the_routes_that_answer_2xx(service, smart_service):
    """Each mode: every advertised operation answers 2xx (given what it needs), the rest do not."""
    served, tokens = smart_service
    bundle = EXAMPLE.read_bytes()
    for s, headers in ((service, {}), (served, {"Authorization": f"Bearer {_token(tokens)}"})):
        cs = requests.get(f"{s.base}/fhir/metadata", timeout=10).json()
        rest = cs["rest"][0]
        advertised = {o["name"] for o in rest.get("operation", [])}
        per_type = {r["type"]: {o["name"] for o in r.get("operation", [])} for r in rest["resource"]}
        assert advertised == {"grade-toxicity"}
        ok = requests.post(f"{s.base}/fhir/$grade-toxicity", data=bundle, timeout=60,
                           headers={"Content-Type": FHIR, **headers})
        assert ok.status_code == 200
        patient = requests.post(f"{s.base}/fhir/Patient/p1/$grade-toxicity", headers=headers, timeout=30)
        if "grade-toxicity" in per_type.get("Patient", set()):
            assert patient.status_code in (200, 504)  # 504: this instance's upstream is the hung server
        else:
            assert patient.status_code == 501
    assert "Patient" not in {r["type"] for r in requests.get(f"{service.base}/fhir/metadata", timeout=10)
                             .json()["rest"][0]["resource"] if r.get("operation")}


def test_refuses_other_addresses_without_auth(tmp_path):
    done = subprocess.run([*_cart_fhir(), "serve", "--host", "0.0.0.0", "--port", str(_free_port())],
                          env=_clean_env(), capture_output=True, check=False, timeout=60)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "CART_FHIR_AUDIENCE" in err and "CART_FHIR_JWKS" in err and "CART_FHIR_ISSUERS" in err
    done = subprocess.run([*_cart_fhir(), "serve", "--host", "0.0.0.0", "--port", str(_free_port())],
                          env=_clean_env(CART_FHIR_AUTH="off"), capture_output=True, check=False, timeout=60)
    assert done.returncode == 2 and "--allow-no-auth" in done.stderr.decode()


# ---- malformed requests and the HTTP layer's own answers ----------------------------------------

@pytest.mark.parametrize("data,content_type,status", [
    pytest.param(b'{"resourceType": ', FHIR, 400, id="broken-json"),
    pytest.param(orjson.dumps({"resourceType": "Patient"}), FHIR, 400, id="wrong-resource-type"),
    pytest.param(b"x" * (20 * 1024 * 1024), FHIR, 413, id="20-MB"),
    pytest.param(b"hello", "text/plain", 415, id="wrong-content-type"),
])
def test_malformed_payloads_and_still_healthy(service, data, content_type, status):
    try:
        resp = requests.post(f"{service.base}/fhir/$grade-toxicity", data=data,
                             headers={"Content-Type": content_type}, timeout=60)
        assert resp.status_code == status
        assert resp.json()["resourceType"] == "OperationOutcome"
    except requests.ConnectionError:
        # gunicorn may close the socket while a client is still sending a body it already refused (413);
        # what matters is that the service stays up.
        assert status == 413
    assert requests.get(f"{service.base}/health", timeout=5).status_code == 200
    assert service.proc.poll() is None


def _raw(base: str, data: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


HOSTILE = [
    pytest.param(b"GET /fhir/metadata?q=" + SECRET.encode() + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414,
                 id="request-line-too-long"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
                 431, id="too-many-headers"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431,
                 id="header-too-large"),
    pytest.param(b"POST /fhir/$grade-toxicity HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + b"e" * 17000
                 + b"\r\nContent-Length: 2\r\n\r\n{}", 431, id="bearer-over-16KiB"),
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="not-http"),
    pytest.param(b"GET /health HTTP/9.9\r\nHost: a\r\n\r\n", 400, id="bad-version"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", 400, id="bad-header-name"),
    pytest.param(b"POST /fhir/$grade-toxicity HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400,
                 id="unsupported-transfer-coding"),
    pytest.param(b"POST /fhir/$grade-toxicity HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
                 b"hello", 400, id="double-content-length"),
    pytest.param(b"POST /fhir/$grade-toxicity HTTP/1.1\r\nHost: a\r\nContent-Type: application/fhir+json\r\n"
                 b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n", (400, 401),
                 id="bad-chunk-size"),  # with auth on, the missing token is found before the body is read
    pytest.param(b"OPTIONS /fhir/metadata HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 405, id="options"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, id="http2-preface"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="proxy-line"),
    pytest.param(b"GET /fhir/Patient/" + SECRET.encode() + b"?name=" + SECRET.encode()
                 + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 404, id="unknown-path-with-secret"),
]


@pytest.mark.parametrize("data,status", HOSTILE)
def test_http_layer_answers_are_operation_outcomes(service, smart_service, data, status):
    for s, auth_on in ((service, False), (smart_service[0], True)):
        got, headers, body = _raw(s.base, data)
        expected = status if isinstance(status, int) else status[auth_on]  # (auth off, auth on)
        assert got == expected, (got, body[:200])
        assert headers["content-type"].startswith(FHIR)
        assert orjson.loads(body)["resourceType"] == "OperationOutcome"
        if status == 431 and auth_on:
            assert headers["www-authenticate"].startswith("Bearer")
        assert requests.get(f"{s.base}/health", timeout=5).status_code == 200


def test_auth_failures_carry_www_authenticate(smart_service):
    served, _ = smart_service
    resp = requests.post(f"{served.base}/fhir/$grade-toxicity", data=EXAMPLE.read_bytes(),
                         headers={"Content-Type": FHIR}, timeout=10)
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert resp.json()["resourceType"] == "OperationOutcome"


def test_no_path_or_query_in_any_log(service, smart_service):
    for s in (service, smart_service[0]):
        requests.get(f"{s.base}/fhir/Patient/{SECRET}?identifier={SECRET}", timeout=10)
        requests.post(f"{s.base}/fhir/Patient/{SECRET}/$grade-toxicity?writeBack={SECRET}", timeout=30)
        _raw(s.base, b"GET /x?" + SECRET.encode() + b"y" * 9000 + b" HTTP/1.1\r\n\r\n")
        _raw(s.base, b"GET /" + SECRET.encode() + b" HTTP/1.1\r\nBad Header: x\r\n\r\n")
        time.sleep(0.5)
        text = s.log_text()
        assert SECRET not in text and '"route"' in text


# ---- slow and idle clients ----------------------------------------------------------------------

def _answer(s: socket.socket) -> bytes:
    """One HTTP answer read off the socket: the head, then Content-Length bytes (they may come apart)."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = s.recv(65536)
        if not chunk:
            return raw
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_idle_connection_holds_no_thread_and_is_closed(service):
    with socket.create_connection(("127.0.0.1", int(service.base.rsplit(":", 1)[1])), timeout=15) as s:
        start = time.monotonic()
        assert s.recv(10) == b""  # closed by the server after keepalive (5 s) of silence
        assert 4 <= time.monotonic() - start <= 10


def test_slow_body_gets_408_operation_outcome(service):
    host, port = "127.0.0.1", int(service.base.rsplit(":", 1)[1])
    with socket.create_connection((host, port), timeout=15) as s:
        s.sendall(b"POST /fhir/$grade-toxicity HTTP/1.1\r\nHost: a\r\nContent-Type: application/fhir+json\r\n"
                  b"Content-Length: 1000\r\n\r\n{")
        start = time.monotonic()
        raw = _answer(s)
        assert raw.startswith(b"HTTP/1.1 408") and time.monotonic() - start <= 6
        assert b'"OperationOutcome"' in raw


def test_slowloris_headers_get_408(service):
    host, port = "127.0.0.1", int(service.base.rsplit(":", 1)[1])
    with socket.create_connection((host, port), timeout=15) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        start = time.monotonic()
        for _ in range(4):  # one header line a second: each recv is quick, the whole is not
            time.sleep(1)
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        raw = _answer(s)
        assert raw.startswith(b"HTTP/1.1 408") and time.monotonic() - start <= 6
        assert b'"OperationOutcome"' in raw


def test_idle_and_slow_clients_do_not_starve_health_or_grading(service):
    """Issue 15's load: 50 idle connections + 20 slow-body clients while a normal client grades."""
    host, port = "127.0.0.1", int(service.base.rsplit(":", 1)[1])
    idle = [socket.create_connection((host, port), timeout=15) for _ in range(50)]
    slow = []
    for _ in range(20):
        s = socket.create_connection((host, port), timeout=15)
        s.sendall(b"POST /fhir/$grade-toxicity HTTP/1.1\r\nHost: a\r\nContent-Type: application/fhir+json\r\n"
                  b"Content-Length: 100000\r\n\r\n{\"resourceType\":")
        slow.append(s)
    try:
        time.sleep(0.3)
        session = requests.Session()
        times = []
        graded = 0
        body = EXAMPLE.read_bytes()
        for i in range(60):
            start = time.perf_counter()
            assert session.get(f"{service.base}/health", timeout=5).status_code == 200
            times.append(time.perf_counter() - start)
            if i % 10 == 0:
                graded += session.post(f"{service.base}/fhir/$grade-toxicity", data=body, timeout=30,
                                       headers={"Content-Type": FHIR}).status_code == 200
        assert graded == 6
        p99 = statistics.quantiles(times, n=100)[98]
        assert p99 < 0.1, f"/health p99 {p99 * 1000:.0f} ms under idle and slow clients"
    finally:
        for s in idle + slow:
            s.close()


# ---- a hung upstream through gunicorn --------------------------------------------------------------

def test_hung_upstream_504_within_the_deadline_and_health_unaffected(smart_service):
    served, tokens = smart_service
    auth = {"Authorization": f"Bearer {_token(tokens)}"}
    results: list[tuple[int, float]] = []

    def call() -> None:
        start = time.monotonic()
        resp = requests.post(f"{served.base}/fhir/Patient/p1/$grade-toxicity?writeBack=true", headers={
            **auth, "Authorization": f"Bearer {_token(tokens, READ + ' system/*.cu')}"}, timeout=30)
        assert resp.json()["resourceType"] == "OperationOutcome"
        results.append((resp.status_code, time.monotonic() - start))

    threads = [threading.Thread(target=call) for _ in range(4)]
    threads += [threading.Thread(target=lambda: requests.get(f"{served.base}/ready", timeout=30)) for _ in range(4)]
    for t in threads:
        t.start()
    health = []
    for _ in range(20):
        start = time.perf_counter()
        assert requests.get(f"{served.base}/health", timeout=5).status_code == 200
        health.append(time.perf_counter() - start)
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=30)
    assert [s for s, _ in results] == [504] * 4
    assert all(took <= 3.0 + 1.0 for _, took in results)
    assert max(health) < 0.5


# ---- SMART discovery read by a real SMART client ------------------------------------------------

def test_fhirclient_discovers_the_token_endpoint_and_authenticates(smart_service):
    from fhirclient import client

    served, tokens = smart_service
    conf = requests.get(f"{served.base}/fhir/.well-known/smart-configuration", timeout=10).json()
    assert conf["token_endpoint"] == tokens.url
    smart = client.FHIRClient(settings={"app_id": "registry", "api_base": f"{served.base}/fhir",
                                        "jwt_token": "signed.client.assertion", "scope": READ})
    smart.prepare()  # reads /fhir/metadata: oauth-uris -> token endpoint
    assert smart.server.auth.auth_type == "oauth2" and smart.server.auth._token_uri == tokens.url
    smart.authorize()  # client_credentials at the discovered endpoint
    assert smart.ready
    out = smart.server.post_json("$grade-toxicity", orjson.loads(EXAMPLE.read_bytes()))
    assert out.status_code == 200 and out.json()["resourceType"] == "Bundle"
