"""One portal run, one source folder: a second tilt series with the same stem in the same portal
dataset fails naming its folder and ``run_name`` instead of overwriting the first; the first
folder may rewrite its own run. The metadata service runs on a real nats-server (its KV bucket
holds the claims); the tilt series are cryoCAT's real TS_017 files."""

from __future__ import annotations

from pathlib import Path

import yaml

from cryobus.services.ingest.recognise import scan_tree
from cryobus.services.ingest.roots import AllowedRoots
from cryobus.services.metadata.service import service
from cryobus.shared.bus.topology import EVENTS_STREAM
from cryobus.shared.events import JobDiscovered
from cryobus.summary import read_events
from tests.cryoet.conftest import CONFIG, TS_017, write_mrc
from tests.runtime_harness import publish, run_service, test_settings, until


def _tilt_series(shared_data: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "017.mdoc").write_bytes((shared_data / TS_017 / "017.mdoc").read_bytes())
    (folder / "017.tlt").write_bytes((shared_data / TS_017 / "017.tlt").read_bytes())
    write_mrc(folder / "017.st", (60, 16, 16), 1.971)
    return folder


def test_a_run_name_belongs_to_the_first_folder_that_writes_it(nats_server, tmp_path: Path, shared_data: Path) -> None:
    facility = tmp_path / "facility"
    first = _tilt_series(shared_data, facility / "session1" / "TS_017")
    second = _tilt_series(shared_data, facility / "session2" / "TS_017")  # same stem, same portal dataset
    (facility / "cryoet_dataset.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False), encoding="utf-8")
    found = scan_tree(facility, dataset="facility", allowed=AllowedRoots([facility]), is_stable=lambda p: True).found
    jobs = {Path(d.job_dir): d for d in found if isinstance(d, JobDiscovered)}
    assert set(jobs) == {first, second}

    async def scenario(js, rt):
        results = []
        for job in (jobs[first], jobs[second], jobs[first]):  # one at a time: the order is the test
            env, ack = await publish(js, job)

            async def handled() -> bool:
                info = await js.consumer_info(EVENTS_STREAM, "metadata")
                return not info.num_ack_pending and info.ack_floor.stream_seq >= ack.seq

            assert await until(handled, 60)
            results.append([e for e in await read_events(js, 0) if e.correlation_id == env.id and e.id != env.id])
        return results

    settings = test_settings(nats_server, tmp_path, ack_wait_s=30.0)
    won, lost, again = run_service(service, settings, scenario)

    [written] = [e.data for e in won if e.type == "cryobus.cryoet.written.v1"]
    assert (written.run_name, written.source_dir) == ("017", str(first))
    assert not [e for e in lost if e.type == "cryobus.cryoet.written.v1"]
    [failed] = [e.data for e in lost if e.type == "cryobus.metadata.failed.v1"]
    assert (failed.file, failed.field, failed.error_class) == (str(second), "run_name", "permanent")
    assert str(first) in failed.reason and "017" in failed.reason
    # The first folder rewrites its own run (a redelivery, or its files changed): allowed.
    [rewritten] = [e.data for e in again if e.type == "cryobus.cryoet.written.v1"]
    assert rewritten.source_dir == str(first)
    run_files = sorted(p.name for p in (tmp_path / "store" / "facility" / "cryoet" / "10001" / "017").rglob("*") if p.is_file())
    assert run_files == ["017.rawtlt", "run_metadata.json", "tiltseries_metadata.json"]
