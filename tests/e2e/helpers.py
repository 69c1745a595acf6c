"""Shared helpers for end-to-end scenarios: run `cryobus` as a user would, then read back
what happened from the events stream (restarting the run's own JetStream data dir if needed)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mrcfile
import nats
import numpy as np
from nats.js.errors import NotFoundError

from cryobus.shared.bus.server import EmbeddedNatsServer
from cryobus.summary import read_events

REPO = Path(__file__).resolve().parents[2]


def cryobus(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `cryobus` CLI in a subprocess (the same entry point as the console script)."""
    return subprocess.run(
        [sys.executable, "-m", "cryobus", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=REPO,
    )


def start_cryobus(*args: str, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen[str]:
    out = open(log, "w") if log else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, "-m", "cryobus", *args], stdout=out, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})}, cwd=REPO,
    )


def events_from(url: str, subject: str = "cryobus.events.>") -> list[Any]:
    async def main():
        nc = await nats.connect(url)
        try:
            return await read_events(nc.jetstream(), 0, subject)
        except NotFoundError:  # the run has not provisioned its streams yet
            return []
        finally:
            await nc.close()

    return asyncio.run(main())


def events_in_state_dir(state_dir: Path) -> list[Any]:
    """Start a throw-away server on a finished run's JetStream data and read every event."""
    server = EmbeddedNatsServer(state_dir / "nats")
    server.start()
    try:
        return events_from(server.url)
    finally:
        server.stop()


def consumer_idle(url: str, durables: list[str], stream: str = "CRYOBUS_EVENTS") -> bool:
    async def main():
        nc = await nats.connect(url)
        js = nc.jetstream()
        try:
            for d in durables:
                info = await js.consumer_info(stream, d)
                if info.num_pending or info.num_ack_pending:
                    return False
            return True
        except Exception:
            return False
        finally:
            await nc.close()

    return asyncio.run(main())


def wait_until(predicate, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def write_micrographs(folder: Path, n: int, size: int = 1024, seed: int = 0, prefix: str = "mic") -> list[Path]:
    """Write ``n`` float32 MRC micrographs (noise over a gradient), 1.0 Å/px, old mtimes (complete at once)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(n):
        data = (rng.normal(size=(size, size)).astype(np.float32) + xx / size * (i + 1))
        path = folder / f"{prefix}_{i:04d}.mrc"
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(data)
            m.voxel_size = 1.0
        old = time.time() - 60
        os.utime(path, (old, old))
        paths.append(path)
    return paths


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stored_by_key(events: list[Any]) -> dict[str, set[str]]:
    """key → set of sha256 announced for it."""
    out: dict[str, set[str]] = {}
    for e in events:
        if e.type == "cryobus.artifact.stored.v1":
            out.setdefault(e.data.key, set()).add(e.data.sha256)
    return out
