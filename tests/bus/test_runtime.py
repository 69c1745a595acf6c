"""The delivery rules of DESIGN.md, checked against a real nats-server.

A toy service handles ``exposure.discovered`` events and behaves according to the file name:
"bad*" is bad input, "flaky*" fails transiently twice, "broken*" always fails, "slow*" works
longer than ack_wait. Everything else writes one artifact.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import nats

from cryobus.shared.bus.runtime import ServiceRuntime
from cryobus.shared.bus.service import Service
from cryobus.shared.bus.topology import DLQ_STREAM, EVENTS_STREAM, ConsumerSpec, ensure_consumer, ensure_streams
from cryobus.shared.config import Settings
from cryobus.shared.errors import InputError
from cryobus.shared.events import Envelope, ExposureDiscovered, RenderCompleted
from cryobus.summary import read_events
from tests.runtime_harness import publish, run_service, test_settings, until

attempts: Counter[str] = Counter()
attempts_lock = threading.Lock()


def toy_service() -> Service:
    svc = Service(name="toy")

    @svc.handler(ExposureDiscovered)
    def handle(event: Envelope[ExposureDiscovered], ctx) -> None:
        name = event.data.micrograph_name
        with attempts_lock:
            attempts[name] += 1
            n = attempts[name]
        if name.startswith("bad"):
            raise InputError("header promises more data than the file holds", file=event.data.path, field="nx*ny*nz")
        if name.startswith("flaky") and n <= 2:
            raise OSError("store temporarily unavailable")
        if name.startswith("broken"):
            raise RuntimeError("always fails")
        if name.startswith("slow"):
            time.sleep(2.5)
        stored = ctx.put_artifact(
            f"{event.data.dataset}/toy/{name}.txt", name.encode(), media_type="text/plain", role="toy", dataset=event.data.dataset, inputs=[event.data.path]
        )
        ctx.emit(
            RenderCompleted(
                dataset=event.data.dataset, image_kind="micrograph", name=name, source=event.data.path,
                artifact_uri=stored.uri, width=1, height=1, method="toy",
            )
        )

    return svc


def exposure(name: str) -> ExposureDiscovered:
    return ExposureDiscovered(dataset="ds", path=f"/data/{name}.mrc", micrograph_name=name, file_format="mrc", size_bytes=1, mtime_ns=1)


def settings_for(server, tmp_path: Path, **kw) -> Settings:
    base = dict(ack_wait_s=2.0, max_deliver=3, nak_backoff_s=[0.2, 0.2], max_in_flight=2, shutdown_grace_s=5.0)
    return test_settings(server, tmp_path, **{**base, **kw})


def run_scenario(server, tmp_path, scenario, **kw):
    attempts.clear()
    return run_service(toy_service(), settings_for(server, tmp_path, **kw), scenario, stop_timeout=15)


def test_good_event_writes_artifact_announces_it_and_acks(nats_server, tmp_path):
    async def scenario(js, rt):
        await publish(js, exposure("mic_001"))
        ok = await until(lambda: _consumer_done(js))
        assert ok
        events = await read_events(js, 0)
        return events

    events = run_scenario(nats_server, tmp_path, scenario)
    types = [e.type for e in events]
    assert types.count("cryobus.artifact.stored.v1") == 1
    assert types.count("cryobus.render.completed.v1") == 1
    stored = next(e for e in events if e.type == "cryobus.artifact.stored.v1")
    assert stored.causation_id == events[0].id and stored.correlation_id == events[0].id
    assert (tmp_path / "store" / "ds" / "toy" / "mic_001.txt").read_bytes() == b"mic_001"


async def _consumer_done(js) -> bool:
    info = await js.consumer_info(EVENTS_STREAM, "toy")
    return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq > 0


def test_bad_input_is_dead_lettered_at_once_and_others_flow(nats_server, tmp_path):
    async def scenario(js, rt):
        await publish(js, exposure("bad_truncated"))
        await publish(js, exposure("mic_002"))
        assert await until(lambda: _consumer_done(js))
        return await read_events(js, 0), (await js.stream_info(DLQ_STREAM)).state.messages

    events, dlq = run_scenario(nats_server, tmp_path, scenario)
    failed = [e for e in events if e.type == "cryobus.toy.failed.v1"]
    assert len(failed) == 1 and dlq == 1
    f = failed[0].data
    assert f.error_class == "permanent" and f.deliveries == 1
    assert f.file == "/data/bad_truncated.mrc" and f.field == "nx*ny*nz"
    assert attempts["bad_truncated"] == 1  # never retried
    assert any(e.type == "cryobus.artifact.stored.v1" and e.data.key.endswith("mic_002.txt") for e in events)


def test_transient_failure_is_retried_then_succeeds(nats_server, tmp_path):
    async def scenario(js, rt):
        await publish(js, exposure("flaky_1"))
        assert await until(lambda: _consumer_done(js))
        return await read_events(js, 0)

    events = run_scenario(nats_server, tmp_path, scenario)
    assert attempts["flaky_1"] == 3
    assert not [e for e in events if e.type.endswith(".failed.v1")]
    assert sum(e.type == "cryobus.artifact.stored.v1" for e in events) == 1


def test_retries_exhausted_go_to_dead_letter_after_max_deliver(nats_server, tmp_path):
    async def scenario(js, rt):
        await publish(js, exposure("broken_1"))
        assert await until(lambda: _consumer_done(js))
        return await read_events(js, 0)

    events = run_scenario(nats_server, tmp_path, scenario)
    assert attempts["broken_1"] == 3  # max_deliver
    failed = [e.data for e in events if e.type == "cryobus.toy.failed.v1"]
    assert len(failed) == 1 and failed[0].error_class == "retries_exhausted" and failed[0].deliveries == 3
    assert "always fails" in failed[0].reason


def test_heartbeats_keep_long_work_from_being_redelivered(nats_server, tmp_path):
    async def scenario(js, rt):
        await publish(js, exposure("slow_1"))
        assert await until(lambda: _consumer_done(js))
        return (await js.consumer_info(EVENTS_STREAM, "toy")).num_redelivered

    redelivered = run_scenario(nats_server, tmp_path, scenario)  # 2.5 s of work, ack_wait 2 s
    assert redelivered == 0 and attempts["slow_1"] == 1


def test_republished_fact_is_deduplicated_by_event_id(nats_server, tmp_path):
    async def scenario(js, rt):
        _, a = await publish(js, exposure("mic_dup"), event_id="fixed-id-1")
        _, b = await publish(js, exposure("mic_dup"), event_id="fixed-id-1")
        assert await until(lambda: _consumer_done(js))
        return a, b

    a, b = run_scenario(nats_server, tmp_path, scenario)
    assert b.duplicate and a.seq == b.seq
    assert attempts["mic_dup"] == 1


def test_sigterm_style_stop_finishes_in_flight_work(nats_server, tmp_path):
    async def scenario(js, rt):
        await publish(js, exposure("slow_stop"))
        assert await until(lambda: asyncio.sleep(0, attempts["slow_stop"] == 1))
        rt.request_stop()  # while the handler sleeps
        return js

    run_scenario(nats_server, tmp_path, scenario)

    async def check():
        nc = await nats.connect(nats_server.url)
        info = await nc.jetstream().consumer_info(EVENTS_STREAM, "toy")
        await nc.close()
        return info

    info = asyncio.run(check())
    assert info.num_ack_pending == 0 and info.num_pending == 0  # finished and acked, not dropped
    assert (tmp_path / "store" / "ds" / "toy" / "slow_stop.txt").exists()


def test_consumer_provisioning_is_create_or_update(nats_server):
    async def main():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await ensure_streams(js)
        await ensure_streams(js)  # idempotent
        spec = ConsumerSpec(EVENTS_STREAM, "svc", ["cryobus.events.exposure.discovered"], ack_wait_s=5, max_deliver=4)
        await ensure_consumer(js, spec)
        changed = ConsumerSpec(EVENTS_STREAM, "svc", ["cryobus.events.exposure.discovered", "cryobus.events.job.discovered"], ack_wait_s=9, max_deliver=6)
        await ensure_consumer(js, changed)  # updated, not silently kept
        info = await js.consumer_info(EVENTS_STREAM, "svc")
        await nc.close()
        return info

    info = asyncio.run(main())
    assert info.config.max_deliver == 6 and info.config.ack_wait == 9
    assert sorted(info.config.filter_subjects) == ["cryobus.events.exposure.discovered", "cryobus.events.job.discovered"]


def test_initial_connect_is_retried_until_the_server_comes_up(tmp_path):
    from cryobus.shared.bus.connection import connect_with_retry
    from cryobus.shared.bus.server import EmbeddedNatsServer

    server = EmbeddedNatsServer(tmp_path / "late")
    settings = Settings(nats_url=server.url, connect_timeout_s=20)
    timer = threading.Timer(1.5, server.start)
    timer.start()
    try:
        async def main():
            nc = await connect_with_retry(settings, "late-test")
            ok = nc.is_connected
            await nc.close()
            return ok

        assert asyncio.run(main())
    finally:
        timer.join()
        server.stop()


def test_replicas_share_one_durable_consumer_and_split_the_work(nats_server, tmp_path):
    attempts.clear()
    seen_by: dict[str, set[str]] = {"a": set(), "b": set()}

    def replica(tag: str) -> Service:
        svc = Service(name="toy")

        @svc.handler(ExposureDiscovered)
        def handle(event, ctx) -> None:
            with attempts_lock:
                attempts[event.data.micrograph_name] += 1
                seen_by[tag].add(event.data.micrograph_name)
            time.sleep(0.05)

        return svc

    async def main():
        settings = settings_for(nats_server, tmp_path, max_in_flight=1)
        a, b = ServiceRuntime(replica("a"), settings), ServiceRuntime(replica("b"), settings)
        tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
        await until(lambda: asyncio.sleep(0, a.ready()[0] and b.ready()[0]))
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        for i in range(40):
            await publish(js, exposure(f"mic_{i:03d}"))
        assert await until(lambda: _consumer_done(js), 30)
        consumers = await js.consumers_info(EVENTS_STREAM)
        a.request_stop()
        b.request_stop()
        await asyncio.gather(*tasks)
        await nc.close()
        return consumers

    consumers = asyncio.run(main())
    assert [c.name for c in consumers] == ["toy"]  # one durable, shared
    assert sorted(attempts) == [f"mic_{i:03d}" for i in range(40)] and set(attempts.values()) == {1}
    assert seen_by["a"] and seen_by["b"]  # both replicas did some of the work


def test_cli_producers_never_change_a_stream_services_own(nats_server):
    """ensure_streams(update_existing=False) (the CLI) leaves an existing stream's config alone; a
    service (update_existing=True) brings it back to the declared one; the replica count is passed
    through (a single server refuses 3 replicas, proving it reached the server)."""
    from nats.js.api import StreamConfig
    from nats.js.errors import APIError

    async def main():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=EVENTS_STREAM, subjects=["cryobus.events.>"], description="operator's"))
        await ensure_streams(js, update_existing=False)
        kept = (await js.stream_info(EVENTS_STREAM)).config.description
        await ensure_streams(js)
        restored = (await js.stream_info(EVENTS_STREAM)).config.description
        try:
            await ensure_streams(js, replicas=3)
            refused = None
        except APIError as exc:  # ServerError 10074 on a single server
            refused = exc.description
        await nc.close()
        return kept, restored, refused

    kept, restored, refused = asyncio.run(main())
    assert kept == "operator's" and restored == "cryobus facts"
    assert refused and "replicas" in refused.lower()
