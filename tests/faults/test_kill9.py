"""200 exposures land while render and ingest are each killed with SIGKILL five times: every
exposure is still announced once and previewed once, with one content per artifact."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from .harness import (
    Landing,
    all_done,
    assert_previews_complete,
    consumer_state,
    count,
    elapsed,
    handler_runs,
    log_records,
    record,
    start_up,
    wait_for,
)

pytestmark = pytest.mark.slow

N_EXPOSURES = 200
KILLS = 5
ACK_WAIT_S = 3


def test_sigkill_render_and_ingest_five_times_each_during_a_200_exposure_run(nats_server, tmp_path):
    url = nats_server.url
    # Exposures land slowly (4/s, in bursts of 6) until every kill is done, then the rest at once:
    # the kills always fall in the middle of the run however long the restarts take.
    landing = Landing(tmp_path / "staging", tmp_path / "watched", N_EXPOSURES, interval_s=0.25, batch=6)
    up = start_up(tmp_path, url, services="ingest,render", watched=landing.watched,
                  env={"CRYOBUS_ACK_WAIT_S": str(ACK_WAIT_S), "CRYOBUS_MAX_IN_FLIGHT": "2"})
    t0 = time.monotonic()
    kills: dict[str, list[dict]] = {"ingest": [], "render": []}
    try:
        wait_for(lambda: up.pid("ingest") and up.pid("render") and consumer_state(url, "render"), 60, "services up", up.tail)
        landing.start()
        last_completed = 0
        killed: set[int | None] = {None}
        deadline = time.monotonic() + 150
        while min(len(k) for k in kills.values()) < KILLS:
            assert time.monotonic() < deadline, f"only {kills} kills done\n{up.tail()}"
            discovered = count(url, "cryobus.events.exposure.discovered")
            completed = count(url, "cryobus.events.render.completed")
            # ingest: killed while a burst of files it has not announced yet is waiting (or, once
            # every file has landed, whenever it is up), at least 1.5 s after its (re)start.
            pid = up.pid("ingest")
            if len(kills["ingest"]) < KILLS and pid not in killed and _up_for(pid) > 1.5:
                backlog = landing.landed - discovered
                if backlog >= 3 or landing.landed == N_EXPOSURES:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                    kills["ingest"].append({"t_s": elapsed(t0), "unannounced_files": backlog})
            # render: killed while it holds unacknowledged messages, after progress since the last kill.
            pid = up.pid("render")
            state = consumer_state(url, "render")
            if (len(kills["render"]) < KILLS and pid not in killed and state and state["ack_pending"] > 0
                    and completed - last_completed >= 8 and _up_for(pid) > 1.0):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
                last_completed = completed
                kills["render"].append({"t_s": elapsed(t0), "in_flight": state["ack_pending"],
                                        "waiting": state["pending"]})
            time.sleep(0.1)
        t_kills = elapsed(t0)
        landed_at_last_kill = landing.landed
        landing.interval_s = 0.0
        landing.join()
        wait_for(lambda: count(url, "cryobus.events.exposure.discovered") >= N_EXPOSURES
                 and count(url, "cryobus.events.render.completed") >= 2 * N_EXPOSURES and all_done(url, ["render"]),
                 180, "every exposure previewed", up.tail)
        t_done = elapsed(t0)
    finally:
        rc = up.stop()
    assert rc == 0, up.tail()
    assert_previews_complete(url, up.store, "watched", landing.names)
    runs = handler_runs(log_records(up.state / "logs" / "render-0.log"))
    record(
        "kill9", exposures=N_EXPOSURES, ack_wait_s=ACK_WAIT_S, kills=kills, seconds_to_last_kill=t_kills,
        landed_at_last_kill=landed_at_last_kill,
        seconds_to_all_done=t_done,
        render_handler_runs=sum(runs.values()), render_messages=len(runs),
        render_messages_redone=sum(1 for c in runs.values() if c > 1),
    )


def _up_for(pid: int) -> float:
    """Seconds since a live process started (0 for a dead or zombie one)."""
    try:
        p = psutil.Process(pid)
        return 0.0 if p.status() == psutil.STATUS_ZOMBIE else time.time() - p.create_time()
    except psutil.Error:
        return 0.0
