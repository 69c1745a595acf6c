"""A service's /metrics, /healthz and /readyz, as Prometheus and the kubelet see them."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cryobus.shared.health_http import HealthServer
from cryobus.shared.metrics import DURATION_BUCKETS_S, OUTCOMES, ServiceMetrics

LANDED = "cryobus.micrograph.landed.v1"


def get(port: int, path: str) -> tuple[int, str, str]:
    """GET http://127.0.0.1:<port><path> → (status, content type, body); 4xx/5xx are returned, not raised."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse exposition text (fails on malformed output) into {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics("render")


@pytest.fixture
def server(metrics: ServiceMetrics):
    state = {"ready": (False, "nats disconnected"), "calls": 0}

    def ready() -> tuple[bool, str]:
        state["calls"] += 1
        return state["ready"]

    srv = HealthServer(metrics, port=0, ready=ready)
    port = srv.start()
    yield srv, port, state
    srv.stop()


def test_handled_events_show_up_in_the_exposition(metrics: ServiceMetrics):
    metrics.events_processed.labels(service="render", event_type=LANDED, outcome="ok").inc(3)
    metrics.events_processed.labels(service="render", event_type=LANDED, outcome="retried").inc()
    metrics.event_duration.labels(service="render", event_type=LANDED).observe(0.2)
    metrics.event_duration.labels(service="render", event_type=LANDED).observe(420.0)
    metrics.failures.labels(service="render", error_class="transient").inc()
    metrics.in_flight.labels(service="render").inc(2)
    metrics.bytes_written.labels(service="render").inc(4096)
    metrics.artifacts_written.labels(service="render", role="preview").inc()

    got = samples(metrics.render().decode())

    def value(name: str, **labels: str) -> float:
        return got[(name, frozenset({"service": "render", **labels}.items()))]

    assert value("cryobus_events_processed_total", event_type=LANDED, outcome="ok") == 3
    assert value("cryobus_events_processed_total", event_type=LANDED, outcome="retried") == 1
    assert value("cryobus_event_duration_seconds_count", event_type=LANDED) == 2
    assert value("cryobus_event_duration_seconds_sum", event_type=LANDED) == pytest.approx(420.2)
    # 0.2 s lands between the 0.1 and 0.25 s buckets; 7 minutes is still below the 10 min bucket.
    assert value("cryobus_event_duration_seconds_bucket", event_type=LANDED, le="0.1") == 0
    assert value("cryobus_event_duration_seconds_bucket", event_type=LANDED, le="0.25") == 1
    assert value("cryobus_event_duration_seconds_bucket", event_type=LANDED, le="300.0") == 1
    assert value("cryobus_event_duration_seconds_bucket", event_type=LANDED, le="600.0") == 2
    assert value("cryobus_failures_total", error_class="transient") == 1
    assert value("cryobus_in_flight") == 2
    assert value("cryobus_artifact_bytes_written_total") == 4096
    assert value("cryobus_artifacts_written_total", role="preview") == 1


def test_duration_buckets_span_a_millisecond_to_ten_minutes():
    assert DURATION_BUCKETS_S[0] == 0.001 and DURATION_BUCKETS_S[-1] == 600.0
    assert list(DURATION_BUCKETS_S) == sorted(DURATION_BUCKETS_S)
    assert OUTCOMES == {"ok", "failed_permanent", "retried", "dead_lettered"}


def test_series_without_event_labels_exist_before_the_first_event(metrics: ServiceMetrics):
    got = samples(metrics.render().decode())
    assert got[("cryobus_in_flight", frozenset({("service", "render")}))] == 0
    assert got[("cryobus_artifact_bytes_written_total", frozenset({("service", "render")}))] == 0


def test_two_services_in_one_process_keep_separate_counts():
    render, convert = ServiceMetrics("render"), ServiceMetrics("convert")
    render.artifacts_written.labels(service="render", role="preview").inc()
    assert b'role="preview"' in render.render()
    assert b'role="preview"' not in convert.render()
    assert b'service="render"' not in convert.render()


