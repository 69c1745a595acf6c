"""How a service declares what it consumes: handlers typed by their event model.

A handler is a plain (synchronous) function ``handler(event: Envelope[Model], ctx: HandlerContext)``.
It runs in a worker thread, so CPU-heavy work (rendering, FFTs) never blocks heartbeats or
other messages. Its effects go through ``ctx``: artifacts are written at once; follow-up
events are collected and published by the runtime (with publish acks) *before* the message is
acked. Raise ``InputError`` for bad input, anything else is retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryobus.shared.events import ArtifactStored, Envelope, EventData, InputMissing, stable_event_id

if TYPE_CHECKING:
    from collections.abc import Buffer

    from cryobus.shared.bus.runtime import ServiceRuntime
    from cryobus.shared.config import Settings
    from cryobus.shared.store import ArtifactStore, StoredObject

Handler = Callable[[Envelope[Any], "HandlerContext"], None]
Background = Callable[["ServiceRuntime"], Awaitable[None]]


@dataclass
class Service:
    """A service's declaration: its name, handlers by event model, KV buckets and background tasks."""

    name: str
    handlers: dict[type[EventData], Handler] = field(default_factory=dict)
    kv_buckets: list[str] = field(default_factory=list)
    background: list[Background] = field(default_factory=list)

    def handler(self, model: type[EventData]) -> Callable[[Handler], Handler]:
        """Decorator: register ``fn`` as the handler of ``model`` events (or commands)."""

        def register(fn: Handler) -> Handler:
            self.handlers[model] = fn
            return fn

        return register

    def on_start(self, fn: Background) -> Background:
        """Decorator: run ``fn(runtime)`` as a background task while the service runs."""
        self.background.append(fn)
        return fn

    def handler_for(self, event_type: str) -> Handler | None:
        for model, fn in self.handlers.items():
            if model.static_type() == event_type:
                return fn
        return None

    def subjects(self, kind: str) -> list[str]:
        return sorted({m.static_subject() for m in self.handlers if m.kind == kind})


@dataclass
class PendingEvent:
    """A follow-up event waiting to be published once the handler returns."""

    data: EventData
    event_id: str


