"""FhirHttp: retries, Retry-After, re-auth, FHIR errors, foreign links, timeouts, logging (with responses)."""

from __future__ import annotations

import logging
import time
from email.utils import formatdate
from typing import Any

import orjson
import pytest
import requests
import responses

from cart_fhir import __version__
from cart_fhir.errors import ConfigError
from cart_fhir.remote.auth import BearerToken
from cart_fhir.remote.errors import AuthFailed, ServerError, ServerUnreachable, outcome_text
from cart_fhir.remote.http import FhirHttp, RetryPolicy

BASE = "https://fhir.example.org/fhir"
PATIENT = f"{BASE}/Patient/p1"


def oo(diagnostics: str | None = None, text: str | None = None, code: str = "processing") -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": code}
    if diagnostics:
        issue["diagnostics"] = diagnostics
    if text:
        issue["details"] = {"text": text}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


@pytest.fixture()
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


@pytest.fixture()
def sleeps() -> list[float]:
    return []


@pytest.fixture()
def http(sleeps: list[float]) -> FhirHttp:
    return FhirHttp(BASE, sleep=sleeps.append)


class RecordingAuth:
    """An Auth that hands out tok-1, tok-2, ... and counts refresh() calls."""

    def __init__(self, can_refresh: bool = True) -> None:
        self.generation = 1
        self.refreshes = 0
        self.can_refresh = can_refresh

    def headers(self, http: FhirHttp) -> dict[str, str]:
        return {"Authorization": f"Bearer tok-{self.generation}"}

    def refresh(self) -> bool:
        self.refreshes += 1
        if self.can_refresh:
            self.generation += 1
        return self.can_refresh


def backoff(seconds: float) -> tuple[float, float]:
    return (seconds, seconds * 1.1)  # our backoff plus at most 10 % jitter


def exact(seconds: float) -> tuple[float, float]:
    return (seconds, seconds)


# ---- URLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given,expected",
    [
        pytest.param("Patient/p1", PATIENT, id="relative"),
        pytest.param("/Patient/p1", PATIENT, id="leading-slash-is-under-base"),
        pytest.param("", BASE, id="empty-is-base-for-transactions"),
        pytest.param("?_getpages=abc", f"{BASE}?_getpages=abc", id="hapi-paging-query-on-base"),
        pytest.param(f"{BASE}/Patient?_page=2", f"{BASE}/Patient?_page=2", id="absolute-same-server"),
        pytest.param(
            "HTTPS://FHIR.EXAMPLE.ORG:443/fhir/x",
            "HTTPS://FHIR.EXAMPLE.ORG:443/fhir/x",
            id="absolute-same-origin-default-port-and-case",
        ),
    ],
)
def test_url_resolution(http: FhirHttp, given: str, expected: str) -> None:
    assert http.url(given) == expected


@pytest.mark.parametrize(
    "link",
    [
        pytest.param("https://evil.example.com/fhir/Patient?_page=2", id="other-host"),
        pytest.param("http://fhir.example.org/fhir/Patient?_page=2", id="other-scheme"),
        pytest.param("https://fhir.example.org:8443/fhir/Patient?_page=2", id="other-port"),
        pytest.param("https://fhir.example.org.evil.com/fhir/Patient", id="host-prefix-trick"),
        pytest.param("https://fhir.example.org@evil.com/fhir/Patient", id="userinfo-trick"),
    ],
)
def test_foreign_next_link_refused_without_a_request(mock: responses.RequestsMock, link: str) -> None:
    http = FhirHttp(BASE, auth=BearerToken("secret"))
    with pytest.raises(ServerError, match="refusing to follow a link to another host") as err:
        http.get(link)
    assert err.value.status is None and not isinstance(err.value, ServerUnreachable)
    assert len(mock.calls) == 0 and http.round_trips == 0


@pytest.mark.parametrize("base", ["fhir.example.org/fhir", "ftp://fhir.example.org/fhir", "https:///fhir"])
def test_bad_base_url_is_a_config_error(base: str) -> None:
    with pytest.raises(ConfigError, match="base URL"):
        FhirHttp(base)


def test_trailing_slash_dropped_and_no_urllib3_retries() -> None:
    http = FhirHttp(BASE + "/")
    assert http.base_url == BASE
    adapter = http.session.get_adapter(BASE)
    assert adapter.max_retries.total == 0  # retries are ours, never urllib3's
    assert adapter._pool_maxsize >= 10


