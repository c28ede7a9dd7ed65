"""Configuration layering (layering.py) as the service sees it, and each setting's default in one place."""

from __future__ import annotations

import pytest

from cart_fhir.errors import ConfigError
from cart_fhir.remote.client import FhirClient
from cart_fhir.remote.http import FhirHttp, RetryPolicy
from cart_fhir.remote.settings import CHUNK_SIZE, ServerSettings
from cart_fhir.remote.write import ResultWriter
from cart_fhir.service.config import load_service_settings

OPEN = {"CART_FHIR_AUTH": "off", "CART_FHIR_UPSTREAM": "off"}


def test_service_reads_its_variables_and_splits_lists():
    env = {**OPEN, "CART_FHIR_ISSUERS": "https://a, https://b", "CART_FHIR_PROXY_HOPS": "2",
           "CART_FHIR_CDS_FHIR_SERVERS": "https://ehr/fhir/"}
    s = load_service_settings({}, env)
    assert (s.auth, s.upstream, s.issuers, s.proxy_hops, s.cds_fhir_servers) == (
        False, False, ("https://a", "https://b"), 2, ("https://ehr/fhir/",))


def test_overrides_beat_the_environment():
    assert load_service_settings({"proxy_hops": 1}, {**OPEN, "CART_FHIR_PROXY_HOPS": "3"}).proxy_hops == 1


@pytest.mark.parametrize("variable", ["CART_FHIR_TESTING", "CART_FHIR_TABLES"])
def test_code_only_settings_never_come_from_the_environment(variable):
    """`testing` exempts the service from the upstream check: a variable must not switch it on."""
    with pytest.raises(ConfigError, match="CART_FHIR_SERVER"):
        load_service_settings({}, {"CART_FHIR_AUTH": "off", variable: "1"})


def test_the_upstream_server_comes_from_the_servers_own_variables():
    s = load_service_settings({"auth": False}, {"CART_FHIR_SERVER": "https://up.example/fhir/",
                                                "CART_FHIR_CHUNK_SIZE": "7", "CART_FHIR_AUTH": "on"})
    # CART_FHIR_AUTH is the service's own switch, not the upstream server's auth kind (CART_FHIR_SERVER_AUTH)
    assert s.server is not None and (s.server.base_url, s.server.chunk_size, s.server.auth) == (
        "https://up.example/fhir", 7, None)


@pytest.mark.parametrize("env,message", [
    pytest.param({"CART_FHIR_AUTH": "maybe"}, r"service setting auth \(CART_FHIR_AUTH\): .*on or off",
                 id="switch"),
    pytest.param({**OPEN, "CART_FHIR_MAX_BODY_BYTES": "12"}, "CART_FHIR_MAX_BODY_BYTES", id="too-small"),
    pytest.param({"CART_FHIR_AUTH": "off", "CART_FHIR_SERVER": "ftp://x"}, "server setting base_url",
                 id="bad-server"),
])
def test_bad_variables_are_one_line_config_errors(env, message):
    with pytest.raises(ConfigError, match=message):
        load_service_settings({}, env)


def test_variable_names_are_exact():
    s = load_service_settings({}, {**OPEN, "cart_fhir_proxy_hops": "2"})
    assert s.proxy_hops == 0


def test_built_directly_the_settings_ignore_the_environment(monkeypatch):
    monkeypatch.setenv("CART_FHIR_CHUNK_SIZE", "7")
    assert ServerSettings(base_url="https://x").chunk_size == CHUNK_SIZE


def test_defaults_of_the_client_classes_are_the_settings_defaults():
    d = {name: f.default for name, f in ServerSettings.model_fields.items()}
    http = FhirHttp("https://x")
    client = FhirClient(http)
    assert (http.timeout, RetryPolicy().attempts, client.page_size, client.max_resources) == (
        d["timeout"], d["retries"], d["page_size"], d["max_resources"])
    assert ResultWriter.__init__.__kwdefaults__["chunk_size"] == d["chunk_size"]
