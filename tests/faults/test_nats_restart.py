"""nats-server stopped and started again (same JetStream folder) while exposures land and are
previewed: ingest and render reconnect on their own, and every exposure is announced once and
previewed once."""

from __future__ import annotations

import time

import pytest

from cryobus.shared.bus.server import EmbeddedNatsServer

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
    transient_retries,
    wait_for,
)

pytestmark = pytest.mark.slow

N_EXPOSURES = 120
DOWN_S = 3.0


def test_nats_server_stopped_and_restarted_mid_run_loses_nothing(tmp_path):
    server = EmbeddedNatsServer(tmp_path / "nats")
    server.start()
    url = server.url
    landing = Landing(tmp_path / "staging", tmp_path / "watched", N_EXPOSURES, interval_s=0.05)
    up = start_up(tmp_path, url, services="ingest,render", watched=landing.watched,
                  env={"CRYOBUS_ACK_WAIT_S": "3", "CRYOBUS_MAX_IN_FLIGHT": "2"})
    try:
        wait_for(lambda: consumer_state(url, "render") is not None, 60, "render bound", up.tail)
        landing.start()
        wait_for(lambda: count(url, "cryobus.events.render.completed") >= 40, 120, "some previews", up.tail)
        before = {"discovered": count(url, "cryobus.events.exposure.discovered"),
                  "completed": count(url, "cryobus.events.render.completed"), "landed": landing.landed}
        in_flight = consumer_state(url, "render")
        server.stop()
        t_stop = time.monotonic()
        time.sleep(DOWN_S)
        server.start()
        t_start = time.monotonic()
        at_restart = count(url, "cryobus.events.render.completed")
        wait_for(lambda: count(url, "cryobus.events.render.completed") > at_restart, 60,
                 "the first preview after the restart", up.tail, interval=0.1)
        first_after = elapsed(t_start)
        landing.join()
        wait_for(lambda: count(url, "cryobus.events.exposure.discovered") >= N_EXPOSURES
                 and count(url, "cryobus.events.render.completed") >= 2 * N_EXPOSURES and all_done(url, ["render"]),
                 180, "every exposure previewed", up.tail)
        t_done = elapsed(t_start)
        rc = up.stop()
        assert rc == 0, up.tail()
        assert_previews_complete(url, up.store, "watched", landing.names)
        render_log = log_records(up.state / "logs" / "render-0.log")
        ingest_log = log_records(up.state / "logs" / "ingest-0.log")
        runs = handler_runs(render_log)
        record(
            "nats_restart", exposures=N_EXPOSURES, server_down_s=round(t_start - t_stop, 2), at_stop=before,
            render_in_flight_at_stop=in_flight["ack_pending"] if in_flight else None, seconds_to_first_preview_after_restart=first_after,
            seconds_from_restart_to_all_done=t_done, render_transient_retries=transient_retries(render_log),
            render_messages_redone=sum(1 for c in runs.values() if c > 1),
            ingest_background_restarts=sum(1 for r in ingest_log if "background task" in str(r.get("message"))),
            service_restarts=up.log.read_text().count("restarting in"),
        )
    finally:
        if up.proc.poll() is None:
            up.proc.kill()
        server.stop()