# ---- requests as sent --------------------------------------------------------------------------


def test_get_sends_fhir_headers_params_and_timeouts(mock: responses.RequestsMock) -> None:
    mock.get(
        f"{BASE}/Observation",
        json={"resourceType": "Bundle", "type": "searchset"},
        content_type="application/fhir+json",
    )
    http = FhirHttp(BASE, timeout=7.0, connect_timeout=3.0)
    reply = http.get("Observation", params=[("date", "ge2024-05-01"), ("date", "lt2024-06-01")])
    req = mock.calls[0].request
    assert req.req_kwargs["timeout"] == (3.0, 7.0)
    assert req.headers["Accept"] == "application/fhir+json"
    assert req.headers["User-Agent"] == f"cart-fhir/{__version__}"
    assert "Content-Type" not in req.headers and "Authorization" not in req.headers
    assert req.url == f"{BASE}/Observation?date=ge2024-05-01&date=lt2024-06-01"
    assert reply.status == 200 and reply.body["type"] == "searchset" and reply.url == req.url
    assert http.round_trips == 1 and http.token_requests == 0


def test_put_sends_orjson_body_caller_headers_and_auth(mock: responses.RequestsMock) -> None:
    mock.put(
        f"{BASE}/Observation/o1",
        status=201,
        json={"resourceType": "Observation", "id": "o1"},
        headers={"Location": f"{BASE}/Observation/o1/_history/1", "ETag": 'W/"1"'},
    )
    http = FhirHttp(BASE, auth=BearerToken("tok"))
    reply = http.put(
        "Observation/o1",
        {"resourceType": "Observation", "id": "o1", "valueQuantity": {"value": 38.5}},
        headers={"If-Match": 'W/"0"'},
    )
    req = mock.calls[0].request
    assert req.headers["Content-Type"] == "application/fhir+json"
    assert req.headers["If-Match"] == 'W/"0"' and req.headers["Authorization"] == "Bearer tok"
    assert orjson.loads(req.body) == {
        "resourceType": "Observation",
        "id": "o1",
        "valueQuantity": {"value": 38.5},
    }
    assert (
        reply.status == 201 and reply.headers["etag"] == 'W/"1"' and reply.headers["LOCATION"].endswith("/1")
    )


@pytest.mark.parametrize(
    "status,body,headers",
    [
        pytest.param(204, "", {}, id="204-no-body"),
        pytest.param(201, "", {"Content-Type": "application/fhir+json"}, id="201-return-minimal"),
    ],
)
def test_empty_body_is_none(mock: responses.RequestsMock, status: int, body: str, headers: dict) -> None:
    mock.put(PATIENT, status=status, body=body, headers=headers)
    assert FhirHttp(BASE).put("Patient/p1", {"resourceType": "Patient"}).body is None


@pytest.mark.parametrize(
    "content_type,body",
    [
        pytest.param("text/html", "<html><body>Please log in</body></html>", id="proxy-login-page"),
        pytest.param("application/fhir+json", "{not json", id="broken-json"),
        pytest.param("application/fhir+xml", "<Patient xmlns='http://hl7.org/fhir'/>", id="xml"),
    ],
)
def test_non_json_2xx_is_a_server_error_naming_the_type(
    mock: responses.RequestsMock, content_type: str, body: str
) -> None:
    mock.get(PATIENT, body=body, content_type=content_type)
    with pytest.raises(ServerError) as err:
        FhirHttp(BASE).get("Patient/p1")
    assert err.value.status == 200 and f"expected a FHIR JSON body, got {content_type}" in err.value.message


def test_redirect_not_followed(mock: responses.RequestsMock) -> None:
    mock.post(BASE, status=302, headers={"Location": "https://other.example.org/fhir"})
    with pytest.raises(
        ServerError, match="redirect to https://other.example.org/fhir \\(not followed\\)"
    ) as err:
        FhirHttp(BASE).post("", {"resourceType": "Bundle", "type": "transaction"})
    assert err.value.status == 302 and len(mock.calls) == 1


# ---- retries -----------------------------------------------------------------------------------

