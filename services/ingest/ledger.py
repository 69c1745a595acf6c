"""What ingest has already announced, kept on disk so a restart does not announce it again.

Two guards stop a duplicate announcement: discovery ids are deterministic (the JetStream
stream drops a repeated ``Nats-Msg-Id`` inside its duplicate window), and this ledger, which
remembers ids beyond that window. It is one SQLite file (stdlib ``sqlite3``, default rollback
journal with ``synchronous=FULL``), so an ``add`` that returned survives a crash or power cut.
Keep the file on a local disk: SQLite locking is unreliable on NFS.

Order of operations for the caller: publish, wait for the publish ack, then ``add``. A crash
in between re-publishes once, and the stream's de-duplication drops it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from cryobus.shared.errors import TransientError


class Ledger:
    """A durable set of announced discovery ids.

    Args:
        path: the SQLite file; its folder is created if missing.

    Raises:
        TransientError: the file cannot be opened or written (disk full, read-only volume).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS announced (id TEXT PRIMARY KEY, at REAL NOT NULL)")
        except (OSError, sqlite3.Error) as exc:
            raise TransientError(f"cannot open ingest ledger {self.path}: {exc}") from exc

    def seen(self, discovery_id: str) -> bool:
        """True if ``discovery_id`` was recorded by :meth:`add` (in this or an earlier run)."""
        with self._lock:
            try:
                row = self._db.execute("SELECT 1 FROM announced WHERE id = ?", (discovery_id,)).fetchone()
            except sqlite3.Error as exc:
                raise TransientError(f"cannot read ingest ledger {self.path}: {exc}") from exc
        return row is not None

    def add(self, discovery_id: str) -> bool:
        """Record ``discovery_id`` durably (committed before return); True if it was new."""
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO announced (id, at) VALUES (?, ?)", (discovery_id, time.time())
                )
            except sqlite3.Error as exc:
                raise TransientError(f"cannot write ingest ledger {self.path}: {exc}") from exc
        return cur.rowcount == 1

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM announced").fetchone()[0])

    def close(self) -> None:
        """Close the file; further calls raise."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
