"""compose.yaml is a valid Compose file and runs every service the way cryobus needs.

The file is validated offline with check-jsonschema against the compose-spec JSON Schema it
vendors (``--builtin-schema vendor.compose-spec``), then read for what the schema cannot know:
each service is built from its own Dockerfile target, configured only with real settings,
reaches NATS and MinIO, and is scraped by Prometheus.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO, all_services, registered_services, settings_env_names

COMPOSE = REPO / "compose.yaml"
# Not cryobus settings, but read by what cryobus uses: obstore's S3 configuration
# (shared/store/store.py) and CUDA's device selection (convert-cpu hides the GPU).
LIBRARY_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP",
               "CUDA_VISIBLE_DEVICES"}


def check_jsonschema(path: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("check-jsonschema")
    return subprocess.run([str(exe), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def cryobus_services(compose: dict) -> dict[str, dict]:
    """Compose services that run a cryobus image (built from deploy/docker/Dockerfile)."""
    return {n: s for n, s in compose["services"].items() if s.get("build", {}).get("dockerfile") == "deploy/docker/Dockerfile"}


def test_compose_file_matches_the_compose_spec_schema():
    out = check_jsonschema(COMPOSE)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_schema_check_rejects_an_invalid_file(tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text(COMPOSE.read_text().replace("    stop_grace_period: 45s\n", "    stop_grace_periode: 45s\n", 1))
    out = check_jsonschema(bad)
    assert out.returncode != 0 and "stop_grace_periode" in out.stdout + out.stderr


def test_every_service_has_a_compose_service_built_from_its_target(compose):
    ours = cryobus_services(compose)
    targets = {s["build"]["target"] for s in ours.values()}
    assert set(registered_services()) <= targets
    assert set(all_services()) == targets
    for name, svc in ours.items():
        assert svc["build"]["context"] == "."
        assert f"/{svc['build']['target']}:" in svc["image"]
        assert svc["depends_on"]["nats"]["condition"] == "service_healthy"
        assert svc["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_every_environment_variable_is_a_setting(compose):
    known = settings_env_names() | LIBRARY_ENV
    for name, svc in cryobus_services(compose).items():
        env = svc["environment"]
        unknown = sorted(set(env) - known)
        assert not unknown, f"{name}: not cryobus settings: {unknown}"
        assert env["CRYOBUS_NATS_URL"] == "nats://nats:4222"
        assert env["CRYOBUS_HTTP_HOST"] == "0.0.0.0"
        # The NATS user is the service's own (deploy/nats/nats-server.conf), its password the one the server gets.
        user = svc["build"]["target"]
        assert env["CRYOBUS_NATS_USER"] == user
        var = re.fullmatch(r"\$\{(\w+):-[^}]*\}", env["CRYOBUS_NATS_PASSWORD"]).group(1)
        assert var == f"NATS_PASSWORD_{user.upper()}" and var in compose["services"]["nats"]["environment"]
        # Compose stops with SIGTERM, then SIGKILL after stop_grace_period: it must outlast the runtime's grace.
        grace = float(env["CRYOBUS_SHUTDOWN_GRACE_S"])
        assert float(svc["stop_grace_period"].rstrip("s")) > grace


def test_nats_runs_jetstream_from_the_shipped_config_on_a_named_volume(compose):
    nats = compose["services"]["nats"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in nats["volumes"]}
    conf_in_container = nats["command"][nats["command"].index("--config") + 1]
    assert (REPO / mounts[conf_in_container]).resolve() == (DEPLOY / "nats" / "nats-server.conf").resolve()
    conf = (DEPLOY / "nats" / "nats-server.conf").read_text()
    store_dir = re.search(r'store_dir:\s*"([^"]+)"', conf).group(1)
    volume = next(src for dst, src in mounts.items() if store_dir.startswith(dst))
    assert volume in compose["volumes"]
    for user in re.findall(r"password: \$(NATS_PASSWORD_\w+)", conf):
        assert user in nats["environment"]


def test_minio_bucket_is_created_before_the_services_start(compose):
    init = compose["services"]["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing" in " ".join(init["command"])
    store_url = cryobus_services(compose)["render"]["environment"]["CRYOBUS_STORE_URL"]
    bucket_var = re.match(r"s3://\$\{(\w+):-([^}]+)\}", store_url)
    assert bucket_var.group(1) in init["environment"]


def test_convert_reserves_a_gpu_and_has_a_cpu_profile(compose):
    services = compose["services"]
    gpu, cpu = services["convert"], services["convert-cpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["cpu"]
    assert "deploy" not in cpu
    assert cpu["build"]["target"] == gpu["build"]["target"] == "convert"


def test_labelling_web_app_port_is_published(compose):
    labelling = compose["services"]["labelling"]
    env = labelling["environment"]
    assert env["CRYOBUS_LABELLING_HOST"] == "0.0.0.0"
    assert any(str(p).endswith(f":{env['CRYOBUS_LABELLING_PORT']}") for p in labelling["ports"])


def test_prometheus_scrapes_every_service(compose):
    prom = compose["services"]["prometheus"]
    mount = next(v for v in prom["volumes"] if v.endswith("/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((REPO / mount.split(":")[0]).read_text())
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                scraped[name] = sd["port"]
    for name, svc in cryobus_services(compose).items():
        assert scraped.get(name) == int(svc["environment"]["CRYOBUS_HTTP_PORT"]), f"{name} is not scraped"