RETRY_CASES = [
    pytest.param([(503, {}), (503, {}), (200, {})], [backoff(0.5), backoff(1.0)], id="503-503-200"),
    pytest.param([(429, {"Retry-After": "2"}), (200, {})], [exact(2.0)], id="429-retry-after-2s"),
    pytest.param([(503, {"Retry-After": "9999"}), (200, {})], [exact(30.0)], id="retry-after-capped"),
    pytest.param([(503, {"Retry-After": "0"}), (200, {})], [exact(0.0)], id="retry-after-0"),
    pytest.param(
        [(504, {"Retry-After": "soon"}), (200, {})], [backoff(0.5)], id="retry-after-garbage-backoff"
    ),
    pytest.param(
        [(502, {}), (429, {}), (504, {}), (200, {})],
        [backoff(0.5), backoff(1.0), backoff(2.0)],
        id="502-429-504-200-last-chance",
    ),
]


@pytest.mark.parametrize("answers,expected_sleeps", RETRY_CASES)
def test_retry_sequences(
    mock: responses.RequestsMock,
    http: FhirHttp,
    sleeps: list[float],
    answers: list[tuple[int, dict]],
    expected_sleeps: list[tuple[float, float]],
) -> None:
    for status, headers in answers:
        mock.get(PATIENT, status=status, headers=headers, json={"resourceType": "Patient", "id": "p1"})
    assert http.get("Patient/p1").body["id"] == "p1"
    assert len(mock.calls) == len(answers) == http.round_trips
    assert len(sleeps) == len(expected_sleeps)
    for slept, (low, high) in zip(sleeps, expected_sleeps, strict=True):
        assert low <= slept <= high


def test_retry_after_http_date(mock: responses.RequestsMock, http: FhirHttp, sleeps: list[float]) -> None:
    mock.get(PATIENT, status=503, headers={"Retry-After": formatdate(time.time() + 5, usegmt=True)})
    mock.get(PATIENT, json={"resourceType": "Patient"})
    http.get("Patient/p1")
    assert len(sleeps) == 1 and 3.5 <= sleeps[0] <= 5.0  # the date has whole seconds


