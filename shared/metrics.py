"""Prometheus metrics every service exposes on ``/metrics`` (DESIGN.md, "Operations").

One :class:`ServiceMetrics` per service replica, each with its own ``CollectorRegistry`` so
tests, and several services run in one process (``cryobus up``), never collide on the
global registry.

Naming follows https://prometheus.io/docs/practices/naming/ : ``cryobus_`` prefix, base units
(seconds, bytes), counters end in ``_total``, low-cardinality labels only (service, event
type, outcome, error class, artifact role; never exposure ids or file names).

Timing async code (nats-jetstream-notes §6): ``@histogram.time()`` used as a decorator on an
``async def`` measures only coroutine creation. Use the context-manager form *inside* the
coroutine, or observe ``time.perf_counter()`` differences as the bus runtime does.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# The values the runtime puts in the `outcome` label of cryobus_events_processed_total.
OUTCOMES = frozenset({"ok", "failed_permanent", "retried", "dead_lettered"})

# Seconds, 1 ms … 10 min: a KV lookup at the bottom, a GPU conversion of a large stack at the
# top. The client's default buckets stop at 10 s, which would hide every slow job in +Inf.
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip


class ServiceMetrics:
    """The metric set of one service replica.

    Args:
        service: the service name, used as the ``service`` label value (e.g. ``"render"``).
        registry: where to register the metrics. ``None`` (the default) creates a fresh
            ``CollectorRegistry`` that also carries the process, platform and GC collectors
            (CPU seconds, resident memory, open fds, Python version, GC counts). A registry
            passed in gets only the cryobus metrics.

    Attributes:
        events_processed: Counter ``cryobus_events_processed_total{service,event_type,outcome}``;
            ``outcome`` is one of :data:`OUTCOMES`.
        event_duration: Histogram ``cryobus_event_duration_seconds{service,event_type}``,
            buckets :data:`DURATION_BUCKETS_S` (seconds).
        failures: Counter ``cryobus_failures_total{service,error_class}``.
        in_flight: Gauge ``cryobus_in_flight{service}`` (messages being handled now).
        bytes_written: Counter ``cryobus_artifact_bytes_written_total{service}`` (bytes).
        artifacts_written: Counter ``cryobus_artifacts_written_total{service,role}``.

    Raises:
        ValueError: ``registry`` already holds metrics of these names (prometheus_client's
            duplicate-timeseries check).
    """

    def __init__(self, service: str, registry: CollectorRegistry | None = None):
        self.service = service
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry

        self.events_processed = Counter(
            "cryobus_events_processed",
            "Events handled, by outcome (ok, failed_permanent, retried, dead_lettered).",
            ["service", "event_type", "outcome"],
            registry=registry,
        )
        self.event_duration = Histogram(
            "cryobus_event_duration_seconds",
            "Wall time from receipt to ack/nak of one event, in seconds.",
            ["service", "event_type"],
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.failures = Counter(
            "cryobus_failures",
            "Failed deliveries, by error class (permanent, transient, retries_exhausted...).",
            ["service", "error_class"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "cryobus_in_flight",
            "Messages this replica is handling right now.",
            ["service"],
            registry=registry,
        )
        self.bytes_written = Counter(
            "cryobus_artifact_bytes_written",
            "Bytes of artifacts written to the object store.",
            ["service"],
            registry=registry,
        )
        self.artifacts_written = Counter(
            "cryobus_artifacts_written",
            "Artifacts written to the object store, by role.",
            ["service", "role"],
            registry=registry,
        )
        # Series without event-dependent labels exist from the start, so dashboards and
        # rate() see a 0 rather than "no data" before the first event.
        self.in_flight.labels(service=service)
        self.bytes_written.labels(service=service)

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format 0.0.4 (UTF-8 bytes)."""
        return generate_latest(self.registry)