class HandlerContext:
    """What a handler may do: write artifacts, emit events, report missing inputs, use its KV state.

    Created per message by the runtime; used from the handler's worker thread.
    """

    def __init__(self, runtime: ServiceRuntime, event: Envelope[Any], loop: asyncio.AbstractEventLoop):
        self._runtime = runtime
        self._loop = loop
        self.event = event
        self.pending: list[PendingEvent] = []
        self.deliveries = 1  # set by the runtime from the message metadata
        self.log = logging.getLogger(f"cryobus.{runtime.service.name}")
        # Parameters of a reprocessing run (shared/bus/reprocess.py); None for ordinary work.
        self.reprocess_params: dict[str, object] | None = None

    @property
    def service(self) -> str:
        return self._runtime.service.name

    @property
    def settings(self) -> Settings:
        return self._runtime.settings

    @property
    def store(self) -> ArtifactStore:
        return self._runtime.store

    def emit(self, data: EventData, *, dedup_key: str | None = None, event_id: str | None = None) -> str:
        """Queue a follow-up event, published (with publish ack) before the message is acked.

        Its id is derived from the cause and ``dedup_key`` (default: the payload), so a redelivered
        message re-publishes the same id and the server drops the duplicate; ``event_id`` overrides
        it (discovery ids are derived from content instead, see ingest).
        """
        if event_id is None:
            key = dedup_key if dedup_key is not None else data.model_dump_json()
            event_id = stable_event_id(self.event.id, data.event_type(), key)
        self.pending.append(PendingEvent(data, event_id))
        return event_id

    def fail_item(self, reason: str, *, file: str | None, field: str | None = None, dataset: str | None = None) -> None:
        """One item of a multi-item input is bad (e.g. one corrupt image of a job): announce a
        ``<service>.failed`` event for it and carry on with the others."""
        from cryobus.shared.events import ProcessingFailed

        failed = ProcessingFailed(
            service=self.service,
            reason=reason,
            file=file,
            field=field,
            error_class="permanent",
            failed_event_id=self.event.id,
            failed_event_type=self.event.type,
            failed_subject=self.event.nats_subject,
            deliveries=self.deliveries,
            dataset=dataset,
        )
        self.pending.append(PendingEvent(failed, stable_event_id(self.event.id, "failed-item", file, field)))
        self.log.warning("bad item: %s (file=%s field=%s)", reason, file, field)

    def put_artifact(
        self,
        key: str,
        data: bytes | bytearray | memoryview | Iterable[Buffer],
        *,
        media_type: str,
        role: str,
        dataset: str,
        inputs: list[str],
    ) -> StoredObject:
        """Write ``data`` at ``key`` (atomic) and queue its ``artifact.stored`` event.

        ``data`` is the bytes, or an iterable of byte buffers written as they come
        (:meth:`~cryobus.shared.store.ArtifactStore.put_stream`). The event id depends only on
        (store, key, sha256): rewriting the same bytes is announced once.
        """
        if isinstance(data, (bytes, bytearray, memoryview)):
            stored = self.store.put(key, data, media_type=media_type)
        else:
            stored = self.store.put_stream(key, data, media_type=media_type)
        self._runtime.metrics.bytes_written.labels(service=self.service).inc(stored.size_bytes)
        self._runtime.metrics.artifacts_written.labels(service=self.service, role=role).inc()
        event = ArtifactStored(
            dataset=dataset,
            uri=stored.uri,
            key=stored.key,
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            media_type=media_type,
            producer=self.service,
            role=role,
            inputs=inputs,
        )
        # Announced at once (not at the end of the handler): the artifact exists now, and a
        # preview's latency should not wait for the rest of the job. Same id on a rewrite.
        self._publish_now(event, stable_event_id("artifact", self.store.url, stored.key, stored.sha256))
        return stored

    def report_missing(self, *, dataset: str, path: str, referenced_by: str, field: str | None = None) -> None:
        """Announce a referenced file that does not exist (once per (dataset, path), whoever notices)."""
        event = InputMissing(dataset=dataset, path=str(path), referenced_by=str(referenced_by), field=field)
        self.pending.append(PendingEvent(event, stable_event_id("missing", dataset, str(path))))
        self.log.warning("referenced file missing: %s (referenced by %s, %s)", path, referenced_by, field)

    def _publish_now(self, data: EventData, event_id: str) -> None:
        env = Envelope.wrap(
            data,
            source=self._runtime.source,
            id=event_id,
            correlation_id=self.event.correlation_id,
            causation_id=self.event.id,
        )
        self._call(self._runtime.publish_envelope(env))

    # --- the service's own key-value state (JetStream KV), bridged from the worker thread ---

    def _call(self, coro: Awaitable[Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        """Store ``value`` under ``key`` in one of the service's KV buckets; returns the revision."""
        return self._call(self._runtime.kv_put(bucket, key, value))

    def kv_get(self, bucket: str, key: str) -> bytes | None:
        return self._call(self._runtime.kv_get(bucket, key))

    def kv_claim(self, bucket: str, key: str, value: bytes) -> bytes | None:
        """Create ``key`` = ``value`` unless it exists (atomic across replicas); None when this call
        created it, else the value already there (which may be this same ``value``)."""
        return self._call(self._runtime.kv_claim(bucket, key, value))

    def kv_items(self, bucket: str, prefix: str) -> dict[str, tuple[bytes, int]]:
        """All (value, revision) under keys starting with ``prefix``."""
        return self._call(self._runtime.kv_items(bucket, prefix))

    def derived(self, event: Envelope[Any]) -> HandlerContext:
        """A context for handling ``event`` inside this message's handler (reprocessing replays)."""
        sub = HandlerContext(self._runtime, event, self._loop)
        sub.deliveries = self.deliveries
        return sub

    def publish_pending(self) -> None:
        """Publish the queued follow-up events now (with publish acks) and clear the queue.

        The runtime does this itself after a handler returns; a handler that drives other
        handlers (reprocessing) calls it per replayed event so progress is announced as it goes.
        """
        self._call(self._runtime._publish_pending(self, self.event), timeout=120.0)
        self.pending.clear()

    def replay(self, subjects: list[str], *, since: str | None = None, timeout: float = 300.0) -> list[Envelope[Any]]:
        """Past events on ``subjects`` from the event stream (see :mod:`cryobus.shared.bus.replay`)."""
        from cryobus.shared.bus.replay import replay
        from cryobus.shared.bus.topology import EVENTS_STREAM

        assert self._runtime.js is not None
        return self._call(replay(self._runtime.js, EVENTS_STREAM, subjects, since=since), timeout=timeout)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
