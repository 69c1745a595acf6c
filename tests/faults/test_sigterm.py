"""SIGTERM while a render replica holds work (a rolling update, a node drain): with time to
finish, it finishes what it holds; with none (``shutdown_grace_s`` 0), it hands the messages
back at once. Either way it exits 0, the next replica picks up the rest without waiting for
``ack_wait``, and every preview is written and announced once."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.e2e.helpers import write_micrographs

from .harness import (
    all_done,
    assert_previews_complete,
    consumer_state,
    count,
    exposure,
    handler_runs,
    log_records,
    publish,
    record,
    service_env,
    spawn,
    wait_for,
)

pytestmark = pytest.mark.slow

N_EXPOSURES = 30
ACK_WAIT_S = 60  # far longer than the test waits: only a hand-back (nak) can return a message early


def test_sigterm_finishes_or_hands_back_in_flight_work_and_exits_0(nats_server, tmp_path):
    url = nats_server.url
    paths = write_micrographs(tmp_path / "mics", N_EXPOSURES, size=1536)
    store, state = tmp_path / "store", tmp_path / "state"
    publish(url, [exposure(p, "mics") for p in paths])
    replicas: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, **env: str) -> None:
        replicas[name] = spawn("run", "render", log=tmp_path / f"{name}.log", env=service_env(
            url, store, state, CRYOBUS_ACK_WAIT_S=str(ACK_WAIT_S), CRYOBUS_MAX_IN_FLIGHT="2", **env))

    def tail() -> str:
        return "\n".join(f"--- {n}\n{(tmp_path / f'{n}.log').read_text()[-2500:]}" for n in replicas)

    def sigterm_while_busy(name: str) -> dict:
        """SIGTERM once the replica has finished a few messages and holds others; its exit figures."""
        done_before = count(url, "cryobus.events.render.completed")
        wait_for(lambda: count(url, "cryobus.events.render.completed") >= done_before + 4
                 and (consumer_state(url, "render") or {}).get("ack_pending", 0) > 0, 60, f"{name} busy", tail, 0.05)
        proc = replicas[name]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log = log_records(tmp_path / f"{name}.log")
        stop_at = next(i for i, r in enumerate(log) if "stopping:" in str(r.get("message")))
        return {"exit_code": code, "shutdown_s": round(time.monotonic() - t0, 2),
                "in_flight_at_sigterm": int(log[stop_at]["message"].split("stopping: ")[1].split()[0]),
                "finished_after_sigterm": sum(handler_runs(log[stop_at:]).values()),
                "processed": sum(handler_runs(log).values())}

    try:
        start("finish")  # default grace (25 s): in-flight work is finished
        finished = sigterm_while_busy("finish")
        start("handback", CRYOBUS_SHUTDOWN_GRACE_S="0")  # no grace: in-flight work is handed back
        handed_back = sigterm_while_busy("handback")
        start("next")
        t0 = time.monotonic()
        wait_for(lambda: count(url, "cryobus.events.render.completed") >= 2 * N_EXPOSURES and all_done(url, ["render"]),
                 ACK_WAIT_S / 2, "the next replica to finish everything (before any ack_wait expiry)", tail)
        t_rest = round(time.monotonic() - t0, 2)
        replicas["next"].send_signal(signal.SIGTERM)
        assert replicas["next"].wait(timeout=60) == 0, tail()
    finally:
        for p in replicas.values():
            if p.poll() is None:
                p.kill()

    for figures in (finished, handed_back):
        assert figures["exit_code"] == 0, tail()
        assert figures["in_flight_at_sigterm"] > 0, figures  # it was busy
    assert finished["finished_after_sigterm"] == finished["in_flight_at_sigterm"], finished
    assert handed_back["finished_after_sigterm"] == 0, handed_back
    assert_previews_complete(url, store, "mics", [p.stem for p in paths])
    runs = handler_runs([r for n in replicas for r in log_records(tmp_path / f"{n}.log")])
    assert len(runs) == N_EXPOSURES and set(runs.values()) == {1}, "a message was finished twice or never"
    record("sigterm", exposures=N_EXPOSURES, ack_wait_s=ACK_WAIT_S, finish=finished, hand_back=handed_back,
           next_replica_seconds_to_all_done=t_rest)
