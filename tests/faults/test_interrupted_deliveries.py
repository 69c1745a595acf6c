"""A message whose every delivery dies with its replica (a micrograph that gets the replica
OOM-killed, a read that hangs on a stalled mount until the pod is killed) is dead-lettered once
its deliveries are used up — never silently dropped by the server's delivery limit.

The exposure is a large micrograph (4096 px, a few tenths of a second of work); each replica is
frozen (SIGSTOP) as soon as the message is delivered to it, so it cannot finish, then killed with
SIGKILL; the supervisor restarts it and the message is redelivered after ``ack_wait``.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.e2e.helpers import write_micrographs

from .harness import (
    all_done,
    assert_previews_complete,
    consumer_state,
    count,
    dead_letters,
    elapsed,
    exposure,
    publish,
    record,
    start_up,
    wait_for,
)

pytestmark = pytest.mark.slow

MAX_DELIVER = 2


def test_message_whose_replica_dies_on_every_delivery_is_dead_lettered_not_dropped(nats_server, tmp_path):
    url = nats_server.url
    folder = tmp_path / "mics"
    names = [p.stem for p in write_micrographs(folder, 4, size=256)]
    (big,) = write_micrographs(tmp_path / "big", 1, size=4096, prefix="big")
    up = start_up(tmp_path, url, services="render",
                  env={"CRYOBUS_MAX_DELIVER": str(MAX_DELIVER), "CRYOBUS_ACK_WAIT_S": "2"})
    try:
        wait_for(lambda: consumer_state(url, "render") is not None, 60, "render bound", up.tail)
        t0 = time.monotonic()
        publish(url, [exposure(big, "mics")])
        killed = []
        for delivery in range(1, MAX_DELIVER + 1):
            # Freeze the replica the moment it holds delivery n, then kill it.
            wait_for(lambda: (consumer_state(url, "render") or {}).get("deliveries") == delivery
                     and up.pid("render") not in killed, 60, f"delivery {delivery}", up.tail, interval=0.02)
            pid = up.pid("render")
            os.kill(pid, signal.SIGSTOP)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        wait_for(lambda: dead_letters(url), 60, "the dead letter", up.tail)
        t_dead = elapsed(t0)
        # The rest still flows afterwards.
        publish(url, [exposure(folder / f"{n}.mrc", "mics") for n in names])
        wait_for(lambda: count(url, "cryobus.events.render.completed") >= 2 * len(names) and all_done(url, ["render"]),
                 60, "the other previews", up.tail)
    finally:
        rc = up.stop()
    assert rc == 0, up.tail()
    (letter,) = dead_letters(url)
    assert letter.service == "render" and letter.headers["Cryobus-Error-Class"] == "retries_exhausted"
    assert letter.headers["Cryobus-Deliveries"] == str(MAX_DELIVER + 1)
    assert "without completing" in letter.reason, letter.reason
    v = assert_previews_complete(url, up.store, "mics", names, failures_ok=1)
    (failed,) = v.of_type("render.failed.v1")
    assert failed.data.deliveries == MAX_DELIVER + 1 and count(url, "cryobus.events.render.completed") == 2 * len(names)
    record("interrupted_deliveries", max_deliver=MAX_DELIVER, replicas_killed=len(killed),
           seconds_to_dead_letter=t_dead, reason=letter.reason)

