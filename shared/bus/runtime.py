"""The one consumer loop every service runs (DESIGN.md, "Delivery semantics").

Per message: parse and validate the envelope → run the handler in a worker thread while
sending ``in_progress`` heartbeats → publish its follow-up events and wait for their publish
acks → ack. Failures are classified:

* ``InputError`` (and an envelope that does not validate): permanent. The original message is
  copied to ``cryobus.dlq.<service>``, a ``cryobus.events.<service>.failed`` event says what is
  wrong, and the message is terminated. Nothing is retried, nothing loops.
* anything else: transient. ``nak`` with backoff; on the ``max_deliver``-th delivery the message
  is dead-lettered the same way (``error_class="retries_exhausted"``).
* a message whose ``max_deliver`` attempts were all cut short (replica killed or stopped before a
  verdict) comes once more (the consumer allows ``max_deliver + 1``) and is dead-lettered unrun.

A replica killed with SIGKILL loses nothing: its unacked messages are redelivered after
``ack_wait``. On SIGTERM the runtime stops fetching, lets in-flight work finish for up to
``shutdown_grace_s``, naks what is still running, unsubscribes (before ``drain()``: see the
drain pitfall in nats-jetstream-notes §1.2), drains, and returns.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError, NoKeysError

from cryobus.shared.bus.connection import connect_with_retry
from cryobus.shared.bus.service import HandlerContext, Service
from cryobus.shared.bus.topology import (
    COMMANDS_STREAM,
    EVENTS_STREAM,
    ConsumerSpec,
    ensure_consumer,
    ensure_streams,
    replay_filter,
)
from cryobus.shared.config import Settings
from cryobus.shared.errors import InputError
from cryobus.shared.events import Envelope, EventData, ProcessingFailed, stable_event_id
from cryobus.shared.events.envelope import parse_envelope
from cryobus.shared.health_http import HealthServer
from cryobus.shared.logging import event_context
from cryobus.shared.metrics import ServiceMetrics
from cryobus.shared.store import open_store

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 1.0


class ServiceRuntime:
    """Runs one replica of a service against NATS JetStream.

    Args:
        service: the service declaration (handlers, KV buckets, background tasks).
        settings: runtime settings (NATS URL, store URL, delivery limits...).
    """

    def __init__(self, service: Service, settings: Settings):
        self.service = service
        self.settings = settings
        self.store = open_store(settings.store_url)
        self.metrics = ServiceMetrics(service.name)
        self.source = f"/cryobus/{service.name}"
        self.nc: Any = None
        self.js: JetStreamContext | None = None
        self._stop = asyncio.Event()
        self._bound = False
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._inflight: dict[asyncio.Task[None], Msg] = {}
        self._kv: dict[str, Any] = {}
        self.http: HealthServer | None = None
        self._url_file: Path | None = None

    # ------------------------------------------------------------------ topology

    def consumer_specs(self) -> list[ConsumerSpec]:
        """This service's durable consumers: one on the events stream (if it handles events), one on commands.

        The server may deliver a message once more than the handler may run (``max_deliver + 1``):
        that last delivery only dead-letters it. Otherwise a message whose every delivery was cut
        short (replica killed or stopped) would be dropped by the server without a trace.
        """
        s = self.settings
        specs = []
        server_max_deliver = s.max_deliver + 1
        events = self.service.subjects("event")
        if events:
            specs.append(ConsumerSpec(EVENTS_STREAM, self.service.name, events, s.ack_wait_s, server_max_deliver))
        # Every service has a command consumer: its own commands, and its dead letters sent back
        # by `cryobus dlq replay` (dispatched by the envelope's type like any event).
        commands = [*self.service.subjects("command"), replay_filter(self.service.name)]
        specs.append(
            ConsumerSpec(COMMANDS_STREAM, f"{self.service.name}-commands", commands, s.ack_wait_s, server_max_deliver)
        )
        return specs

    async def provision(self) -> None:
        assert self.js is not None
        await ensure_streams(self.js, replicas=self.settings.stream_replicas)
        for spec in self.consumer_specs():
            await ensure_consumer(self.js, spec)
        for bucket in self.service.kv_buckets:
            try:
                self._kv[bucket] = await self.js.key_value(bucket)
            except BucketNotFoundError:
                self._kv[bucket] = await self.js.create_key_value(
                    KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE)
                )

    # ------------------------------------------------------------------ lifecycle

    def ready(self) -> tuple[bool, str]:
        if self.nc is None or not self.nc.is_connected:
            return False, "nats disconnected"
        if not self._bound:
            return False, "consumer not bound"
        return True, "ready"

    def request_stop(self) -> None:
        """Stop fetching and shut down gracefully (what SIGTERM does)."""
        self._stop.set()

    async def run(self) -> None:
        """Connect, provision, consume until ``request_stop()``, then shut down gracefully."""
        self.http = HealthServer(
            self.metrics, host=self.settings.http_host, port=self.settings.http_port, ready=self.ready
        )
        port = self.http.start()
        url = f"http://{self.settings.http_host}:{port}"
        log.info("service %s: /metrics /healthz /readyz on %s", self.service.name, url)
        # Where `cryobus up` users (and tests) find a replica's endpoints when the port was picked at random.
        self._url_file = Path(self.settings.state_dir) / "http" / f"{self.service.name}-{os.getpid()}.url"
        try:
            self._url_file.parent.mkdir(parents=True, exist_ok=True)
            self._url_file.write_text(url + "\n")
        except OSError:
            self._url_file = None

        self.nc = await connect_with_retry(self.settings, f"cryobus-{self.service.name}", on_reconnect=self._on_reconnect)
        self.js = self.nc.jetstream()
        await self.provision()
        subs = [await self.js.pull_subscribe_bind(spec.durable, stream=spec.stream) for spec in self.consumer_specs()]
        # The first consumer (events, or commands alone) pulls as many messages as there are free
        # slots; the others (commands beside events) must not hold a slot in an idle long-poll,
        # which would starve the first one (max_in_flight=1: every event waited out that poll).
        fetchers = [asyncio.create_task(self._fetch_loop(subs[0]))] if subs else []
        fetchers += [asyncio.create_task(self._side_fetch_loop(sub)) for sub in subs[1:]]
        background = [asyncio.create_task(self._run_background(fn)) for fn in self.service.background]
        self._bound = True
        log.info("service %s consuming %s", self.service.name, [s.durable for s in self.consumer_specs()])

        await self._stop.wait()
        log.info("service %s stopping: %d message(s) in flight", self.service.name, len(self._inflight))
        self._bound = False
        for task in fetchers + background:
            task.cancel()
        await asyncio.gather(*fetchers, *background, return_exceptions=True)
        await self._finish_in_flight()
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - best effort during shutdown
                pass
        try:
            await asyncio.wait_for(self.nc.drain(), timeout=5)
        except Exception:  # noqa: BLE001
            await self.nc.close()
        self.http.stop()
        if self._url_file is not None:
            self._url_file.unlink(missing_ok=True)
        log.info("service %s stopped", self.service.name)

    async def _finish_in_flight(self) -> None:
        if not self._inflight:
            return
        done, pending = await asyncio.wait(set(self._inflight), timeout=self.settings.shutdown_grace_s)
        for task in pending:
            msg = self._inflight.get(task)
            if msg is not None:
                try:
                    await msg.nak()  # hand it back: another replica (or our restart) takes it
                except Exception:  # noqa: BLE001
                    pass
            task.cancel()

    async def _on_reconnect(self) -> None:
        # JetStream state is not restored by the client after a reconnect (nats.py #504): re-declare.
        try:
            await self.provision()
        except Exception as exc:  # noqa: BLE001
            log.warning("re-provisioning after reconnect failed: %s", exc)

    async def _run_background(self, fn: Any) -> None:
        while not self._stop.is_set():
            try:
                await fn(self)
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a background task must not take the service down
                log.exception("background task %s failed; restarting in 2 s", getattr(fn, "__name__", fn))
                await asyncio.sleep(2)

    # ------------------------------------------------------------------ consuming

    async def _fetch_loop(self, sub: Any) -> None:
        """Pull as many messages as there are free slots (at least one), never more."""
        while not self._stop.is_set():
            await self._slots.acquire()
            taken = 1
            while taken < self.settings.max_in_flight and not self._slots.locked():
                await self._slots.acquire()  # free slot: returns at once
                taken += 1
            if self._stop.is_set():
                self._release(taken)
                return
            try:
                msgs = await sub.fetch(taken, timeout=FETCH_TIMEOUT_S)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nats-py raises either, by version/load
                self._release(taken)
                continue
            except asyncio.CancelledError:
                self._release(taken)
                raise
            except Exception as exc:  # noqa: BLE001 - disconnected, server restarting...
                self._release(taken)
                log.debug("fetch failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            self._release(taken - len(msgs))
            for msg in msgs:
                self._start(msg)

    async def _side_fetch_loop(self, sub: Any) -> None:
        """Long-poll a secondary consumer for one message without holding a slot; then wait for a
        free slot (keeping the message alive with heartbeats) before processing it, so the total in
        flight still never exceeds ``max_in_flight``."""
        interval = max(self.settings.ack_wait_s / 3.0, 0.2)
        while not self._stop.is_set():
            try:
                msgs = await sub.fetch(1, timeout=FETCH_TIMEOUT_S)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - disconnected, server restarting...
                log.debug("fetch failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                try:
                    while True:
                        try:
                            await asyncio.wait_for(self._slots.acquire(), timeout=interval)
                            break
                        except asyncio.TimeoutError:
                            await msg.in_progress()
                except asyncio.CancelledError:
                    await asyncio.shield(self._nak_quietly(msg))  # stopping: hand it back now, not after ack_wait
                    raise
                self._start(msg)

    async def _nak_quietly(self, msg: Msg) -> None:
        try:
            await msg.nak()
        except Exception:  # noqa: BLE001 - it comes back after ack_wait anyway
            pass

    def _start(self, msg: Msg) -> None:
        """Process ``msg`` in its own task; it holds one slot until done."""
        task = asyncio.create_task(self._process(msg))
        self._inflight[task] = msg
        self.metrics.in_flight.labels(service=self.service.name).inc()
        task.add_done_callback(self._done)

    def _release(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self.metrics.in_flight.labels(service=self.service.name).dec()
        self._slots.release()

    async def _heartbeat(self, msg: Msg) -> None:
        interval = max(self.settings.ack_wait_s / 3.0, 0.2)
        while True:
            await asyncio.sleep(interval)
            try:
                await msg.in_progress()
            except Exception:  # noqa: BLE001 - a missed heartbeat only risks a redelivery
                pass

    async def _process(self, msg: Msg) -> None:
        deliveries = msg.metadata.num_delivered
        try:
            env = parse_envelope(msg.data)
        except InputError as exc:
            await self._dead_letter(msg, None, exc.reason, None, exc.field, "permanent", deliveries)
            return
        handler = self.service.handler_for(env.type)
        if handler is None:  # filtered subjects make this rare: an event type this service does not handle
            await msg.ack()
            return
        if deliveries > self.settings.max_deliver:  # every attempt was cut short: the server's last delivery
            reason = f"delivered {deliveries} times without completing (replica killed, stopped or disconnected each time)"
            log.error("giving up: %s", reason)
            await self._dead_letter(msg, env, reason, None, None, "retries_exhausted", deliveries)
            return
        labels = dict(service=self.service.name, event_type=env.type)
        t0 = time.perf_counter()
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        with event_context(env.id, env.correlation_id, env.type):
            try:
                ctx = HandlerContext(self, env, asyncio.get_running_loop())
                ctx.deliveries = deliveries
                await asyncio.to_thread(handler, env, ctx)
                await self._publish_pending(ctx, env)
                await msg.ack()
                self.metrics.events_processed.labels(**labels, outcome="ok").inc()
                log.info("processed %s in %.3f s", env.type, time.perf_counter() - t0)
            except InputError as exc:
                log.warning("bad input: %s", exc)
                await self._dead_letter(msg, env, exc.reason, exc.file, exc.field, "permanent", deliveries)
                self.metrics.events_processed.labels(**labels, outcome="failed_permanent").inc()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - transient by default
                if deliveries >= self.settings.max_deliver:
                    log.error("giving up after %d deliveries: %s", deliveries, exc, exc_info=True)
                    await self._dead_letter(
                        msg, env, f"{type(exc).__name__}: {exc}", None, None, "retries_exhausted", deliveries
                    )
                    self.metrics.events_processed.labels(**labels, outcome="dead_lettered").inc()
                else:
                    backoff = self.settings.nak_backoff_s
                    delay = backoff[min(deliveries - 1, len(backoff) - 1)] if backoff else 0
                    log.warning("transient failure (delivery %d), retrying in %.1f s: %s", deliveries, delay, exc)
                    self.metrics.failures.labels(service=self.service.name, error_class="transient").inc()
                    self.metrics.events_processed.labels(**labels, outcome="retried").inc()
                    try:
                        await msg.nak(delay=delay)
                    except Exception:  # noqa: BLE001 - ack_wait expiry redelivers it anyway
                        pass
            finally:
                heartbeat.cancel()
                self.metrics.event_duration.labels(**labels).observe(time.perf_counter() - t0)

    async def _publish_pending(self, ctx: HandlerContext, cause: Envelope[Any]) -> None:
        envelopes = [
            Envelope.wrap(
                p.data, source=self.source, id=p.event_id, correlation_id=cause.correlation_id, causation_id=cause.id
            )
            for p in ctx.pending
        ]
        # Publish concurrently, in bounded chunks; each waits for its publish ack.
        for i in range(0, len(envelopes), 64):
            await asyncio.gather(*(self.publish_envelope(e) for e in envelopes[i : i + 64]))

    async def _dead_letter(
        self,
        msg: Msg,
        env: Envelope[Any] | None,
        reason: str,
        file: str | None,
        field: str | None,
        error_class: str,
        deliveries: int,
    ) -> None:
        """Copy the message to the DLQ, announce the failure, then terminate it (in that order)."""
        assert self.js is not None
        meta = msg.metadata
        stream, seq = meta.stream, meta.sequence.stream
        self.metrics.failures.labels(service=self.service.name, error_class=error_class).inc()
        headers = {
            "Nats-Msg-Id": f"dlq:{self.service.name}:{stream}:{seq}",
            "Cryobus-Orig-Subject": msg.subject,
            "Cryobus-Orig-Stream": stream,
            "Cryobus-Orig-Seq": str(seq),
            "Cryobus-Deliveries": str(deliveries),
            "Cryobus-Error-Class": error_class,
            "Cryobus-Reason": reason[:2000].replace("\n", " ").replace("\r", " "),
        }
        data = getattr(env, "data", None)
        failed = ProcessingFailed(
            service=self.service.name,
            reason=reason,
            file=file,
            field=field,
            error_class=error_class,  # type: ignore[arg-type]
            failed_event_id=env.id if env else None,
            failed_event_type=env.type if env else None,
            failed_subject=msg.subject,
            deliveries=deliveries,
            dataset=getattr(data, "dataset", None) if isinstance(data, EventData) else None,
        )
        failed_env = Envelope.wrap(
            failed,
            source=self.source,
            id=stable_event_id("failed", self.service.name, stream, seq),
            correlation_id=env.correlation_id if env else None,
            causation_id=env.id if env else None,
        )
        try:
            await self.js.publish(f"cryobus.dlq.{self.service.name}", msg.data, headers=headers, timeout=10)
            await self.publish_envelope(failed_env)
            await msg.term()
        except Exception as exc:  # noqa: BLE001 - could not record the failure: hand the message back
            log.error("could not dead-letter message %s/%s: %s", stream, seq, exc)
            try:
                await msg.nak(delay=2.0)
            except Exception:  # noqa: BLE001
                pass

    # ------------------------------------------------------------------ publishing & KV

    async def publish_envelope(self, env: Envelope[Any]) -> Any:
        """Publish with ``Nats-Msg-Id`` = envelope id and wait for the publish ack."""
        assert self.js is not None
        return await self.js.publish(env.nats_subject, env.to_json(), headers={"Nats-Msg-Id": env.id}, timeout=10)

    async def publish(
        self, data: EventData, *, id: str | None = None, correlation_id: str | None = None, causation_id: str | None = None
    ) -> Envelope[Any]:
        """Publish a new fact or command (used by producers such as ingest)."""
        env = Envelope.wrap(data, source=self.source, id=id, correlation_id=correlation_id, causation_id=causation_id)
        await self.publish_envelope(env)
        return env

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        return await self._kv[bucket].put(key, value)

    async def kv_claim(self, bucket: str, key: str, value: bytes) -> bytes | None:
        """Create ``key`` with ``value`` unless it exists (atomic on the server); None if created,
        else the value already there."""
        kv = self._kv[bucket]
        try:
            await kv.create(key, value)
            return None
        except KeyWrongLastSequenceError:
            entry = await kv.get(key)
            return entry.value or b""

    async def kv_get(self, bucket: str, key: str) -> bytes | None:
        try:
            entry = await self._kv[bucket].get(key)
        except Exception:  # noqa: BLE001 - KeyNotFoundError / deleted
            return None
        return entry.value

    async def kv_items(self, bucket: str, prefix: str) -> dict[str, tuple[bytes, int]]:
        kv = self._kv[bucket]
        try:
            keys = await kv.keys()
        except NoKeysError:
            return {}
        out: dict[str, tuple[bytes, int]] = {}
        for key in sorted(k for k in keys if k.startswith(prefix)):
            try:
                entry = await kv.get(key)
            except Exception:  # noqa: BLE001 - deleted between keys() and get()
                continue
            out[key] = (entry.value or b"", entry.revision or 0)
        return out


def run_service(service: Service, settings: Settings) -> int:
    """Run one replica until SIGTERM/SIGINT; returns the process exit code (0 after a clean stop)."""

    async def main() -> None:
        runtime = ServiceRuntime(service, settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runtime.request_stop)
        await runtime.run()

    asyncio.run(main())
    return 0
