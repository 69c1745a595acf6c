"""``cryobus status``: streams, per-service consumer lag and redeliveries, dead letters, last failures."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from cryobus.shared.bus.connection import connect_with_retry
from cryobus.shared.bus.topology import COMMANDS_STREAM, DLQ_STREAM, EVENTS_STREAM
from cryobus.shared.config import Settings
from cryobus.shared.events import ArtifactStored, ProcessingFailed


async def print_status(settings: Settings) -> int:
    from cryobus.summary import read_events

    nc = await connect_with_retry(settings, "cryobus-status")
    js = nc.jetstream()
    try:
        for stream in (EVENTS_STREAM, COMMANDS_STREAM, DLQ_STREAM):
            try:
                info = await js.stream_info(stream)
            except Exception:  # noqa: BLE001 - not provisioned yet
                print(f"stream {stream}: absent")
                continue
            label = " (dead letters)" if stream == DLQ_STREAM else ""
            print(f"stream {stream}{label}: {info.state.messages} messages, {info.state.bytes} bytes, "
                  f"last seq {info.state.last_seq}")
            consumers: list[Any] = await js.consumers_info(stream)
            for c in sorted(consumers, key=lambda c: c.name):
                print(
                    f"  consumer {c.name}: pending {c.num_pending}, unacked {c.num_ack_pending}, "
                    f"redelivered {c.num_redelivered}, waiting pulls {c.num_waiting}"
                )
        failures = [
            e.data
            for e in await read_events(js, 0, "cryobus.events.*.failed")
            if isinstance(e.data, ProcessingFailed)
        ]
        print(f"failures recorded: {len(failures)}")
        for f in failures[-10:]:
            print(f"  [{f.service}] {f.error_class}: {f.reason} file={f.file} field={f.field}")
        # Artifacts are known from their announcements only; a rewrite of the same bytes is announced once.
        per_dataset: dict[str, set[str]] = defaultdict(set)
        for e in await read_events(js, 0, ArtifactStored.static_subject()):
            if isinstance(e.data, ArtifactStored):
                per_dataset[e.data.dataset].add(e.data.key)
        print(f"artifacts: {sum(len(k) for k in per_dataset.values())} in {len(per_dataset)} dataset(s)")
        for dataset, keys in sorted(per_dataset.items()):
            print(f"  {dataset}: {len(keys)}")
    finally:
        await nc.close()
    return 0
