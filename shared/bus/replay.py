"""Read back past events from the event stream: the source of truth for reprocessing.

Facts are kept in a limits-retention stream (DESIGN.md, "Events"), so a service that must redo
work for a selection (``cryobus reprocess``) re-reads the events that caused it instead of
keeping its own list. An ephemeral pull consumer with ``AckPolicy.NONE`` reads the stream from
the start (or from ``since``) up to the last message present when the replay began.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timezone
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cryobus.shared.errors import InputError
from cryobus.shared.events import Envelope
from cryobus.shared.events.envelope import parse_envelope

log = logging.getLogger(__name__)
BATCH = 256


def parse_since(since: str | None) -> str | None:
    """Normalise an ISO 8601 time to the RFC 3339 UTC form JetStream expects (naive = UTC).

    Raises:
        InputError: not an ISO 8601 time (field ``since``).
    """
    if since is None:
        return None
    try:
        when = datetime.fromisoformat(since)
    except ValueError as err:
        raise InputError(f"not an ISO 8601 time: {since!r}", field="since") from err
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


async def replay(
    js: JetStreamContext, stream: str, subjects: list[str], *, since: str | None = None, after_seq: int = 0
) -> list[Envelope[Any]]:
    """Every parsable event on ``subjects`` in ``stream``, in stream order.

    Args:
        js: JetStream context.
        stream: stream name, e.g. ``CRYOBUS_EVENTS``.
        subjects: subject filters (wildcards allowed), e.g. ``["cryobus.events.job.discovered"]``.
        since: only messages published at or after this ISO 8601 time.
        after_seq: only messages with a stream sequence above this.

    Messages that do not parse (a retired event version, a foreign message) are skipped with a
    warning.

    Raises:
        InputError: bad ``since``.
        nats.js.errors.NotFoundError: the stream does not exist.
    """
    start = parse_since(since)
    info = await js.stream_info(stream)
    last = info.state.last_seq
    if last <= after_seq:
        return []
    if start:
        deliver = {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": start}
    elif after_seq:
        deliver = {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": after_seq + 1}
    else:
        deliver = {"deliver_policy": DeliverPolicy.ALL}
    name = f"replay-{uuid.uuid4().hex[:12]}"
    config = ConsumerConfig(
        name=name,
        filter_subjects=subjects,
        **deliver,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=60.0,
        mem_storage=True,
    )
    await js.add_consumer(stream, config=config)
    out: list[Envelope[Any]] = []
    try:
        sub = await js.pull_subscribe_bind(name, stream=stream)
        while True:
            try:
                msgs = await sub.fetch(BATCH, timeout=1.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nats-py raises either, by version/load
                break
            done = False
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if start is None and seq <= after_seq:
                    continue
                try:
                    out.append(parse_envelope(msg.data))
                except InputError as exc:
                    log.warning("replay: skipping unparsable message %s: %s", seq, exc.reason)
                if seq >= last or msg.metadata.num_pending == 0:
                    done = True
            if done:
                break
        await sub.unsubscribe()
    finally:
        try:
            await js.delete_consumer(stream, name)
        except Exception:  # noqa: BLE001 - it expires on its own after inactive_threshold
            pass
    return out
