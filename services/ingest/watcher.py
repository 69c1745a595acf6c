"""Tell ingest when something changes under its roots.

Two watchers run side by side on every root, recursively (watchdog):

* inotify (``watchdog.observers.Observer``) reports a local change at once;
* a polling observer (``watchdog.observers.polling.PollingObserver``) compares a stat
  snapshot of the tree every ``poll_interval_s``, because on NFS/GPFS inotify sees nothing
  that another host writes.

Both feed one coalescing queue: a path reported by both, or many times while a file grows, is
handed to ``on_change`` once per dispatch round, from a single dispatcher thread, so the
callback never runs concurrently with itself and a slow callback never blocks a watcher.
The callback gets the changed path (file or folder); the service decides what to rescan.
Deletions are not reported (nothing to announce).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from cryobus.shared.errors import InputError

log = logging.getLogger(__name__)


class _Forward(FileSystemEventHandler):
    """watchdog handler: put the changed path on the watcher's queue."""

    def __init__(self, push: Callable[[Path], None]):
        self._push = push

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("deleted", "opened", "closed_no_write"):
            return
        path = event.dest_path if event.event_type == "moved" else event.src_path
        if path:
            self._push(Path(os.fsdecode(path)))


class FolderWatcher:
    """Watch folders recursively with inotify plus polling; call ``on_change(path)`` on change.

    Args:
        roots: folders to watch (must exist).
        on_change: called with the changed path, from one dispatcher thread. Exceptions it
            raises are logged and the watcher goes on.
        poll_interval_s: seconds between two polling snapshots of each root (> 0).
        use_inotify: False to rely on polling alone (e.g. a root on NFS/GPFS only).

    Raises:
        InputError: a root does not exist or is not a folder.
    """

    def __init__(
        self,
        roots: Iterable[str | os.PathLike[str]],
        on_change: Callable[[Path], None],
        *,
        poll_interval_s: float,
        use_inotify: bool = True,
    ):
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be > 0")
        self.roots = [Path(r) for r in roots]
        for root in self.roots:
            if not root.is_dir():
                raise InputError("watched root is not an existing folder", file=str(root))
        self._on_change = on_change
        self._poll_interval_s = poll_interval_s
        self._use_inotify = use_inotify
        self._observers: list[BaseObserver] = []
        self._pending: dict[Path, None] = {}  # insertion-ordered set
        self._cond = threading.Condition()
        self._stopping = False
        self._dispatcher: threading.Thread | None = None

    # -- queue -----------------------------------------------------------------------------
    def _push(self, path: Path) -> None:
        with self._cond:
            if path not in self._pending:
                self._pending[path] = None
                self._cond.notify()

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                batch = list(self._pending)
                self._pending.clear()
            for path in batch:
                try:
                    self._on_change(path)
                except Exception:  # a bad callback must not kill the watcher
                    log.exception("on_change(%s) failed", path)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start watching; returns once every watch is in place (changes after it are seen).

        If the inotify watch limit is exhausted, inotify is given up for all roots and
        polling alone continues (a warning is logged).
        """
        if self._dispatcher is not None:
            raise RuntimeError("FolderWatcher already started")
        self._dispatcher = threading.Thread(target=self._dispatch, name="ingest-watch-dispatch", daemon=True)
        self._dispatcher.start()
        handler = _Forward(self._push)
        if self._use_inotify:
            inotify = Observer()
            for root in self.roots:
                inotify.schedule(handler, str(root), recursive=True)
            try:
                inotify.start()
                self._observers.append(inotify)
            except OSError as exc:  # e.g. ENOSPC: fs.inotify.max_user_watches reached
                log.warning("inotify unavailable (%s); relying on polling every %ss", exc, self._poll_interval_s)
                inotify.stop()
        polling = PollingObserver(timeout=self._poll_interval_s)
        for root in self.roots:
            polling.schedule(handler, str(root), recursive=True)
        polling.start()  # takes the first snapshot before returning
        self._observers.append(polling)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the observers and the dispatcher and wait for their threads (up to ``timeout_s`` each).

        Paths still queued are dropped: the service rescans its roots on start anyway.
        """
        for obs in self._observers:
            obs.stop()
        for obs in self._observers:
            obs.join(timeout_s)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._dispatcher is not None and self._dispatcher is not threading.current_thread():
            self._dispatcher.join(timeout_s)

    def is_alive(self) -> bool:
        """True while any observer or the dispatcher thread is running."""
        threads = [*self._observers, self._dispatcher]
        return any(t is not None and t.is_alive() for t in threads)

    def __enter__(self) -> FolderWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
