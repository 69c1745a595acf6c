"""When is a file finished being written?

A detector, MotionCor2 or RELION writes a file over seconds to minutes; a file copied in over
NFS may sit at a partial size for a while. Ingest announces a file only once it is *stable*:
its (size, mtime) has not changed for ``settle_s`` seconds, or its mtime is already
``settle_s`` seconds old (a static folder is announced on the first scan, no waiting). MRC
files must also be complete: header readable and the file as long as the header promises
(:func:`cryobus.shared.formats.mrc.is_complete`), which catches a copy that stalled.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

MRC_SUFFIXES = frozenset({".mrc", ".mrcs"})


def mrc_complete(path: Path) -> bool:
    """True unless ``path`` is an MRC file (``.mrc``/``.mrcs``) that is truncated or unreadable.

    Never raises: a partial file is simply not complete yet.
    """
    if path.suffix.lower() not in MRC_SUFFIXES:
        return True
    from cryobus.shared.formats.mrc import is_complete  # lazy: keeps ingest's import light

    try:
        return bool(is_complete(path))
    except OSError:
        return False


class StabilityTracker:
    """Remembers each file's last (size, mtime_ns) and since when it has been unchanged.

    Args:
        settle_s: seconds a file must stay unchanged (or be old) before it counts as stable.
        clock: monotonic clock for "unchanged since" (seconds); injectable for tests.
        wall_clock: wall clock (seconds since the epoch) compared with the file's mtime.

    Thread-safe: the watcher thread and the scan loop may ask at the same time.
    """

    def __init__(
        self,
        settle_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        if settle_s < 0:
            raise ValueError("settle_s must be >= 0")
        self.settle_s = float(settle_s)
        self._clock = clock
        self._wall_clock = wall_clock
        self._seen: dict[Path, tuple[int, int, float]] = {}
        self._lock = threading.Lock()

    def is_stable(self, path: Path) -> bool:
        """True when ``path`` exists, has settled, and (for MRC files) is complete.

        Settled means: the same (size, mtime_ns) was observed ``settle_s`` seconds ago on
        this tracker's clock, or the mtime is at least ``settle_s`` seconds in the past on
        the wall clock. A file with an mtime in the future (clock skew on a network file
        system) is only settled by observation. Never raises for missing files (False).
        """
        path = Path(path)
        try:
            st = os.stat(path)
        except OSError:
            self.forget(path)
            return False
        signature = (st.st_size, st.st_mtime_ns)
        now = self._clock()
        with self._lock:
            previous = self._seen.get(path)
            if previous is None or previous[:2] != signature:
                self._seen[path] = (*signature, now)
                unchanged_for = 0.0
            else:
                unchanged_for = now - previous[2]
        age = self._wall_clock() - st.st_mtime_ns / 1e9
        if unchanged_for < self.settle_s and age < self.settle_s:
            return False
        return mrc_complete(path)

    def forget(self, path: Path) -> None:
        """Drop what is remembered about ``path`` (e.g. it was deleted)."""
        with self._lock:
            self._seen.pop(Path(path), None)

    def prune(self, keep: Callable[[Path], bool]) -> int:
        """Drop remembered files for which ``keep(path)`` is False; returns how many were dropped.

        Lets a long-running service bound the memory of files that vanished.
        """
        with self._lock:
            gone = [p for p in self._seen if not keep(p)]
            for p in gone:
                del self._seen[p]
        return len(gone)

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)
