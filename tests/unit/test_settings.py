"""Configuration: empty means unset, secrets from files, an LLM setup that cannot work is refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.adapters.llm.factory import LLMConfigError, build_provider, check_llm_config
from services.runtime.settings import Settings, variable

_LLM_VARIABLES = ("OPENAI_API_KEY", "OPENAI_API_KEY_FILE", "OPENAI_BASE_URL", "OPENAI_BASE_URL_FILE",
                  "PROMPTGEN_PROVIDER", "PROMPTGEN_MODEL", "MONGO_URL", "MONGO_URL_FILE", "mongo_url")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in _LLM_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_an_empty_variable_is_unset(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "")
    monkeypatch.setenv("OPENAI_API_KEY", "")
    monkeypatch.setenv("PROMPTGEN_MODEL", "")
    s = Settings()
    assert s.openai_base_url is None
    assert s.openai_api_key is None
    assert s.model == "gpt-4o-mini"
    assert s.provider_name == "offline"


def test_a_file_variable_gives_the_value_without_surrounding_whitespace(monkeypatch, tmp_path):
    (tmp_path / "key").write_text("  sk-from-file\n")
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(tmp_path / "key"))
    s = Settings()
    assert s.openai_api_key.get_secret_value() == "sk-from-file"
    assert s.provider_name == "openai"


def test_any_setting_can_come_from_a_file(monkeypatch, tmp_path):
    (tmp_path / "mongo").write_text("mongodb://user:secret@db-1,db-2/?replicaSet=rs0\n")
    monkeypatch.setenv("MONGO_URL_FILE", str(tmp_path / "mongo"))
    assert Settings().mongo_url == "mongodb://user:secret@db-1,db-2/?replicaSet=rs0"


def test_promptgen_up_reads_a_variable_as_the_services_do(monkeypatch, tmp_path):
    """`up` decides whether to start its own MongoDB from what its services will read."""
    assert variable("MONGO_URL") is None
    monkeypatch.setenv("mongo_url", "mongodb://db-lower")  # a spelling the services accept
    assert variable("MONGO_URL") == Settings().mongo_url == "mongodb://db-lower"
    monkeypatch.delenv("mongo_url")
    (tmp_path / "mongo").write_text("mongodb://db-file\n")
    monkeypatch.setenv("MONGO_URL_FILE", str(tmp_path / "mongo"))
    assert variable("MONGO_URL") == Settings().mongo_url == "mongodb://db-file"
    monkeypatch.setenv("MONGO_URL", "mongodb://db-plain")
    with pytest.raises(ValueError, match="both MONGO_URL and MONGO_URL_FILE are set"):
        variable("MONGO_URL")
    monkeypatch.delenv("MONGO_URL")
    monkeypatch.setenv("mongo_url", "mongodb://db-lower")  # the other spelling and the file: refused too
    with pytest.raises(ValueError, match="both MONGO_URL and MONGO_URL_FILE are set"):
        variable("MONGO_URL")
    with pytest.raises(ValueError, match="both MONGO_URL and MONGO_URL_FILE are set"):
        Settings()


def test_a_setting_in_both_spellings_at_odds_is_refused(monkeypatch):
    monkeypatch.setenv("MONGO_URL", "mongodb://db-upper")
    monkeypatch.setenv("mongo_url", "mongodb://db-lower")  # which one wins would depend on the environment's order
    with pytest.raises(ValueError, match="both MONGO_URL and mongo_url are set, to different values"):
        Settings()
    with pytest.raises(ValueError, match="both MONGO_URL and mongo_url are set, to different values"):
        variable("MONGO_URL")
    monkeypatch.setenv("mongo_url", "mongodb://db-upper")  # the same value twice is one setting
    assert variable("MONGO_URL") == Settings().mongo_url == "mongodb://db-upper"


def test_a_misspelled_variable_is_named_with_the_setting_it_is_closest_to():
    from services.runtime.settings import unknown_variables

    environ = {"PROMPTGEN_LLM_PROVIDER": "offline", "promptgen_max_sse_stream": "10", "PROMPTGEN_PORT": "9000",
               "PROMPTGEN_OPENAI_API_KEY_FILE": "/x", "PROMPTGEN_STREAM_TOKEN_SECRET_FILE": "/run/secrets/s",
               "PROMPTGEN_IMAGE": "promptgen:1", "PROMPTGEN_ZZZ": "1", "OTHER": "1"}
    assert unknown_variables(environ) == [("PROMPTGEN_LLM_PROVIDER", "PROMPTGEN_PROVIDER"),
                                          ("PROMPTGEN_OPENAI_API_KEY_FILE", "OPENAI_API_KEY_FILE"),
                                          ("PROMPTGEN_ZZZ", None),
                                          ("promptgen_max_sse_stream", "PROMPTGEN_MAX_SSE_STREAMS")]


def test_an_empty_file_is_unset(monkeypatch, tmp_path):
    (tmp_path / "key").write_text("\n")
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(tmp_path / "key"))
    assert Settings().openai_api_key is None


def test_a_missing_file_is_an_error_that_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="OPENAI_API_KEY_FILE=.*absent cannot be read"):
        Settings()


def test_a_value_and_a_file_for_the_same_setting_are_refused(monkeypatch, tmp_path):
    (tmp_path / "key").write_text("sk-a")
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(tmp_path / "key"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-b")
    with pytest.raises(ValueError, match="both OPENAI_API_KEY and OPENAI_API_KEY_FILE"):
        Settings()


def test_openai_without_a_key_is_refused_with_the_reason():
    settings = Settings(provider="openai")
    with pytest.raises(LLMConfigError, match="no API key: set OPENAI_API_KEY, or OPENAI_API_KEY_FILE"):
        check_llm_config(settings)
    with pytest.raises(LLMConfigError):
        build_provider(settings)  # never an offline provider in its place


def test_openai_with_an_empty_key_is_refused(monkeypatch):
    monkeypatch.setenv("PROMPTGEN_PROVIDER", "openai")
    monkeypatch.setenv("OPENAI_API_KEY", "")
    with pytest.raises(LLMConfigError):
        check_llm_config(Settings())


def test_openai_with_a_key_or_a_self_hosted_server_is_accepted():
    check_llm_config(Settings(provider="openai", openai_api_key="sk-x"))
    check_llm_config(Settings(provider="openai", openai_base_url="http://127.0.0.1:11434/v1"))
    check_llm_config(Settings(provider="offline"))


def test_an_unknown_provider_is_refused():
    with pytest.raises(LLMConfigError, match="must be 'openai' or 'offline'"):
        check_llm_config(Settings(provider="anthropic"))


@pytest.mark.parametrize("service", ["generator", "gateway"])
def test_a_service_that_calls_the_llm_will_not_start_without_its_key(service):
    env = {k: v for k, v in os.environ.items() if k not in _LLM_VARIABLES} | {
        "PROMPTGEN_PROVIDER": "openai", "OPENAI_API_KEY": "",
        "NATS_URL": "nats://127.0.0.1:1", "MONGO_URL": "mongodb://127.0.0.1:1/"}  # never reached
    proc = subprocess.run([sys.executable, "-m", "services.cli", service], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "configuration error: PROMPTGEN_PROVIDER=openai but no API key" in proc.stderr


def test_a_nats_user_without_a_password_is_an_error_that_names_what_is_missing(monkeypatch):
    monkeypatch.setenv("NATS_USER", "gateway")
    monkeypatch.delenv("NATS_PASSWORD", raising=False)
    monkeypatch.delenv("NATS_PASSWORD_FILE", raising=False)
    with pytest.raises(ValueError, match=r"NATS_PASSWORD \(or NATS_PASSWORD_FILE\) is not set"):
        Settings()


def test_the_nats_password_comes_from_a_file_and_never_shows(monkeypatch, tmp_path):
    (tmp_path / "pw").write_text("pa55-from-a-secret\n")
    monkeypatch.setenv("NATS_USER", "gateway")
    monkeypatch.setenv("NATS_PASSWORD_FILE", str(tmp_path / "pw"))
    s = Settings()
    assert s.nats_password.get_secret_value() == "pa55-from-a-secret"
    assert "pa55" not in repr(s)


def test_a_client_certificate_needs_its_key(monkeypatch):
    monkeypatch.setenv("NATS_TLS_CERT_FILE", "/run/secrets/client.pem")
    monkeypatch.delenv("NATS_TLS_KEY_FILE", raising=False)
    with pytest.raises(ValueError, match="NATS_TLS_KEY_FILE is not set"):
        Settings()


def test_an_unreadable_nats_ca_is_an_error_that_names_the_variable(tmp_path):
    from services.adapters.event_log import NatsAccess

    with pytest.raises(ValueError, match="NATS_TLS_CA_FILE"):
        NatsAccess.from_settings(Settings(nats_tls_ca_file=str(tmp_path / "absent.pem")))


def test_mongo_transactions_are_auto_or_off_and_anything_else_is_refused_by_name(monkeypatch):
    assert Settings().mongo_transactions == "auto"
    monkeypatch.setenv("PROMPTGEN_MONGO_TRANSACTIONS", "off")
    assert Settings().mongo_transactions == "off"
    monkeypatch.setenv("PROMPTGEN_MONGO_TRANSACTIONS", "always")
    with pytest.raises(ValueError, match="PROMPTGEN_MONGO_TRANSACTIONS"):
        Settings()


def test_a_log_level_is_one_logging_knows_in_any_case_and_anything_else_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("PROMPTGEN_LOG_LEVEL", " WARNING ")
    assert Settings().log_level == "warning"
    monkeypatch.setenv("PROMPTGEN_LOG_LEVEL", "warn")  # logging's alias, taken before
    assert Settings().log_level == "warning"
    monkeypatch.setenv("PROMPTGEN_LOG_LEVEL", "loud")  # was taken, and logged at info
    with pytest.raises(ValueError, match="PROMPTGEN_LOG_LEVEL"):
        Settings()
