"""`cryobus reprocess --stage metadata`: the metadata service re-reads the dataset's sources from
the replayed discovery events under the command's correlation id; the same request twice does
no duplicate work; parameters for a stage that takes none are refused with a reason."""

from __future__ import annotations

import re
import signal

import pytest

from cryobus.demo.synthetic import generate_acquisition

from .helpers import consumer_idle, cryobus, events_from, start_cryobus, wait_until

pytestmark = pytest.mark.slow


def test_metadata_reprocess_once_per_parameters(nats_server, tmp_path):
    project = tmp_path / "grid4"
    generate_acquisition(project, n_micrographs=2, size=384, with_classes=False)
    proc = start_cryobus(
        "up", "--nats", nats_server.url, "--watch", str(project), "--services", "ingest,metadata",
        "--store", (tmp_path / "store").as_uri(), "--state-dir", str(tmp_path / "state"), log=tmp_path / "up.log",
    )

    def updates():
        return [e for e in events_from(nats_server.url, "cryobus.events.metadata.updated")]

    def commands_idle() -> bool:
        return consumer_idle(nats_server.url, ["metadata-commands"], stream="CRYOBUS_COMMANDS")

    try:
        assert wait_until(lambda: updates() and consumer_idle(nats_server.url, ["metadata"]), 120), \
            (tmp_path / "up.log").read_text()[-3000:]
        before = len(updates())
        out = cryobus("reprocess", "--nats", nats_server.url, "--dataset", "grid4", "--stage", "metadata", timeout=60)
        assert out.returncode == 0, out.stderr
        command_id = re.search(r"event (\S+)", out.stdout).group(1)
        assert wait_until(lambda: any(e.correlation_id == command_id for e in updates()), 60), \
            (tmp_path / "up.log").read_text()[-3000:]
        assert wait_until(commands_idle, 60)
        rerun = [e for e in updates() if e.correlation_id == command_id]
        # the same table as before: the reprocessing run re-read every source and published its table
        assert rerun[-1].data.micrographs == updates()[before - 1].data.micrographs

        n = len(updates())
        again = cryobus("reprocess", "--nats", nats_server.url, "--dataset", "grid4", "--stage", "metadata", timeout=60)
        assert again.returncode == 0, again.stderr
        assert wait_until(commands_idle, 60)
        assert len(updates()) == n  # nothing redone

        bad = cryobus("reprocess", "--nats", nats_server.url, "--dataset", "grid4", "--stage", "metadata",
                      "--param", "x=1", timeout=60)
        assert bad.returncode == 0
        assert wait_until(lambda: events_from(nats_server.url, "cryobus.events.metadata.failed"), 60)
        failed = events_from(nats_server.url, "cryobus.events.metadata.failed")[-1].data
        assert failed.field == "params" and "takes no parameters" in failed.reason
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
