"""``cryobus dlq``: list, inspect, replay and purge dead letters.

A dead letter is the original message, copied by the service that gave up on it to
``cryobus.dlq.<service>`` in the ``CRYOBUS_DLQ`` stream, with headers saying why
(``Cryobus-Reason``, ``Cryobus-Error-Class``, ``Cryobus-Deliveries``, ``Cryobus-Orig-Subject``;
see ``ServiceRuntime._dead_letter``). Its id here is its DLQ stream sequence.

Replay sends the original bytes back to *that service only*, on
``cryobus.commands.<service>.replay.<original subject>`` (every service's command consumer listens
there; the runtime dispatches by the envelope's type), under a new message id, then deletes the
dead letter. If it fails again it comes back as a new dead letter with a new reason.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import datetime

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cryobus.shared.bus.replay import parse_since
from cryobus.shared.bus.topology import DLQ_STREAM, replay_subject


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message.

    Attributes:
        seq: its sequence in the DLQ stream (the id ``show``/``replay`` take).
        service: the service that gave up.
        time: when it was dead-lettered.
        headers: the ``Cryobus-*`` headers (reason, error class, deliveries, original subject...).
        data: the original message bytes (a cryobus envelope, or whatever could not be parsed).
    """

    seq: int
    service: str
    time: datetime
    headers: dict[str, str]
    data: bytes

    @property
    def reason(self) -> str:
        return self.headers.get("Cryobus-Reason", "")

    @property
    def original_subject(self) -> str:
        return self.headers.get("Cryobus-Orig-Subject", "")


async def read_dead_letters(
    js: JetStreamContext, *, service: str | None = None, since: str | None = None, seqs: set[int] | None = None
) -> list[DeadLetter]:
    """Dead letters in stream order, optionally of one service / since a time / with given ids.

    Raises:
        InputError: bad ``since``.
    """
    start = parse_since(since)
    info = await js.stream_info(DLQ_STREAM)
    if info.state.messages == 0:
        return []
    last = info.state.last_seq
    config = ConsumerConfig(
        filter_subject=f"cryobus.dlq.{service}" if service else "cryobus.dlq.>",
        deliver_policy=DeliverPolicy.BY_START_TIME if start else DeliverPolicy.ALL,
        opt_start_time=start,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    sub = await js.pull_subscribe(config.filter_subject, durable=None, stream=DLQ_STREAM, config=config)
    out: list[DeadLetter] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(256, timeout=0.5)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nats-py raises either, by version/load
                break
            for m in msgs:
                seq = m.metadata.sequence.stream
                if seqs is None or seq in seqs:
                    out.append(DeadLetter(seq, m.subject.rsplit(".", 1)[-1], m.metadata.timestamp,
                                          dict(m.headers or {}), m.data))
            if not msgs or msgs[-1].metadata.sequence.stream >= last or msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


async def replay_dead_letters(js: JetStreamContext, letters: list[DeadLetter]) -> list[tuple[int, int]]:
    """Send each dead letter back to its service, then delete it; returns (dlq seq, commands-stream seq)."""
    done = []
    for letter in letters:
        subject = replay_subject(letter.service, letter.original_subject or "unknown")
        headers = {"Nats-Msg-Id": f"replay:{letter.service}:{letter.seq}:{uuid.uuid4().hex}",
                   "Cryobus-Replay-Of": str(letter.seq)}
        ack = await js.publish(subject, letter.data, headers=headers, timeout=10)
        await js.delete_msg(DLQ_STREAM, letter.seq)
        done.append((letter.seq, ack.seq))
    return done


async def purge_dead_letters(js: JetStreamContext, *, service: str | None = None) -> int:
    """Delete every dead letter (of one service); returns how many there were."""
    before = (await js.stream_info(DLQ_STREAM)).state.messages
    if service:
        await js.purge_stream(DLQ_STREAM, subject=f"cryobus.dlq.{service}")
    else:
        await js.purge_stream(DLQ_STREAM)
    return before - (await js.stream_info(DLQ_STREAM)).state.messages


def describe(letter: DeadLetter, *, full: bool = False) -> str:
    """One line (``list``) or the whole dead letter with its payload pretty-printed (``show``)."""
    h = letter.headers
    line = (f"{letter.seq:>6}  {letter.time:%Y-%m-%d %H:%M:%S}  {letter.service:<10} "
            f"{h.get('Cryobus-Error-Class', '?'):<17} x{h.get('Cryobus-Deliveries', '?'):<3} "
            f"{letter.original_subject}  {letter.reason[:160]}")
    if not full:
        return line
    try:
        body = json.dumps(json.loads(letter.data), indent=2, ensure_ascii=False)
    except (ValueError, UnicodeDecodeError):
        body = repr(letter.data[:4000])
    headers = "\n".join(f"  {k}: {v}" for k, v in sorted(h.items()))
    return f"dead letter {letter.seq} from {letter.service} at {letter.time.isoformat()}\n{headers}\n{body}"
