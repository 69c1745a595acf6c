"""cryobus connects to a real nats-server configured with each authentication mode — password,
token, nkey, TLS with a private CA, mutual TLS — with the right credentials, and is refused at
once, with a reason and without its secret in any log line, with the wrong ones."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from cryobus.shared.bus.connection import NatsRefusedError, connect_with_retry
from cryobus.shared.bus.topology import ensure_streams
from cryobus.shared.config import Settings
from cryobus.shared.secret_files import ConfigError
from tests.security.conftest import SERVER_NAME, new_user_nkey, start_server, write_config

PASSWORD = "correct-horse-battery-staple-7c1"
TOKEN = "s3cr3t-token-4be2a"
# A refusal is reported at once; this only bounds a regression (it would surface as a plain
# ConnectionError after this long, not as NatsRefusedError).
PATIENCE_S = 20.0


def settings_for(url: str, tmp: Path, **fields) -> Settings:
    return Settings(nats_url=url, connect_timeout_s=PATIENCE_S, state_dir=tmp / "state", **fields)


async def _round_trip(settings: Settings) -> int:
    """Connect as cryobus does, provision the streams, publish a fact; the publish-ack sequence."""
    nc = await connect_with_retry(settings, "security-probe")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        ack = await js.publish("cryobus.events.probe.connected", b"{}")
        return ack.seq
    finally:
        await nc.close()


def works(settings: Settings) -> bool:
    return asyncio.run(_round_trip(settings)) >= 1


def refused(settings: Settings, caplog: pytest.LogCaptureFixture, *secrets: str) -> str:
    """Connect must fail with NatsRefusedError; returns its message. No secret in it or in any log."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(NatsRefusedError) as info:
        asyncio.run(_round_trip(settings))
    message = str(info.value)
    for secret in secrets:
        assert secret not in message
        assert secret not in caplog.text
    return message


# ---------------------------------------------------------------------------------- password


@pytest.fixture
def password_server(tmp_path, monkeypatch):
    conf = write_config(tmp_path / "conf", "authorization { users: [ { user: ingest, password: $PW_INGEST } ] }\n")
    server = start_server(conf, tmp_path / "nats", {"PW_INGEST": PASSWORD}, monkeypatch)
    yield server
    server.stop()


def test_password_from_the_environment_connects(password_server, tmp_path, monkeypatch):
    monkeypatch.setenv("CRYOBUS_NATS_USER", "ingest")
    monkeypatch.setenv("CRYOBUS_NATS_PASSWORD", PASSWORD)
    assert works(settings_for(password_server.url, tmp_path))


def test_password_from_a_mounted_file_connects(password_server, tmp_path, monkeypatch):
    secret = tmp_path / "run-secrets" / "nats-password"
    secret.parent.mkdir()
    secret.write_text(PASSWORD + "\n")  # as `echo pw > file` or a Kubernetes secret writes it
    monkeypatch.setenv("CRYOBUS_NATS_USER", "ingest")
    monkeypatch.setenv("CRYOBUS_NATS_PASSWORD_FILE", str(secret))
    assert works(settings_for(password_server.url, tmp_path))


def test_a_wrong_password_is_refused_at_once_without_logging_it(password_server, tmp_path, caplog):
    wrong = "not-the-password-91f"
    message = refused(settings_for(password_server.url, tmp_path, nats_user="ingest", nats_password=wrong), caplog, wrong)
    assert "Authorization Violation" in message


def test_no_credentials_is_refused(password_server, tmp_path, caplog):
    assert "Authorization Violation" in refused(settings_for(password_server.url, tmp_path), caplog)


def test_a_password_inside_the_url_is_masked_in_the_error(password_server, tmp_path, caplog):
    wrong = "url-borne-password-5d0"
    url = password_server.url.replace("nats://", f"nats://ingest:{wrong}@")
    message = refused(settings_for(url, tmp_path), caplog, wrong)
    assert "ingest:***@" in message


