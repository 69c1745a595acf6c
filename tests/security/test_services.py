"""Real cryobus processes against secured servers: the ingest service and the `cryobus ingest`
command over the shipped hardened config (nkeys + mutual TLS + least privilege); a service with
a key the server does not know, or a wrong password, stops at once with one clear line; a
password given in the environment appears in no log line, even at DEBUG."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cryobus.shared.bus.connection import connect_with_retry
from cryobus.shared.config import Settings
from cryobus.summary import read_events
from tests.security.conftest import REPO, new_user_nkey, start_server, write_config

pytestmark = pytest.mark.slow

MICROGRAPH = "sstagg__Magellon/Sandbox/hole_square_detection_ptolemy/example_images/low_mag/20may08a_16760340.mrc"


def cryobus_env(**extra: str) -> dict[str, str]:
    """A clean environment: no CRYOBUS_* from the caller, only what the test gives."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYOBUS_")}
    return {**env, **extra}


def run_cryobus(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cryobus", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def start_service(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "cryobus", "run", name], env=env, cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def discovered(settings: Settings) -> list[str]:
    async def main() -> list[str]:
        nc = await connect_with_retry(settings, "security-reader")
        try:
            return [e.data.path for e in await read_events(nc.jetstream(), 0, "cryobus.events.exposure.discovered")]
        finally:
            await nc.close()

    return asyncio.run(main())


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.3):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def test_ingest_service_and_cli_work_over_mutual_tls_with_their_own_keys(hardened, shared_data, tmp_path):
    archive = tmp_path / "archive" / "grid1"
    archive.mkdir(parents=True)
    micrograph = Path(shutil.copy2(shared_data / MICROGRAPH, archive))
    service_env = cryobus_env(
        **hardened.env("ingest"),
        CRYOBUS_ROOTS=json.dumps([str(tmp_path / "archive")]),
        CRYOBUS_STORE_URL=(tmp_path / "store").as_uri(),
        CRYOBUS_STATE_DIR=str(tmp_path / "state"),
        CRYOBUS_LOG_LEVEL="DEBUG",
    )
    log = tmp_path / "ingest.log"
    proc = start_service("ingest", service_env, log)
    try:
        asked = run_cryobus("ingest", str(archive), env=cryobus_env(**hardened.env("cli")))
        assert asked.returncode == 0, asked.stderr
        reader = Settings(**hardened.fields("cli"), connect_timeout_s=10)
        paths = wait_for(lambda: discovered(reader))
        assert paths == [str(micrograph.resolve())], log.read_text()[-3000:]
    finally:
        assert stop(proc) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "service ingest consuming" in text
    assert hardened.keys["ingest"].seed not in text and hardened.keys["cli"].seed not in text


def test_a_service_with_a_key_the_server_does_not_know_stops_with_one_clear_line(hardened, tmp_path):
    stranger = new_user_nkey(tmp_path / "keys", "stranger")
    env = cryobus_env(**{**hardened.env("ingest"), "CRYOBUS_NATS_NKEY_SEED_FILE": str(stranger.seed_file)},
                      CRYOBUS_STATE_DIR=str(tmp_path / "state"), CRYOBUS_CONNECT_TIMEOUT_S="60")
    out = run_cryobus("run", "ingest", env=env)
    assert out.returncode == 2
    assert "refused the connection: nats: 'Authorization Violation'" in out.stderr
    assert "Traceback" not in out.stderr
    assert stranger.seed not in out.stderr + out.stdout


PASSWORD = "pw-in-the-environment-3e9d1"


def test_a_password_from_the_environment_is_never_logged(tmp_path, monkeypatch):
    conf = write_config(tmp_path / "conf", "authorization { users: [ { user: ingest, password: $PW } ] }\n")
    server = start_server(conf, tmp_path / "nats", {"PW": PASSWORD}, monkeypatch)
    base = cryobus_env(CRYOBUS_NATS_URL=server.url, CRYOBUS_NATS_USER="ingest", CRYOBUS_STORE_URL=(tmp_path / "store").as_uri(),
                       CRYOBUS_STATE_DIR=str(tmp_path / "state"), CRYOBUS_LOG_LEVEL="DEBUG", CRYOBUS_CONNECT_TIMEOUT_S="60")
    try:
        log = tmp_path / "ingest.log"
        proc = start_service("ingest", {**base, "CRYOBUS_NATS_PASSWORD": PASSWORD}, log)
        try:
            assert wait_for(lambda: "consuming" in log.read_text()), log.read_text()[-3000:]
        finally:
            assert stop(proc) == 0, log.read_text()[-3000:]
        assert PASSWORD not in log.read_text()

        wrong = "wrong-pw-in-the-environment-77"
        out = run_cryobus("run", "ingest", env={**base, "CRYOBUS_NATS_PASSWORD": wrong})
        assert out.returncode == 2 and "Authorization Violation" in out.stderr
        assert wrong not in out.stderr + out.stdout

        # A password inside the URL is masked in the one-line error too.
        url = server.url.replace("nats://", f"nats://ingest:{wrong}@")
        out = run_cryobus("run", "ingest", env={**base, "CRYOBUS_NATS_URL": url, "CRYOBUS_NATS_USER": ""})
        assert out.returncode == 2 and "ingest:***@" in out.stderr and wrong not in out.stderr + out.stdout
    finally:
        server.stop()
