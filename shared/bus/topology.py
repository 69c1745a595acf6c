"""Streams and durable consumers, provisioned explicitly and idempotently (create-or-update).

DESIGN.md: facts on ``cryobus.events.>`` in one limits-retention stream (kept, replayable),
commands on ``cryobus.commands.>``, dead letters on ``cryobus.dlq.>``. One durable pull
consumer per (service, stream), shared by all replicas of the service.

A consumer is configuration, not a side effect of subscribing: nats-py's ``pull_subscribe``
silently ignores a changed config for an existing durable, so we ``add_consumer`` (which the
server treats as create-or-update for mutable fields), then read the config back and refuse
to run on a config that differs from the declared one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

log = logging.getLogger(__name__)

EVENTS_STREAM = "CRYOBUS_EVENTS"
COMMANDS_STREAM = "CRYOBUS_COMMANDS"
DLQ_STREAM = "CRYOBUS_DLQ"


def replay_subject(service: str, original_subject: str) -> str:
    """Where a dead letter is sent back to one service: ``cryobus.commands.<service>.replay.<subject>``."""
    return f"cryobus.commands.{service}.replay.{original_subject}"


def replay_filter(service: str) -> str:
    """The filter a service's command consumer adds so it receives its replayed dead letters."""
    return f"cryobus.commands.{service}.replay.>"

EVENTS_SUBJECTS = "cryobus.events.>"
COMMANDS_SUBJECTS = "cryobus.commands.>"
DLQ_SUBJECTS = "cryobus.dlq.>"

# Long enough to absorb a rescan after a restart; reprocessing always uses new ids (see notes §1.7).
DUPLICATE_WINDOW_S = 20 * 60.0


class TopologyError(RuntimeError):
    """The server holds a stream/consumer whose config cannot be updated to the declared one."""


def stream_configs(*, replicas: int = 1, max_age_s: float = 0.0) -> list[StreamConfig]:
    """The three cryobus streams (file storage; ``max_age_s`` 0 keeps facts forever)."""
    common = dict(
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=max_age_s,
    )
    return [
        StreamConfig(name=EVENTS_STREAM, subjects=[EVENTS_SUBJECTS], description="cryobus facts", **common),
        StreamConfig(name=COMMANDS_STREAM, subjects=[COMMANDS_SUBJECTS], description="cryobus commands", **common),
        StreamConfig(name=DLQ_STREAM, subjects=[DLQ_SUBJECTS], description="cryobus dead letters", **common),
    ]


async def ensure_streams(js: JetStreamContext, *, replicas: int = 1, update_existing: bool = True) -> None:
    """Create the streams, or update them to the declared config.

    Args:
        js: JetStream context.
        replicas: JetStream replicas per stream (``CRYOBUS_STREAM_REPLICAS``).
        update_existing: services pass True (they own the topology); one-shot producers such as
            the CLI pass False so they never change a stream a deployment configured differently.
    """
    for cfg in stream_configs(replicas=replicas):
        try:
            await js.add_stream(cfg)
        except BadRequestError as exc:
            if not update_existing:
                continue
            # "stream name already in use with a different configuration": update in place.
            log.info("updating stream %s: %s", cfg.name, exc.description)
            await js.update_stream(cfg)


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer declared by a service."""

    stream: str
    durable: str
    filter_subjects: list[str] = field(default_factory=list)
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 1000

    def config(self) -> ConsumerConfig:
        subjects = sorted(self.filter_subjects)
        return ConsumerConfig(
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=subjects if len(subjects) > 1 else None,
        )


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Create or update a durable consumer and verify the server holds the declared config.

    Raises:
        TopologyError: the existing consumer cannot be changed to the declared config (e.g. its
            deliver policy differs); the message says which consumer and why.
    """
    cfg = spec.config()
    try:
        await js.add_consumer(spec.stream, cfg)
    except BadRequestError as exc:
        raise TopologyError(
            f"consumer {spec.stream}/{spec.durable} exists with a config that cannot be updated "
            f"({exc.description}); delete it (nats consumer rm {spec.stream} {spec.durable}) to recreate"
        ) from exc
    info = await js.consumer_info(spec.stream, spec.durable)
    got = info.config
    have_subjects = sorted(got.filter_subjects or ([got.filter_subject] if got.filter_subject else []))
    mismatches = []
    if have_subjects != sorted(spec.filter_subjects):
        mismatches.append(f"filter_subjects {have_subjects} != {sorted(spec.filter_subjects)}")
    if got.max_deliver != spec.max_deliver:
        mismatches.append(f"max_deliver {got.max_deliver} != {spec.max_deliver}")
    if got.ack_wait is not None and abs(got.ack_wait - spec.ack_wait_s) > 1e-3:
        mismatches.append(f"ack_wait {got.ack_wait} != {spec.ack_wait_s}")
    if mismatches:
        raise TopologyError(f"consumer {spec.stream}/{spec.durable} kept an old config: {'; '.join(mismatches)}")


async def consumer_exists(js: JetStreamContext, stream: str, durable: str) -> bool:
    try:
        await js.consumer_info(stream, durable)
        return True
    except NotFoundError:
        return False
