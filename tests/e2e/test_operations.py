"""Operating cryobus: artifacts in S3 (moto's real S3 server on loopback), per-service
/healthz /readyz /metrics, JSON logs carrying event and correlation ids, and a clean Ctrl-C."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest

from cryobus.registry import DEFAULT_SERVICES

from .helpers import start_cryobus, wait_until, write_micrographs

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_up_with_s3_store_health_metrics_logs_and_clean_stop(nats_server, s3_env, s3_client, s3_prefix, tmp_path):
    watched = tmp_path / "grid1"
    names = [p.stem for p in write_micrographs(watched, 2, size=512)]
    state = tmp_path / "state"
    proc = start_cryobus(
        "up", "--nats", nats_server.url, "--watch", str(watched), "--store", f"s3://{s3_env.bucket}/{s3_prefix}",
        "--state-dir", str(state), log=tmp_path / "up.log",
    )
    try:
        def keys() -> set[str]:
            listed = s3_client.list_objects_v2(Bucket=s3_env.bucket, Prefix=s3_prefix)
            return {o["Key"] for o in listed.get("Contents", [])}

        wanted = {f"{s3_prefix}/grid1/webp/{n}.webp" for n in names}
        assert wait_until(lambda: wanted <= keys(), 90), (tmp_path / "up.log").read_text()[-3000:]
        head = s3_client.head_object(Bucket=s3_env.bucket, Key=sorted(wanted)[0])
        assert head["ContentType"] == "image/webp"

        # <service>-<pid>.url: each replica's /healthz, /readyz, /metrics (labelling-web.url is the web app)
        def health_urls() -> dict[str, str]:
            return {p.stem.rsplit("-", 1)[0]: p.read_text().strip() for p in (state / "http").glob("*-[0-9]*.url")}

        # convert imports torch before it listens: give every service the time to come up
        assert wait_until(lambda: set(health_urls()) == set(DEFAULT_SERVICES), 60), health_urls()
        urls = health_urls()
        for service, url in urls.items():
            assert _get(url + "/healthz")[0] == 200
            status, reason = _get(url + "/readyz")
            assert status == 200, (service, reason)
        status, metrics = _get(urls["render"] + "/metrics")
        assert status == 200
        assert 'cryobus_events_processed_total{event_type="cryobus.exposure.discovered.v1",outcome="ok",service="render"} 2.0' in metrics
        assert "cryobus_artifact_bytes_written_total" in metrics

        lines = [json.loads(line) for line in (state / "logs" / "render-0.log").read_text().splitlines() if line.startswith("{")]
        assert lines and all({"time", "level", "message", "service"} <= set(line) for line in lines)
        processed = [line for line in lines if line["message"].startswith("processed cryobus.exposure.discovered")]
        assert len(processed) == 2 and all(line.get("event_id") and line.get("correlation_id") for line in processed)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    assert code == 0
    log = (state / "logs" / "render-0.log").read_text()
    assert "service render stopped" in log  # drained and exited on SIGTERM, not killed
    assert not list((state / "http").glob("*.url"))
