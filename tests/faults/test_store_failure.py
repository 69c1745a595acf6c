"""The artifact store refuses writes for a while — permission denied, or disk full — as exposures
land: render's writes fail as transient errors, are retried with backoff, and once the store
recovers every preview is written and announced once, nothing dead-lettered."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from .harness import (
    Landing,
    all_done,
    assert_previews_complete,
    chmod_denies_children,
    consumer_state,
    count,
    dead_letters,
    elapsed,
    log_records,
    mount_tmpfs,
    record,
    start_up,
    transient_retries,
    umount,
    wait_for,
)

pytestmark = pytest.mark.slow

N_EXPOSURES = 30
OUTAGE_S = 3.0
ENV = {"CRYOBUS_MAX_DELIVER": "12", "CRYOBUS_NAK_BACKOFF_S": "[0.5, 1.0]", "CRYOBUS_ACK_WAIT_S": "5"}


class PermissionDenied:
    """The store folder made read-only (chmod 555). As root, the services run without
    CAP_DAC_OVERRIDE so the mode applies to them; where that cannot be arranged, the store's
    dataset folder is replaced by a plain file (every write under it fails with ENOTDIR)."""

    def __init__(self, store: Path, probe: Path):
        self.store = store
        denies, self.preexec = chmod_denies_children(probe)
        self.how = ("chmod 555" + (" (services without CAP_DAC_OVERRIDE)" if self.preexec else "")) if denies \
            else "dataset folder replaced by a file (ENOTDIR)"
        self.store.mkdir()

    def fail(self) -> None:
        if self.how.startswith("chmod"):
            os.chmod(self.store, 0o555)
        else:
            (self.store / "watched").write_text("not a folder\n")

    def recover(self) -> None:
        if self.how.startswith("chmod"):
            os.chmod(self.store, 0o755)
        else:
            (self.store / "watched").unlink()

    def close(self) -> None:
        if self.store.exists():
            os.chmod(self.store, 0o755)


class DiskFull:
    """The store on a 64 MiB tmpfs, filled up by filler files until writes fail with ENOSPC."""

    preexec = None
    how = "64 MiB tmpfs filled to ENOSPC"

    def __init__(self, store: Path, probe: Path):
        self.store = store
        if not mount_tmpfs(store, "64m"):
            pytest.skip("disk-full case needs a tiny filesystem: mounting a tmpfs needs root with CAP_SYS_ADMIN")

    def fail(self) -> None:
        chunk = b"\0" * (1 << 20)
        with open(self.store / "filler.bin", "wb") as f:
            try:
                while True:
                    f.write(chunk)
                    f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        # Fill the last bytes too, one small write at a time.
        with open(self.store / "filler2.bin", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 512)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc

    def recover(self) -> None:
        (self.store / "filler.bin").unlink()
        (self.store / "filler2.bin").unlink()

    def close(self) -> None:
        umount(self.store)


@pytest.mark.parametrize("fault", [PermissionDenied, DiskFull], ids=["permission_denied", "disk_full"])
def test_store_refusing_writes_is_retried_and_recovers(nats_server, tmp_path, fault):
    url = nats_server.url
    store = tmp_path / "store"
    outage = fault(store, tmp_path / "probe")
    up = None
    try:
        outage.fail()
        landing = Landing(tmp_path / "staging", tmp_path / "watched", N_EXPOSURES, interval_s=0.05)
        up = start_up(tmp_path, url, services="ingest,render", watched=landing.watched, env=ENV,
                      preexec_fn=outage.preexec, store=store)
        render_log = up.state / "logs" / "render-0.log"
        wait_for(lambda: consumer_state(url, "render") is not None, 60, "render bound", up.tail)
        landing.start()
        wait_for(lambda: render_log.exists() and transient_retries(log_records(render_log)) > 0, 60,
                 "the first refused write", up.tail, interval=0.1)
        t_first = time.monotonic()
        time.sleep(OUTAGE_S)
        assert count(url, "cryobus.events.render.completed") == 0, "a preview was written while the store refused writes"
        retries_during = transient_retries(log_records(render_log))
        outage.recover()
        t_recover = time.monotonic()
        landing.join()
        wait_for(lambda: count(url, "cryobus.events.render.completed") >= 2 * N_EXPOSURES and all_done(url, ["render"]),
                 120, "every exposure previewed after recovery", up.tail)
        t_done = elapsed(t_recover)
        rc = up.stop()
        assert rc == 0, up.tail()
        assert dead_letters(url) == [], "a transient store failure was dead-lettered"
        assert_previews_complete(url, store, "watched", landing.names)
        records = log_records(render_log)
        example = next(r["message"] for r in records if str(r.get("message", "")).startswith("transient failure"))
        assert "artifact store" in example, example
        record(f"store_{fault.__name__}", how=outage.how, exposures=N_EXPOSURES, outage_s=round(t_recover - t_first, 2),
               transient_retries_during_outage=retries_during, transient_retries_total=transient_retries(records),
               seconds_from_recovery_to_all_done=t_done, dead_letters=0, example_reason=example)
    finally:
        if up is not None and up.proc.poll() is None:
            up.proc.kill()
        outage.close()
