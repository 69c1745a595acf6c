"""The Grafana dashboard queries metrics that exist, with labels they carry.

cryobus metric names are taken from a live ``ServiceMetrics`` registry (shared/metrics.py),
not from a list written here, so a renamed metric breaks this test, not the dashboard.
"""

from __future__ import annotations

import json
import re

import pytest

from cryobus.shared.bus.topology import DLQ_STREAM, EVENTS_STREAM
from cryobus.shared.metrics import ServiceMetrics
from tests.deploy.conftest import DEPLOY

DASHBOARD = json.loads((DEPLOY / "grafana" / "cryobus-dashboard.json").read_text())
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}


def exposed() -> dict[str, set[str]]:
    """Series name → label names, for every cryobus metric a service exposes."""
    metrics = ServiceMetrics("probe")
    out: dict[str, set[str]] = {}
    for collector in (metrics.events_processed, metrics.event_duration, metrics.failures, metrics.in_flight,
                      metrics.bytes_written, metrics.artifacts_written):
        family = collector.describe()[0]
        for suffix in SUFFIXES[family.type]:
            out[family.name + suffix] = set(collector._labelnames) | ({"le"} if suffix == "_bucket" else set())
    return out


def panels() -> list[dict]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def exprs() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def test_every_panel_has_a_prometheus_query():
    assert panels()
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_cryobus_metrics_and_labels_exist():
    series = exposed()
    for expr in exprs():
        for name in re.findall(r"\b(cryobus_\w+)", expr):
            assert name in series, f"{name} is not exposed by shared/metrics.py"
        if "cryobus_" in expr:
            used = {label for group in re.findall(r"by \(([^)]*)\)", expr) for label in re.split(r",\s*", group)}
            used |= set(re.findall(r"(\w+)=~?\"", expr))
            allowed = set().union(*(series[n] for n in re.findall(r"\b(cryobus_\w+)", expr)))
            assert used <= allowed, f"labels {used - allowed} not on {expr}"


def test_outcomes_in_queries_are_the_runtime_outcomes():
    from cryobus.shared.metrics import OUTCOMES

    for expr in exprs():
        for outcome in re.findall(r'outcome="(\w+)"', expr):
            assert outcome in OUTCOMES


@pytest.mark.parametrize("topic,needle", [
    ("throughput", "cryobus_events_processed_total"),
    ("latency", "cryobus_event_duration_seconds_bucket"),
    ("failures", "cryobus_failures_total"),
    ("lag", "jetstream_consumer_num_pending"),
    ("dead letters", f'stream_name="{DLQ_STREAM}"'),
])
def test_the_dashboard_covers(topic, needle):
    assert any(needle in e for e in exprs()), topic


def test_stream_names_are_the_real_streams():
    names = {n for e in exprs() for n in re.findall(r'stream_name="(\w+)"', e)}
    assert names <= {EVENTS_STREAM, DLQ_STREAM}