def test_retry_after_date_in_the_past_means_now(
    mock: responses.RequestsMock, http: FhirHttp, sleeps: list[float]
) -> None:
    mock.get(PATIENT, status=429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    mock.get(PATIENT, json={"resourceType": "Patient"})
    http.get("Patient/p1")
    assert sleeps == [0.0]


def test_attempts_exhausted_raise_server_error_with_outcome(
    mock: responses.RequestsMock, http: FhirHttp, sleeps: list[float]
) -> None:
    mock.get(PATIENT, status=503, json=oo("HAPI-1234: database is being reindexed", code="transient"))
    with pytest.raises(ServerError) as err:
        http.get("Patient/p1")
    assert type(err.value) is ServerError and err.value.status == 503
    assert err.value.outcome and err.value.outcome["issue"][0]["code"] == "transient"
    assert err.value.message == f"GET {PATIENT}: HTTP 503: HAPI-1234: database is being reindexed"
    assert len(mock.calls) == 4 == http.round_trips and len(sleeps) == 3


def test_backoff_is_capped(mock: responses.RequestsMock, sleeps: list[float]) -> None:
    mock.get(PATIENT, status=503)
    http = FhirHttp(BASE, sleep=sleeps.append, retry=RetryPolicy(attempts=6, backoff=1.0, max_backoff=3.0))
    with pytest.raises(ServerError):
        http.get("Patient/p1")
    for slept, base in zip(sleeps, [1.0, 2.0, 3.0, 3.0, 3.0], strict=True):
        assert base <= slept <= base * 1.1


@pytest.mark.parametrize("status", [400, 404, 409, 410, 412, 422, 500, 501])
def test_no_retry_on_other_errors(
    mock: responses.RequestsMock, http: FhirHttp, sleeps: list[float], status: int
) -> None:
    mock.get(PATIENT, status=status, json=oo(text=f"failed with {status}"))
    with pytest.raises(ServerError, match=f"HTTP {status}: failed with {status}") as err:
        http.get("Patient/p1")
    assert type(err.value) is ServerError and err.value.status == status
    assert len(mock.calls) == 1 and sleeps == []


NO_ANSWER = [
    pytest.param(requests.ConnectionError("Connection refused"), id="refused"),
    pytest.param(requests.ConnectionError(ConnectionResetError(104, "Connection reset by peer")), id="reset"),
    pytest.param(
        requests.ConnectionError("RemoteDisconnected('Remote end closed connection')"),
        id="remote-disconnected",
    ),
    pytest.param(requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead"), id="chunked"),
    pytest.param(requests.ReadTimeout("read timed out"), id="read-timeout"),
    pytest.param(requests.ConnectTimeout("connect timed out"), id="connect-timeout"),
]


@pytest.mark.parametrize("failure", NO_ANSWER)
def test_no_answer_then_success(
    mock: responses.RequestsMock, http: FhirHttp, sleeps: list[float], failure: Exception
) -> None:
    mock.get(PATIENT, body=failure)
    mock.get(PATIENT, json={"resourceType": "Patient", "id": "p1"})
    assert http.get("Patient/p1").body["id"] == "p1"
    assert http.round_trips == 2 and len(sleeps) == 1


@pytest.mark.parametrize("failure", NO_ANSWER)
def test_no_answer_every_time_is_unreachable(
    mock: responses.RequestsMock, http: FhirHttp, sleeps: list[float], failure: Exception
) -> None:
    mock.get(PATIENT, body=failure)
    with pytest.raises(ServerUnreachable, match="after 4 attempts") as err:
        http.get("Patient/p1")
    assert (
        err.value.status is None
        and err.value.url == PATIENT
        and isinstance(err.value.__cause__, type(failure))
    )
    assert http.round_trips == 4 and len(sleeps) == 3


def test_ssl_error_is_not_retried(mock: responses.RequestsMock, http: FhirHttp, sleeps: list[float]) -> None:
    mock.get(PATIENT, body=requests.exceptions.SSLError("certificate verify failed"))
    with pytest.raises(ServerUnreachable, match="SSLError"):
        http.get("Patient/p1")
    assert http.round_trips == 1 and sleeps == []


def test_post_transaction_is_retried_with_the_same_body(mock: responses.RequestsMock, http: FhirHttp) -> None:
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Observation", "status": "final"},
                "request": {"method": "PUT", "url": "Observation?identifier=urn:x|1"},
            }
        ],
    }
    mock.post(BASE, body=requests.ConnectionError("reset"))
    mock.post(BASE, status=503)
    mock.post(BASE, json={"resourceType": "Bundle", "type": "transaction-response"})
    assert http.post("", tx).body["type"] == "transaction-response"
    assert [orjson.loads(c.request.body) for c in mock.calls] == [tx, tx, tx]
    assert http.round_trips == 3


# ---- 401 / 403 -----------------------------------------------------------------------------------


def test_401_refreshes_once_and_repeats_with_the_new_token(
    mock: responses.RequestsMock, sleeps: list[float]
) -> None:
    mock.get(PATIENT, status=401)
    mock.get(PATIENT, json={"resourceType": "Patient"})
    auth = RecordingAuth()
    http = FhirHttp(BASE, auth=auth, sleep=sleeps.append)
    assert http.get("Patient/p1").status == 200
    assert [c.request.headers["Authorization"] for c in mock.calls] == ["Bearer tok-1", "Bearer tok-2"]
    assert auth.refreshes == 1 and sleeps == [] and http.round_trips == 2


@pytest.mark.parametrize(
    "make_auth,calls,refreshes",
    [
        pytest.param(RecordingAuth, 2, 1, id="401-twice"),
        pytest.param(lambda: RecordingAuth(can_refresh=False), 1, 1, id="refresh-impossible"),
        pytest.param(lambda: None, 1, 0, id="no-auth"),
    ],
)
def test_401_gives_auth_failed(
    mock: responses.RequestsMock, make_auth: Any, calls: int, refreshes: int
) -> None:
    auth = make_auth()
    mock.get(PATIENT, status=401, json=oo(text="Token expired"))
    with pytest.raises(AuthFailed, match="HTTP 401: Token expired") as err:
        FhirHttp(BASE, auth=auth).get("Patient/p1")
    assert err.value.status == 401 and len(mock.calls) == calls
    assert (auth.refreshes if auth else 0) == refreshes


def test_403_is_auth_failed_without_refresh(mock: responses.RequestsMock) -> None:
    mock.get(PATIENT, status=403, json=oo(diagnostics="HAPI-0333: scope system/Patient.read missing"))
    auth = RecordingAuth()
    with pytest.raises(AuthFailed, match="HTTP 403: HAPI-0333: scope") as err:
        FhirHttp(BASE, auth=auth).get("Patient/p1")
    assert err.value.status == 403 and auth.refreshes == 0 and len(mock.calls) == 1


