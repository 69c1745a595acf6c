"""A file landing under a watched root wakes ingest, with inotify or by polling alone."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cryobus.services.ingest.watcher import FolderWatcher
from cryobus.shared.errors import InputError

WAIT_S = 15  # upper bound for the wait, not a timing assertion


class Seen:
    """Collects callback paths; lets a test wait for one path."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self._cond = threading.Condition()
        self.threads: set[str] = set()

    def __call__(self, path: Path) -> None:
        with self._cond:
            self.paths.append(path)
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def wait_for(self, path: Path) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: path in self.paths, timeout=WAIT_S)


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "polling-only"])
def test_a_new_file_under_a_root_is_reported(tmp_path, use_inotify):
    root = tmp_path / "session"
    (root / "grid1").mkdir(parents=True)
    seen = Seen()
    # polling-only uses a short interval; with inotify the polling interval is long, so the
    # report must come from inotify
    watcher = FolderWatcher([root], seen, poll_interval_s=300 if use_inotify else 0.2, use_inotify=use_inotify)
    watcher.start()
    try:
        target = root / "grid1" / "mic_0001.tif"
        target.write_bytes(b"II*\x00")
        assert seen.wait_for(target)
        assert seen.threads == {"ingest-watch-dispatch"}
    finally:
        watcher.stop()
    assert not watcher.is_alive()


def test_a_failing_callback_does_not_stop_the_watcher(tmp_path):
    seen = Seen()

    def flaky(path: Path) -> None:
        if path.name == "first.mrc":
            raise RuntimeError("boom")
        seen(path)

    with FolderWatcher([tmp_path], flaky, poll_interval_s=0.2, use_inotify=False) as watcher:
        (tmp_path / "first.mrc").write_bytes(b"1")
        second = tmp_path / "second.mrc"
        second.write_bytes(b"2")
        assert seen.wait_for(second)
        assert watcher.is_alive()
    assert not watcher.is_alive()


def test_stop_returns_with_all_threads_ended(tmp_path):
    # a long poll interval: stop must not wait for the next poll
    watcher = FolderWatcher([tmp_path], lambda p: None, poll_interval_s=3600)
    watcher.start()
    assert watcher.is_alive()
    watcher.stop()
    assert not watcher.is_alive()


def test_a_missing_root_is_refused(tmp_path):
    with pytest.raises(InputError, match="not an existing folder"):
        FolderWatcher([tmp_path / "nope"], lambda p: None, poll_interval_s=1)
