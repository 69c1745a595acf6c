"""Dead letters from the CLI: a truncated micrograph is dead-lettered by render with its reason;
`cryobus dlq list/show` print it, `replay` (after the file is repaired) sends it back to render
alone and it succeeds, `purge` empties the rest; `cryobus status` reports lag, dead letters,
failures and artifact counts per dataset."""

from __future__ import annotations

import asyncio
import re
import signal

import mrcfile
import nats
import numpy as np
import pytest

from cryobus.shared.events import Envelope, ExposureDiscovered

from .helpers import consumer_idle, cryobus, events_from, start_cryobus, wait_until

pytestmark = pytest.mark.slow


def _announce(url: str, path, dataset: str = "grid9") -> None:
    async def main() -> None:
        nc = await nats.connect(url)
        st = path.stat()
        env = Envelope.wrap(ExposureDiscovered(dataset=dataset, path=str(path), micrograph_name=path.stem,
                                               file_format="mrc", size_bytes=st.st_size, mtime_ns=st.st_mtime_ns),
                            source="/tests")
        await nc.jetstream().publish(env.nats_subject, env.to_json(), headers={"Nats-Msg-Id": env.id})
        await nc.close()

    asyncio.run(main())


def _truncated(path) -> None:
    mrcfile.write(path, np.zeros((256, 256), np.float32), overwrite=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_dead_letters_listed_shown_replayed_and_purged(nats_server, tmp_path):
    bad, other = tmp_path / "bad_mic.mrc", tmp_path / "other_bad.mrc"
    _truncated(bad)
    _truncated(other)
    good = tmp_path / "good_mic.mrc"
    mrcfile.write(good, np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32))
    store = tmp_path / "store"
    proc = start_cryobus("up", "--nats", nats_server.url, "--services", "render", "--store", store.as_uri(),
                         "--state-dir", str(tmp_path / "state"), log=tmp_path / "up.log")
    try:
        assert wait_until(lambda: consumer_idle(nats_server.url, ["render"]), 30)
        for path in (bad, good, other):
            _announce(nats_server.url, path)

        def failed():
            return [e.data for e in events_from(nats_server.url, "cryobus.events.render.failed")]

        assert wait_until(lambda: len(failed()) == 2, 60), (tmp_path / "up.log").read_text()[-2000:]
        listed = cryobus("dlq", "list", "--nats", nats_server.url, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert "2 dead letter(s)" in listed.stdout and "truncated" in listed.stdout
        ids = {}
        for line in listed.stdout.splitlines()[1:]:
            seq = line.split()[0]
            shown = cryobus("dlq", "show", seq, "--nats", nats_server.url, timeout=60).stdout
            ids.update({name: int(seq) for name in ("bad_mic", "other_bad") if f'"micrograph_name": "{name}"' in shown})
        assert set(ids) == {"bad_mic", "other_bad"}
        shown = cryobus("dlq", "show", str(ids["bad_mic"]), "--nats", nats_server.url, timeout=60)
        assert "Cryobus-Reason" in shown.stdout and '"micrograph_name": "bad_mic"' in shown.stdout

        status = cryobus("status", "--nats", nats_server.url, timeout=60)
        assert status.returncode == 0, status.stderr
        assert re.search(r"CRYOBUS_DLQ \(dead letters\): 2 messages", status.stdout)
        assert "consumer render:" in status.stdout and "failures recorded: 2" in status.stdout
        assert re.search(r"grid9: [1-9]\d*", status.stdout)  # the good micrograph's preview and spectrum

        # Repair the file, replay its dead letter: render alone gets it back and succeeds.
        mrcfile.write(bad, np.random.default_rng(1).standard_normal((256, 256)).astype(np.float32), overwrite=True)
        replayed = cryobus("dlq", "replay", str(ids["bad_mic"]), "--nats", nats_server.url, timeout=60)
        assert replayed.returncode == 0 and "replayed 1 dead letter(s)" in replayed.stdout, replayed.stderr

        def previews() -> set[str]:
            return {e.data.name for e in events_from(nats_server.url, "cryobus.events.render.completed")}

        assert wait_until(lambda: "bad_mic" in previews(), 60), (tmp_path / "up.log").read_text()[-2000:]
        assert (store / "grid9/webp/bad_mic.webp").is_file()
        after = cryobus("dlq", "list", "--nats", nats_server.url, timeout=60).stdout
        assert "1 dead letter(s)" in after and "bad_mic" not in cryobus("dlq", "show", str(ids["other_bad"]), "--nats", nats_server.url).stdout

        purged = cryobus("dlq", "purge", "--service", "render", "--nats", nats_server.url, timeout=60)
        assert "purged 1 dead letter(s)" in purged.stdout
        assert "0 dead letter(s)" in cryobus("dlq", "list", "--nats", nats_server.url, timeout=60).stdout
        # Replay went to render only: no other service saw a second copy of the exposure event.
        assert len([e for e in events_from(nats_server.url, "cryobus.events.exposure.discovered")]) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