# ---- error texts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome,expected",
    [
        pytest.param(
            oo(text="Resource Patient/x is not known"), "Resource Patient/x is not known", id="details-text"
        ),
        pytest.param(
            oo(diagnostics="HAPI-2001: Resource Patient/x is not known"),
            "HAPI-2001: Resource Patient/x is not known",
            id="hapi-diagnostics-prefix-kept",
        ),
        pytest.param(
            oo("HAPI-0550: version conflict", text="Conflict"),
            "Conflict; HAPI-0550: version conflict",
            id="both-joined",
        ),
        pytest.param(oo("same", text="same"), "same", id="both-equal-once"),
        pytest.param(
            {"resourceType": "OperationOutcome", "issue": [oo(text="a")["issue"][0], oo("b")["issue"][0]]},
            "a; b",
            id="two-issues",
        ),
        pytest.param(oo(code="not-found"), "issue code not-found", id="code-only"),
        pytest.param({"resourceType": "OperationOutcome"}, "", id="no-issues"),
        pytest.param({"resourceType": "Patient"}, "", id="not-an-outcome"),
        pytest.param(None, "", id="none"),
    ],
)
def test_outcome_text(outcome: dict | None, expected: str) -> None:
    assert outcome_text(outcome) == expected


NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


@pytest.mark.parametrize(
    "status,body,content_type,expected",
    [
        pytest.param(
            502,
            NGINX_502,
            "text/html",
            "HTTP 502: 502 Bad Gateway 502 Bad Gateway nginx",
            id="nginx-html-502",
        ),
        pytest.param(
            500,
            "<html><style>p{x:1}</style><script>var a=1;</script><p>Tom &amp; Jerry</p></html>",
            "text/html",
            "HTTP 500: Tom & Jerry",
            id="html-script-style-dropped",
        ),
        pytest.param(400, "x" * 500, "text/plain", "HTTP 400: " + "x" * 199 + "…", id="long-text-cut-to-200"),
        pytest.param(
            400, '{"error": "bad"}', "application/json", 'HTTP 400: {"error": "bad"}', id="json-not-outcome"
        ),
        pytest.param(404, "", "text/plain", "HTTP 404: Not Found", id="empty-body-reason"),
    ],
)
def test_non_fhir_error_bodies(
    mock: responses.RequestsMock,
    sleeps: list[float],
    status: int,
    body: str,
    content_type: str,
    expected: str,
) -> None:
    mock.get(PATIENT, status=status, body=body, content_type=content_type)
    http = FhirHttp(BASE, sleep=sleeps.append, retry=RetryPolicy(attempts=1))
    with pytest.raises(ServerError) as err:
        http.get("Patient/p1")
    assert err.value.message == f"GET {PATIENT}: {expected}" and err.value.outcome is None


# ---- logging --------------------------------------------------------------------------------------


def test_debug_log_has_path_status_attempt_but_no_secrets(
    mock: responses.RequestsMock, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    mock.get(f"{BASE}/Patient", status=503)
    mock.get(
        f"{BASE}/Patient",
        json={"resourceType": "Bundle", "entry": [{"resource": {"name": [{"family": "Doe"}]}}]},
    )
    http = FhirHttp(BASE, auth=BearerToken("sekrit-token"), sleep=sleeps.append)
    with caplog.at_level(logging.DEBUG, logger="cart_fhir.remote"):
        http.request("GET", "Patient", params={"identifier": "urn:mrn|MRN-777"}, headers={"X-Trace": "t"})
    text = caplog.text
    assert "GET /fhir/Patient -> 503" in text and "(attempt 1)" in text
    assert "GET /fhir/Patient -> 200" in text and "(attempt 2)" in text
    for secret in ("sekrit-token", "Bearer", "MRN-777", "Doe", "X-Trace"):
        assert secret not in text
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_context_manager_closes_owned_session_only() -> None:
    mine = requests.Session()
    closed: list[bool] = []
    mine.close = lambda: closed.append(True)  # type: ignore[method-assign]
    with FhirHttp(BASE, session=mine) as http:
        assert http.session is mine
    assert closed == []
