"""A burst of 10,000 events lands at once (a rescan of a large project, a backlog after an outage):
every consumer processes all of them, and each service's memory stays flat because a replica
pulls at most ``max_in_flight`` messages at a time; the backlog waits in the stream, not in RAM.

The events are ``job.discovered`` facts for RELION Import jobs, which render, metadata and
labelling all consume and acknowledge without work, so the run measures the bus runtime (fetch,
validate, dispatch, ack), not image processing.
"""

from __future__ import annotations

import time

import pytest

from cryobus.shared.events import Envelope, JobDiscovered

from .harness import (
    RssSampler,
    consumer_state,
    dead_letters,
    elapsed,
    metric,
    mib,
    publish,
    record,
    service_urls,
    start_up,
    wait_for,
)

pytestmark = pytest.mark.slow

N_EVENTS = 10_000
CONSUMERS = ["metadata", "render", "labelling"]
PEAK_RSS_BOUND_MIB = 512  # generous: an idle replica is ~100-160 MiB
GROWTH_BOUND_MIB = 150  # peak during the burst minus idle, per replica


def test_ten_thousand_event_burst_is_processed_with_bounded_memory(nats_server, tmp_path):
    url = nats_server.url
    up = start_up(tmp_path, url, services=",".join(CONSUMERS))
    try:
        wait_for(lambda: all(consumer_state(url, s) is not None for s in CONSUMERS)
                 and all(service_urls(up.state, s) for s in CONSUMERS), 90, "consumers bound", up.tail)

        def pids() -> dict[str, int]:
            return {**up.pids(), "nats-server": nats_server.proc.pid}

        with RssSampler(pids) as rss:
            time.sleep(1.0)
            idle = rss.sample()
            t0 = time.monotonic()
            publish_s = publish(url, [
                Envelope.wrap(JobDiscovered(dataset="burst", software="relion", job_type="Import",
                                            project_dir="/data/burst", job_dir=f"/data/burst/Import/job{i:05d}",
                                            files={}, fingerprint=f"{i:05d}"), source="/faults/burst")
                for i in range(N_EVENTS)
            ])
            half: dict[str, int] = {}

            def done() -> bool:
                states = {s: consumer_state(url, s) for s in CONSUMERS}
                if not half and all(st and st["delivered_seq"] >= N_EVENTS // 2 for st in states.values()):
                    half.update(rss.sample())
                return all(st and st["delivered_seq"] >= N_EVENTS and not st["pending"] and not st["ack_pending"]
                           for st in states.values())

            wait_for(done, 180, "every consumer through the burst", up.tail, interval=0.5)
            t_done = elapsed(t0)
            end = rss.sample()
        processed = {
            s: sum(metric(u, "cryobus_events_processed_total", service=s, event_type=JobDiscovered.static_type(),
                          outcome="ok") for u in service_urls(up.state, s))
            for s in CONSUMERS
        }
    finally:
        rc = up.stop()
    assert rc == 0, up.tail()
    assert processed == {s: N_EVENTS for s in CONSUMERS}, processed
    assert dead_letters(url) == []
    names = [f"{s}-0" for s in CONSUMERS]
    peak = {n: mib(rss.peak[n]) for n in [*names, "nats-server"]}
    growth = {n: round(mib(rss.peak[n]) - mib(idle[n]), 1) for n in names}
    second_half = {n: round(mib(end[n]) - mib(half[n]), 1) for n in names} if half else None
    record("burst", events=N_EVENTS, consumers=CONSUMERS, max_in_flight=2, publish_s=round(publish_s, 2),
           seconds_to_all_processed=t_done, events_per_s_per_consumer=round(N_EVENTS / t_done, 1),
           idle_rss_mib={n: mib(idle[n]) for n in [*names, "nats-server"]}, peak_rss_mib=peak,
           growth_mib=growth, rss_change_second_half_mib=second_half, processed=processed)
    for n in names:
        assert peak[n] < PEAK_RSS_BOUND_MIB, f"{n} peaked at {peak[n]} MiB"
        assert growth[n] < GROWTH_BOUND_MIB, f"{n} grew by {growth[n]} MiB during the burst"
