"""The bus's own overhead per event (publish → handler → ack), against raw nats-py in the same run.

Same nats-server, same ~0.4 KB ``exposure.discovered`` payload, two measurements each:

* latency: one event at a time — publish, wait until the handler ran and the message was acked;
* throughput: N events published up front, time until all are handled and acked.

Raw nats-py = a durable pull consumer, ``fetch`` + ``json.loads`` + ``ack``; "handled" is when the
handler (or the raw loop) has the parsed message, the ack follows at once in both. cryobus = the
``ServiceRuntime`` every service runs (envelope validation, worker thread, heartbeat task,
metrics, ack) with a no-op handler. Usage: ``python bench/bus_overhead.py [N]``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import nats
import nats.errors
import numpy as np
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from cryobus.shared.bus.runtime import ServiceRuntime
from cryobus.shared.bus.server import EmbeddedNatsServer
from cryobus.shared.bus.service import Service
from cryobus.shared.config import Settings
from cryobus.shared.events import Envelope, ExposureDiscovered


def payload(i: int) -> Envelope:
    return Envelope.wrap(
        ExposureDiscovered(dataset="bench", path=f"/data/bench/mic_{i:06d}.mrc", micrograph_name=f"mic_{i:06d}",
                           file_format="mrc", size_bytes=67109888, mtime_ns=1_700_000_000_000_000_000 + i),
        source="/bench",
    )


class Handled:
    """Messages handled so far, and an event set once the count reaches ``target``."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = asyncio.Event()

    def add(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()

    def expect(self, more: int) -> None:
        self.target = self.count + more
        self.done.clear()
        if more <= 0:
            self.done.set()


async def measure(js, handled: Handled, subject: str | None, n: int) -> tuple[list[float], float]:
    """Latency of ``n`` events one at a time, then the rate of ``n`` published at once.

    ``subject``: where to publish (None: each envelope's own subject)."""
    async def send(i: int) -> None:
        env = payload(i)
        await js.publish(subject or env.nats_subject, env.to_json(), headers={"Nats-Msg-Id": env.id})

    latencies = []
    for i in range(n):
        handled.expect(1)
        t0 = time.perf_counter()
        await send(i)
        await handled.done.wait()
        latencies.append(time.perf_counter() - t0)
    handled.expect(n)
    t0 = time.perf_counter()
    for i in range(n, 2 * n):
        await send(i)
    await handled.done.wait()
    return latencies, n / (time.perf_counter() - t0)


async def raw_nats(url: str, n: int) -> tuple[list[float], float]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"]))
    await js.add_consumer("RAW", ConsumerConfig(durable_name="raw", ack_policy=AckPolicy.EXPLICIT))
    sub = await js.pull_subscribe_bind("raw", stream="RAW")
    handled = Handled()

    async def consume() -> None:
        while True:
            try:
                msgs = await sub.fetch(1, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                json.loads(m.data)
                handled.add()
                await m.ack()

    task = asyncio.create_task(consume())
    result = await measure(js, handled, "raw.exposure", n)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await nc.close()
    return result


async def cryobus_runtime(url: str, store: Path, n: int, max_in_flight: int) -> tuple[list[float], float]:
    loop = asyncio.get_running_loop()
    handled = Handled()
    svc = Service(name=f"bench{max_in_flight}")

    @svc.handler(ExposureDiscovered)
    def noop(event, ctx) -> None:
        loop.call_soon_threadsafe(handled.add)

    rt = ServiceRuntime(svc, Settings(nats_url=url, store_url=store.as_uri(), max_in_flight=max_in_flight))
    run = asyncio.create_task(rt.run())
    while not rt.ready()[0]:
        await asyncio.sleep(0.05)
    nc = await nats.connect(url)
    js = nc.jetstream()
    # Events published by earlier runs of this bench are consumed first.
    handled.expect((await js.consumer_info("CRYOBUS_EVENTS", svc.name)).num_pending)
    await handled.done.wait()
    result = await measure(js, handled, None, n)
    rt.request_stop()
    await run
    await nc.close()
    return result


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNatsServer(Path(tmp) / "nats").start()
        try:
            raw_lat, raw_rate = asyncio.run(raw_nats(server.url, n))
            results = {"raw nats-py": (raw_lat, raw_rate)}
            for mif in (1, 8):
                results[f"cryobus runtime, max_in_flight={mif}"] = asyncio.run(
                    cryobus_runtime(server.url, Path(tmp) / "store", n, mif)
                )
        finally:
            server.stop()
    base_p50 = float(np.median(raw_lat))
    print(f"{n} events each; latency = publish → handled → acked (one at a time); throughput = {n} queued events")
    for name, (lat, rate) in results.items():
        p50, p95 = float(np.median(lat)), float(np.percentile(lat, 95))
        print(f"{name:38s} p50 {p50 * 1e3:6.2f} ms  p95 {p95 * 1e3:6.2f} ms  ({p50 / base_p50:4.1f}× raw)"
              f"   throughput {rate:7.0f} ev/s ({rate / raw_rate:4.2f}× raw)")


if __name__ == "__main__":
    main()
