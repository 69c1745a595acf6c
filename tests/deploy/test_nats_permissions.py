"""The compose and Helm NATS configs, run by a real nats-server, let every service do its job and
nothing more.

Both take their permissions from the code: deploy/nats/nats-server.conf includes the generated
permissions.conf, and the users of deploy/nats/values.yaml are generated too
(tests/security/test_permissions.py checks that both match the code). Here a real nats-server
runs once with nats-server.conf (compose) and once with the accounts of values.yaml as the chart
renders its ``config.merge``; against each, every service, connected as its own password
user, runs the exercise of tests/security (provision, consume, ack, KV, replay, publish each fact
its code builds and its dead letters) and is refused what it must not do.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cryobus.nats_permissions import CLI_USER
from cryobus.shared.bus.server import free_port, nats_server_binary
from tests.deploy.conftest import DEPLOY, REPO, all_services, registered_services
from tests.security.test_permissions import exercise_service_user

CONF = DEPLOY / "nats" / "nats-server.conf"
PERMISSIONS = DEPLOY / "nats" / "permissions.conf"
VALUES = DEPLOY / "nats" / "values.yaml"
USERS = [*registered_services(), CLI_USER]
PASSWORDS = {u: f"test-{u}-{os.getpid()}" for u in USERS}
PASSWORD_ENV = {f"NATS_PASSWORD_{u.upper()}": pw for u, pw in PASSWORDS.items()}


def compose_conf(tmp: Path) -> Path:
    """deploy/nats/nats-server.conf with its JetStream folder moved under ``tmp``, beside the
    permissions.conf it includes (as compose mounts them)."""
    text = CONF.read_text()
    assert 'store_dir: "/data/jetstream"' in text
    path = tmp / "nats-server.conf"
    path.write_text(text.replace('store_dir: "/data/jetstream"', f'store_dir: "{tmp / "js"}"'))
    (tmp / PERMISSIONS.name).write_text(PERMISSIONS.read_text())
    return path


def helm_values_conf(tmp: Path) -> Path:
    """A server config holding the Helm values' ``config.merge`` accounts, as the chart renders
    them: ``<< $VAR >>`` becomes an unquoted NATS variable."""
    merge = yaml.safe_load(VALUES.read_text())["config"]["merge"]
    text = json.dumps({"accounts": merge["accounts"]}, indent=1)
    text = re.sub(r'"<< (\$\w+) >>"', r"\1", text)
    path = tmp / "helm-accounts.conf"
    path.write_text(f'jetstream {{ store_dir: "{tmp / "js"}" }}\n' + text[1:-1] + "\n")
    return path


class Server:
    def __init__(self, conf: Path, tmp: Path):
        self.port, self.monitor = free_port(), free_port()
        cmd = [nats_server_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(self.port),
               "-m", str(self.monitor)]
        self.log = open(tmp / "nats.log", "w")
        self.proc = subprocess.Popen(cmd, env={**os.environ, **PASSWORD_ENV}, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server did not start: {(tmp / 'nats.log').read_text()}")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def fields(self, user: str) -> dict[str, object]:
        """Settings fields of ``user``'s connection (a password user)."""
        return {"nats_url": self.url, "nats_user": user, "nats_password": PASSWORDS[user]}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(params=["compose", "helm"], scope="module")
def server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"nats-{request.param}")
    conf = compose_conf(tmp) if request.param == "compose" else helm_values_conf(tmp)
    srv = Server(conf, tmp)
    yield srv
    srv.stop()


def test_every_deployed_service_is_registered_so_its_permissions_are_generated():
    assert set(all_services()) == set(registered_services())


def test_compose_config_is_valid_where_it_is_shipped():
    # in place, so the relative `include "permissions.conf"` resolves as in the container
    out = subprocess.run([nats_server_binary(), "-t", "-c", str(CONF)], env={**os.environ, **PASSWORD_ENV},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_mounts_what_the_config_includes_beside_it():
    nats = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["nats"]
    mounts = {Path(dst): (REPO / src).resolve() for src, dst, *_ in (v.split(":") for v in nats["volumes"])}
    conf_dir = Path(nats["command"][nats["command"].index("--config") + 1]).parent
    included = re.findall(r'^include "([^"]+)"', CONF.read_text(), re.M)
    assert included == [PERMISSIONS.name]
    for name in included:
        assert mounts.get(conf_dir / name) == (CONF.parent / name).resolve(), f"compose does not mount {name}"


@pytest.mark.parametrize("name", registered_services())
def test_service_user_can_do_its_job_and_nothing_more(server, name, tmp_path):
    asyncio.run(exercise_service_user(server.fields, name, tmp_path))
