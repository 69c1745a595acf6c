"""Secrets come from the environment or mounted files, and neither ``repr(Settings)`` nor the
JSON log lines show them."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from cryobus.shared.bus.connection import connect_options
from cryobus.shared.config import Settings
from cryobus.shared.logging import configure_logging
from cryobus.shared.secret_files import ConfigError, secret_value

SECRETS = {
    "CRYOBUS_NATS_PASSWORD": "pw-7d9e2c41",
    "CRYOBUS_NATS_TOKEN": "tok-5b3a19f0",
    "CRYOBUS_LABELLING_DB_URL": "postgresql://labels:dbpw-0c44e1@db/labels",
    "CRYOBUS_LABELLING_ACCESS_TOKEN": "access-91aa7e",
    "CRYOBUS_NATS_URL": "nats://ingest:urlpw-3f1c@nats-1:4222,nats://urltoken-88d2@nats-2:4222",
}
VALUES = ["pw-7d9e2c41", "tok-5b3a19f0", "dbpw-0c44e1", "access-91aa7e", "urlpw-3f1c", "urltoken-88d2"]


@pytest.fixture
def secret_env(monkeypatch):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CRYOBUS_NATS_USER", "ingest")


def test_repr_and_str_of_settings_show_no_secret(secret_env):
    s = Settings()
    assert s.nats_password.get_secret_value() == "pw-7d9e2c41"  # read from the environment...
    for text in (repr(s), str(s), f"{s!r}", repr(s.model_copy(update={"connect_timeout_s": 1.0}))):
        for value in VALUES:
            assert value not in text  # ...and shown to nobody
    assert "nats://ingest:***@nats-1:4222" in repr(s)


def test_settings_logged_by_mistake_are_masked_in_the_json_line(secret_env, restore_root_logger, capsys):
    configure_logging("ingest", "DEBUG")
    s = Settings()
    log = logging.getLogger("cryobus.test")
    log.info("starting with %r", s)
    log.info("connect options %s", {k: v for k, v in connect_options(s, "x").items() if k != "tls"})
    log.warning("extra fields", extra={"nats_password": s.nats_password.get_secret_value(), "url": s.nats_url})
    err = capsys.readouterr().err
    assert err.count("\n") == 3
    for value in VALUES[:2] + VALUES[4:]:
        assert value not in err


def test_a_secret_file_is_read_with_its_trailing_newline_dropped(tmp_path):
    f = tmp_path / "pw"
    f.write_text("  spaced pw \n")
    assert secret_value("nats_password", None, f) == "  spaced pw "
    f.write_text("crlf\r\n")
    assert secret_value("nats_password", None, f) == "crlf"
    assert secret_value("nats_password", SecretStr("direct"), None) == "direct"
    assert secret_value("nats_password", None, None) is None


@pytest.mark.parametrize("content", ["", "\n"])
def test_an_empty_secret_file_is_refused(tmp_path, content):
    f = tmp_path / "pw"
    f.write_text(content)
    with pytest.raises(ConfigError, match="CRYOBUS_NATS_PASSWORD_FILE: .* is empty"):
        secret_value("nats_password", None, f)


def test_errors_about_secret_files_name_the_file_never_the_content(tmp_path):
    f = tmp_path / "pw"
    f.write_text("the-content-6a1")
    with pytest.raises(ConfigError) as info:
        secret_value("nats_token", SecretStr("the-value-2b9"), f)
    assert "CRYOBUS_NATS_TOKEN and CRYOBUS_NATS_TOKEN_FILE" in str(info.value)
    assert "the-content-6a1" not in str(info.value) and "the-value-2b9" not in str(info.value)


def test_a_password_without_a_user_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="CRYOBUS_NATS_USER is not"):
        connect_options(Settings(nats_password="x", state_dir=tmp_path), "x")