def test_a_password_and_its_file_together_are_a_config_error(password_server, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    s = settings_for(password_server.url, tmp_path, nats_user="ingest", nats_password=PASSWORD, nats_password_file=secret)
    with pytest.raises(ConfigError, match="CRYOBUS_NATS_PASSWORD and CRYOBUS_NATS_PASSWORD_FILE"):
        asyncio.run(_round_trip(s))


def test_a_missing_secret_file_is_named(password_server, tmp_path):
    s = settings_for(password_server.url, tmp_path, nats_user="ingest", nats_password_file=tmp_path / "absent")
    with pytest.raises(ConfigError, match="CRYOBUS_NATS_PASSWORD_FILE: .*absent does not exist"):
        asyncio.run(_round_trip(s))


# ---------------------------------------------------------------------------------- token


def test_token_from_a_mounted_file_connects_and_a_wrong_one_is_refused(tmp_path, monkeypatch, caplog):
    conf = write_config(tmp_path / "conf", "authorization { token: $CRYOBUS_TEST_TOKEN }\n")
    server = start_server(conf, tmp_path / "nats", {"CRYOBUS_TEST_TOKEN": TOKEN}, monkeypatch)
    try:
        secret = tmp_path / "token"
        secret.write_text(TOKEN)
        assert works(settings_for(server.url, tmp_path, nats_token_file=secret))
        wrong = "wrong-token-0aa"
        assert "Authorization Violation" in refused(settings_for(server.url, tmp_path, nats_token=wrong), caplog, wrong)
    finally:
        server.stop()


# ---------------------------------------------------------------------------------- nkeys


def test_nkey_seed_file_connects_and_another_key_is_refused(tmp_path, monkeypatch, caplog):
    mine, stranger = new_user_nkey(tmp_path / "keys", "ingest"), new_user_nkey(tmp_path / "keys", "stranger")
    conf = write_config(tmp_path / "conf", "authorization { users: [ { nkey: $NKEY_INGEST } ] }\n")
    server = start_server(conf, tmp_path / "nats", {"NKEY_INGEST": mine.public}, monkeypatch)
    try:
        caplog.set_level(logging.DEBUG)
        assert works(settings_for(server.url, tmp_path, nats_nkey_seed_file=mine.seed_file))
        message = refused(settings_for(server.url, tmp_path, nats_nkey_seed_file=stranger.seed_file), caplog, mine.seed, stranger.seed)
        assert "Authorization Violation" in message
    finally:
        server.stop()


# ---------------------------------------------------------------------------------- TLS


def tls_block(cert, *, ca: Path | None = None, verify: bool = False) -> str:
    lines = [f'cert_file: "{cert.cert}"', f'key_file: "{cert.key}"']
    if ca is not None:
        lines.append(f'ca_file: "{ca}"')
    if verify:
        lines.append("verify: true")
    return "tls {\n  " + "\n  ".join(lines) + "\n}\n"


def test_tls_with_a_private_ca_connects_only_when_the_ca_is_trusted(pki, tmp_path, monkeypatch, caplog):
    conf = write_config(tmp_path / "conf", tls_block(pki.server))
    server = start_server(conf, tmp_path / "nats", {}, monkeypatch)
    url = f"tls://127.0.0.1:{server.port}"
    try:
        assert works(settings_for(url, tmp_path, nats_tls_ca_file=pki.ca.cert))
        # The system's CAs do not know the private CA; nor does a CA we were handed by mistake.
        assert "certificate verify failed" in refused(settings_for(url, tmp_path), caplog)
        assert "certificate verify failed" in refused(settings_for(url, tmp_path, nats_tls_ca_file=pki.rogue_ca.cert), caplog)
        # A plain nats:// client is upgraded by the server's INFO (tls_required) and verifies too.
        assert works(settings_for(server.url, tmp_path, nats_tls_ca_file=pki.ca.cert))
    finally:
        server.stop()


def test_tls_hostname_names_the_certificate_when_dialling_an_address(pki, tmp_path, monkeypatch, caplog):
    conf = write_config(tmp_path / "conf", tls_block(pki.named_server))
    server = start_server(conf, tmp_path / "nats", {}, monkeypatch)
    url = f"tls://127.0.0.1:{server.port}"
    try:
        assert works(settings_for(url, tmp_path, nats_tls_ca_file=pki.ca.cert, nats_tls_hostname=SERVER_NAME))
        message = refused(settings_for(url, tmp_path, nats_tls_ca_file=pki.ca.cert), caplog)
        assert "mismatch" in message or "doesn't match" in message  # certificate is for SERVER_NAME, not 127.0.0.1
        wrong = refused(settings_for(url, tmp_path, nats_tls_ca_file=pki.ca.cert, nats_tls_hostname="other.test"), caplog)
        assert "other.test" in wrong
    finally:
        server.stop()


@pytest.fixture
def mtls_server(pki, tmp_path, monkeypatch):
    conf = write_config(tmp_path / "conf", tls_block(pki.server, ca=pki.ca.cert, verify=True))
    server = start_server(conf, tmp_path / "nats", {}, monkeypatch)
    yield f"tls://127.0.0.1:{server.port}"
    server.stop()


def test_mutual_tls_connects_with_a_client_certificate_of_the_ca(pki, mtls_server, tmp_path):
    client = pki.client("ingest")
    s = settings_for(mtls_server, tmp_path, nats_tls_ca_file=pki.ca.cert, nats_tls_cert_file=client.cert, nats_tls_key_file=client.key)
    assert works(s)


def test_mutual_tls_refuses_a_client_without_certificate_or_with_a_foreign_one(pki, mtls_server, tmp_path, caplog):
    assert "certificate required" in refused(settings_for(mtls_server, tmp_path, nats_tls_ca_file=pki.ca.cert), caplog)
    foreign = pki.rogue_ca.issue("ingest", client=True)
    s = settings_for(mtls_server, tmp_path, nats_tls_ca_file=pki.ca.cert, nats_tls_cert_file=foreign.cert, nats_tls_key_file=foreign.key)
    assert "unknown ca" in refused(s, caplog)


def test_a_client_certificate_without_its_key_is_a_config_error(pki, mtls_server, tmp_path):
    client = pki.client("ingest")
    with pytest.raises(ConfigError, match="CRYOBUS_NATS_TLS_CERT_FILE and CRYOBUS_NATS_TLS_KEY_FILE go together"):
        asyncio.run(_round_trip(settings_for(mtls_server, tmp_path, nats_tls_ca_file=pki.ca.cert, nats_tls_cert_file=client.cert)))
    other = pki.client("render")
    s = settings_for(mtls_server, tmp_path, nats_tls_ca_file=pki.ca.cert, nats_tls_cert_file=client.cert, nats_tls_key_file=other.key)
    with pytest.raises(ConfigError, match="not a matching certificate and key"):
        asyncio.run(_round_trip(s))
