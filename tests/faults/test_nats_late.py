"""Services started before nats-server (a node reboots, pods come up in any order): they keep
retrying, report not-ready meanwhile, connect once the server listens, and do all the work."""

from __future__ import annotations

import json
import signal
import time

import pytest

from cryobus.shared.bus.server import EmbeddedNatsServer, free_port
from tests.e2e.helpers import write_micrographs

from .harness import (
    all_done,
    assert_previews_complete,
    count,
    elapsed,
    readyz,
    record,
    service_env,
    service_urls,
    spawn,
    wait_for,
)

pytestmark = pytest.mark.slow

N_EXPOSURES = 40
SERVER_LATE_S = 4.0


def test_services_started_before_nats_server_retry_and_connect(tmp_path):
    watched = tmp_path / "watched"
    names = [p.stem for p in write_micrographs(watched, N_EXPOSURES, size=256)]
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    store, state = tmp_path / "store", tmp_path / "state"
    env = service_env(url, store, state, CRYOBUS_WATCH=json.dumps([str(watched)]))
    procs = {name: spawn("run", name, env=env, log=tmp_path / f"{name}.log") for name in ("ingest", "render")}
    server = EmbeddedNatsServer(tmp_path / "nats", port=port)

    def tail() -> str:
        return "\n".join(f"--- {n}\n{(tmp_path / f'{n}.log').read_text()[-2000:]}" for n in procs)

    try:
        t_spawn = time.monotonic()
        wait_for(lambda: all(service_urls(state, n) for n in procs), 60, "health endpoints", tail)
        time.sleep(max(0.0, SERVER_LATE_S - (time.monotonic() - t_spawn)))
        # Still retrying: alive, live, and honestly not ready.
        assert all(p.poll() is None for p in procs.values()), tail()
        not_ready = {n: readyz(service_urls(state, n)[0]) for n in procs}
        assert set(not_ready.values()) == {503}, not_ready
        server.start()
        t_up = time.monotonic()
        ready_after: dict[str, float] = {}

        def all_ready() -> bool:
            for n in procs:
                if n not in ready_after and readyz(service_urls(state, n)[0]) == 200:
                    ready_after[n] = elapsed(t_up)
            return len(ready_after) == len(procs)

        wait_for(all_ready, 60, "both services ready", tail, interval=0.1)
        wait_for(lambda: count(url, "cryobus.events.render.completed") >= 2 * N_EXPOSURES and all_done(url, ["render"]),
                 120, "every exposure previewed", tail)
        t_done = elapsed(t_up)
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        codes = {n: p.wait(timeout=60) for n, p in procs.items()}
        assert codes == {"ingest": 0, "render": 0}, tail()
        assert_previews_complete(url, store, "watched", names)
        retry_warnings = sum((tmp_path / f"{n}.log").read_text().count("not reachable yet") for n in procs)
        record("nats_late", exposures=N_EXPOSURES, server_started_after_s=round(t_up - t_spawn, 2),
               readyz_before_server=not_ready, seconds_to_ready_after_server_start=ready_after,
               seconds_from_server_start_to_all_done=t_done, retry_warnings_logged=retry_warnings, exit_codes=codes)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        server.stop()
