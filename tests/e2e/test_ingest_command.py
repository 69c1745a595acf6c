"""`cryobus ingest PATH`: a one-shot request scans a folder that is not watched, inside the
configured roots; a path outside them is refused with a reason."""

from __future__ import annotations

import signal

import pytest

from .helpers import cryobus, events_from, start_cryobus, wait_until, write_micrographs

pytestmark = pytest.mark.slow


def test_ingest_request_scans_an_unwatched_root_and_refuses_outside_paths(nats_server, tmp_path):
    watched, archive, outside = tmp_path / "watched", tmp_path / "archive", tmp_path / "elsewhere"
    watched.mkdir()
    names = [p.stem for p in write_micrographs(archive / "grid7", 2, size=256)]
    write_micrographs(outside, 1, size=256)
    proc = start_cryobus(
        "up", "--nats", nats_server.url, "--watch", str(watched), "--root", str(archive),
        "--store", (tmp_path / "store").as_uri(), "--state-dir", str(tmp_path / "state"), log=tmp_path / "up.log",
    )
    try:
        assert wait_until(lambda: (tmp_path / "state" / "pids" / "ingest-0.pid").exists(), 30)
        ok = cryobus("ingest", "--nats", nats_server.url, str(archive / "grid7"), timeout=60)
        assert ok.returncode == 0, ok.stderr
        bad = cryobus("ingest", "--nats", nats_server.url, str(outside), timeout=60)
        assert bad.returncode == 0, bad.stderr  # the request is accepted; ingest refuses it

        def previews() -> set[str]:
            return {e.data.name for e in events_from(nats_server.url, "cryobus.events.render.completed")}

        assert wait_until(lambda: set(names) <= previews(), 60), (tmp_path / "up.log").read_text()[-3000:]
        assert wait_until(lambda: events_from(nats_server.url, "cryobus.events.ingest.failed"), 30)
        failed = [e.data for e in events_from(nats_server.url, "cryobus.events.ingest.failed")]
        assert len(failed) == 1 and failed[0].file == str(outside) and "outside the allowed roots" in failed[0].reason
        discovered = [e for e in events_from(nats_server.url, "cryobus.events.exposure.discovered")]
        assert {e.data.micrograph_name for e in discovered} == set(names)
        assert all(e.data.dataset == "archive" for e in discovered)
        assert (tmp_path / "store" / "archive" / "webp" / f"{names[0]}.webp").is_file()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
