"""Server settings layering (config file < environment < flags) and the CLI's checks of what to grade."""

from __future__ import annotations

import pytest

from cart_fhir.cli import main
from cart_fhir.errors import ConfigError
from cart_fhir.remote.connect import make_auth
from cart_fhir.remote.settings import load_settings


def test_layers_flags_over_environment_over_file(tmp_path):
    cfg = tmp_path / "server.toml"
    cfg.write_text('[server]\nbase_url = "https://file.example/fhir"\nchunk_size = 10\npage_size = 50\n')
    env = {"CART_FHIR_SERVER": "https://env.example/fhir/", "CART_FHIR_CHUNK_SIZE": "20"}
    s = load_settings({"chunk_size": 30, "page_size": None}, str(cfg), env)
    assert (s.base_url, s.chunk_size, s.page_size) == ("https://env.example/fhir", 30, 50)


@pytest.mark.parametrize("flags,env,message", [
    pytest.param({}, {}, "no FHIR server", id="no-server"),
    pytest.param({"base_url": "ftp://x"}, {}, "base_url", id="not-http"),
    pytest.param({"base_url": "https://x", "chunk_size": 0}, {}, "chunk_size", id="chunk-zero"),
    pytest.param({"base_url": "https://x"}, {"CART_FHIR_TIMEOUT": "soon"}, "timeout", id="env-not-a-number"),
])
def test_bad_settings_are_config_errors(flags, env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(flags, None, env)


def test_unknown_setting_in_the_config_file(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('base_url = "https://x"\nchunksize = 3\n')
    with pytest.raises(ConfigError, match="unknown setting.*chunksize"):
        load_settings({}, str(cfg), {})


@pytest.mark.parametrize("env,kind", [
    pytest.param({}, "NoAuth", id="none"),
    pytest.param({"CART_FHIR_TOKEN": "t0ken"}, "BearerToken", id="bearer-from-env"),
])
def test_auth_strategy_follows_the_settings(env, kind):
    auth = make_auth(load_settings({"base_url": "https://x"}, None, env))
    assert type(auth).__name__ == kind
    assert "t0ken" not in repr(auth)


def test_smart_without_a_key_is_a_config_error():
    s = load_settings({"base_url": "https://x", "client_id": "cart-fhir"}, None, {})
    with pytest.raises(ConfigError, match="private key"):
        make_auth(s)


@pytest.mark.parametrize("argv,message", [
    pytest.param(["grade"], "nothing to grade", id="nothing"),
    pytest.param(["grade", "examples/", "--server", "https://x", "--patient", "p"], "not both", id="files-and-server"),
    pytest.param(["grade", "--server", "https://x", "--patient", "p", "--all-infused"], "one of", id="two-cohorts"),
    pytest.param(["grade", "examples/", "--write-back"], "needs patients from a server", id="write-back-files"),
    pytest.param(["grade", "--patient", "p"], "no FHIR server", id="patient-without-server"),
    pytest.param(["push", "missing.json", "--server", "https://x"], "missing.json: cannot read", id="push-no-file"),
])
def test_cli_refuses_unclear_requests_with_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("CART_FHIR_SERVER", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cart-fhir: error:") and message in err[0]