def test_a_registry_passed_in_gets_only_the_cryobus_metrics():
    registry = CollectorRegistry()
    m = ServiceMetrics("metadata", registry=registry)
    names = {family.name for family in text_string_to_metric_families(m.render().decode())}
    assert names and all(name.startswith("cryobus_") for name in names)
    # The default own registry also carries process metrics (resident memory, CPU seconds).
    assert b"process_resident_memory_bytes" in ServiceMetrics("metadata").render()
    with pytest.raises(ValueError):
        ServiceMetrics("metadata", registry=registry)  # same names twice in one registry


def test_metrics_endpoint_serves_the_registry(metrics: ServiceMetrics, server):
    _, port, _ = server
    metrics.events_processed.labels(service="render", event_type=LANDED, outcome="dead_lettered").inc()
    status, ctype, body = get(port, "/metrics")
    assert status == 200
    assert ctype == CONTENT_TYPE_LATEST
    for name in (
        "cryobus_events_processed_total",
        "cryobus_event_duration_seconds",
        "cryobus_failures_total",
        "cryobus_in_flight",
        "cryobus_artifact_bytes_written_total",
        "cryobus_artifacts_written_total",
    ):
        assert f"# TYPE {name}" in body
    key = ("cryobus_events_processed_total", frozenset(
        {"service": "render", "event_type": LANDED, "outcome": "dead_lettered"}.items()
    ))  # fmt: skip
    assert samples(body)[key] == 1
    # A later scrape sees later increments: nothing is cached.
    metrics.events_processed.labels(service="render", event_type=LANDED, outcome="dead_lettered").inc()
    assert samples(get(port, "/metrics")[2])[key] == 2


def test_healthz_answers_ok_while_the_process_runs(server):
    _, port, _ = server
    assert get(port, "/healthz")[0::2] == (200, "ok\n")


def test_readyz_asks_on_every_request_and_flips(server):
    _, port, state = server
    assert get(port, "/readyz")[0::2] == (503, "nats disconnected\n")
    state["ready"] = (False, "consumer not bound")
    assert get(port, "/readyz")[0::2] == (503, "consumer not bound\n")
    state["ready"] = (True, "ready")
    assert get(port, "/readyz")[0::2] == (200, "ready\n")
    state["ready"] = (False, "nats disconnected")
    assert get(port, "/readyz")[0::2] == (503, "nats disconnected\n")
    assert state["calls"] == 4


def test_a_failing_readiness_check_reads_as_not_ready(metrics: ServiceMetrics):
    def broken() -> tuple[bool, str]:
        raise ConnectionResetError("socket gone")

    srv = HealthServer(metrics, ready=broken)
    port = srv.start()
    try:
        status, _, body = get(port, "/readyz")
        assert status == 503
        assert "ConnectionResetError: socket gone" in body
        assert get(port, "/healthz")[0] == 200  # liveness does not depend on readiness
    finally:
        srv.stop()


def test_unknown_paths_are_404(server):
    _, port, _ = server
    assert get(port, "/")[0] == 404
    assert get(port, "/metricsx")[0] == 404
    assert get(port, "/healthz?verbose=1")[0] == 200  # a query string does not change the route


def test_start_is_idempotent_and_stop_closes_the_port(metrics: ServiceMetrics):
    srv = HealthServer(metrics, ready=lambda: (True, "ready"))
    port = srv.start()
    assert srv.start() == port == srv.bound_port
    srv.stop()
    assert srv.bound_port is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    srv.stop()  # a second stop is harmless


def test_binding_a_port_in_use_fails_loudly(metrics: ServiceMetrics, server):
    _, port, _ = server
    with pytest.raises(OSError):
        HealthServer(metrics, port=port, ready=lambda: (True, "ready")).start()
