"""Nothing is lost: a render replica killed with SIGKILL mid-work, and a nats-server restarted
mid-run, still end with every expected preview written exactly once in content."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from cryobus.shared.bus.server import EmbeddedNatsServer

from .helpers import consumer_idle, events_from, sha256_file, start_cryobus, stored_by_key, wait_until, write_micrographs

pytestmark = pytest.mark.slow

N_MICROGRAPHS = 24


def _check_complete(events, store: Path, names: list[str]) -> None:
    discovered = {e.data.micrograph_name for e in events if e.type == "cryobus.exposure.discovered.v1"}
    assert discovered == set(names), "an exposure was lost or invented"
    by_key = stored_by_key(events)
    for name in names:
        for key in (f"watched/webp/{name}.webp", f"watched/webp/{name}_ctffit.webp"):
            assert key in by_key, f"{key} never announced"
            assert len(by_key[key]) == 1, f"{key} written with different contents"
            assert sha256_file(store / key) in by_key[key]
    completed = {(e.data.name, e.data.image_kind) for e in events if e.type == "cryobus.render.completed.v1"}
    assert {(n, "micrograph") for n in names} <= completed
    assert not [e for e in events if e.type.endswith(".failed.v1")]


def _up(tmp_path: Path, nats_url: str, watched: Path) -> tuple:
    store = tmp_path / "store"
    state = tmp_path / "state"
    proc = start_cryobus(
        "up", "--nats", nats_url, "--watch", str(watched), "--store", store.as_uri(), "--state-dir", str(state),
        env={"CRYOBUS_ACK_WAIT_S": "5", "CRYOBUS_SETTLE_S": "0.2", "CRYOBUS_MAX_IN_FLIGHT": "2"},
        log=tmp_path / "up.log",
    )
    return proc, store, state


def _stop(proc) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except Exception:
        proc.kill()
        raise


def test_render_killed_with_sigkill_loses_nothing(nats_server, tmp_path):
    watched = tmp_path / "watched"
    names = [p.stem for p in write_micrographs(watched, N_MICROGRAPHS, size=2048)]
    proc, store, state = _up(tmp_path, nats_server.url, watched)
    kills = 0
    try:
        pid_file = state / "pids" / "render-0.pid"
        assert wait_until(lambda: pid_file.exists(), 60)
        # Kill render while it holds in-flight work: as soon as it has produced something, and again later.
        for threshold in (2, 10):
            assert wait_until(
                lambda: sum(1 for e in events_from(nats_server.url, "cryobus.events.render.completed")) >= threshold, 120
            ), (tmp_path / "up.log").read_text()[-3000:]
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            kills += 1
            assert wait_until(lambda: pid_file.exists() and int(pid_file.read_text()) != pid, 30)
        assert wait_until(
            lambda: consumer_idle(nats_server.url, ["render", "metadata"])
            and sum(1 for e in events_from(nats_server.url, "cryobus.events.render.completed")) >= 2 * N_MICROGRAPHS,
            240,
        ), (tmp_path / "up.log").read_text()[-3000:]
    finally:
        _stop(proc)
    assert kills == 2
    _check_complete(events_from(nats_server.url), store, names)


def test_nats_server_restart_mid_run_loses_nothing(tmp_path):
    server = EmbeddedNatsServer(tmp_path / "nats")
    server.start()
    watched = tmp_path / "watched"
    names = [p.stem for p in write_micrographs(watched, N_MICROGRAPHS, size=2048)]
    proc, store, _state = _up(tmp_path, server.url, watched)
    try:
        assert wait_until(
            lambda: sum(1 for e in events_from(server.url, "cryobus.events.render.completed")) >= 4, 120
        ), (tmp_path / "up.log").read_text()[-3000:]
        server.stop()
        time.sleep(2.0)
        server.start()
        assert wait_until(
            lambda: consumer_idle(server.url, ["render", "metadata"])
            and sum(1 for e in events_from(server.url, "cryobus.events.render.completed")) >= 2 * N_MICROGRAPHS,
            240,
        ), (tmp_path / "up.log").read_text()[-3000:]
        _stop(proc)
        _check_complete(events_from(server.url), store, names)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
