"""Latency from a 4096×4096 float32 micrograph appearing in a watched folder to its preview's
``artifact.stored`` event, p50/p95 over N micrographs, next to the time to merely read the
file in the same run.

Each micrograph is written beside the watched folder and renamed into it (as detectors and
rsync do), one at a time, waiting for its preview before the next, so the figure is latency,
not queueing. The services run exactly as under ``cryobus up`` (separate processes, embedded
nats-server, file:// store). Usage: ``python bench/ingest_to_preview_latency.py [N]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import nats
import numpy as np

from cryobus.shared.bus.server import EmbeddedNatsServer

SIZE = 4096


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def measure(server_url: str, watched: Path, staging: Path, n: int) -> tuple[list[float], list[float]]:
    nc = await nats.connect(server_url)
    arrived: dict[str, float] = {}
    got = asyncio.Event()

    async def on_stored(msg) -> None:
        data = json.loads(msg.data)["data"]
        arrived[data["key"]] = time.perf_counter()
        got.set()

    await nc.subscribe("cryobus.events.artifact.stored", cb=on_stored)
    rng = np.random.default_rng(0)
    latencies, reads = [], []
    for i in range(n + 1):  # the first one warms up the services (imports, FFT plans) and is dropped
        name = f"bench_{i:04d}"
        tmp = staging / f"{name}.mrc"
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(rng.normal(size=(SIZE, SIZE)).astype(np.float32))
            m.voxel_size = 1.0
        t_read = time.perf_counter()
        mrcfile.read(tmp)
        read_s = time.perf_counter() - t_read
        key = f"{watched.name}/webp/{name}.webp"
        t0 = time.perf_counter()
        os.rename(tmp, watched / f"{name}.mrc")
        while key not in arrived:
            got.clear()
            try:
                await asyncio.wait_for(got.wait(), timeout=60)
            except TimeoutError:
                raise SystemExit(f"no preview for {name} after 60 s")
        if i > 0:
            latencies.append(arrived[key] - t0)
            reads.append(read_s)
    await nc.close()
    return latencies, reads


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        watched, staging = tmp / "watched", tmp / "staging"
        watched.mkdir()
        staging.mkdir()
        server = EmbeddedNatsServer(tmp / "nats").start()
        up = subprocess.Popen(
            [sys.executable, "-m", "cryobus", "up", "--nats", server.url, "--services", "ingest,render",
             "--watch", str(watched), "--store", (tmp / "store").as_uri(), "--state-dir", str(tmp / "state")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(3)  # services connect and bind their consumers
            latencies, reads = asyncio.run(measure(server.url, watched, staging, n))
        finally:
            up.terminate()
            up.wait(timeout=60)
            server.stop()
    settle = float(os.environ.get("CRYOBUS_SETTLE_S", "0.5"))
    print(f"micrographs: {n} × {SIZE}×{SIZE} float32 ({SIZE * SIZE * 4 / 2**20:.0f} MiB each), settle_s={settle}")
    print(f"file read (mrcfile.read)    p50 {percentile(reads, 50):.3f} s   p95 {percentile(reads, 95):.3f} s")
    print(f"appear → preview announced  p50 {percentile(latencies, 50):.3f} s   p95 {percentile(latencies, 95):.3f} s"
          f"   mean {statistics.mean(latencies):.3f} s")
    print(f"ratio latency/read (p50)    {percentile(latencies, 50) / percentile(reads, 50):.1f}×")


if __name__ == "__main__":
    main()
