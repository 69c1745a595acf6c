"""deploy/docker/Dockerfile, read as a build would: a target per service, each carrying only
its own extra, running unprivileged, health-checked on /healthz, starting `cryobus run <name>`.

No container engine is available to the tests: the file is parsed with dockerfile-parse and
every stage's chain of ``FROM`` parents is followed to see what ends up in each image.
"""

from __future__ import annotations

import json
import re
import tomllib

import pytest
from dockerfile_parse import DockerfileParser

from tests.deploy.conftest import DEPLOY, REPO, all_services, registered_services

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


class Stages:
    """The stages of a multi-stage Dockerfile, with ARG defaults substituted."""

    def __init__(self, path):
        parser = DockerfileParser(path=str(path))
        self.args: dict[str, str] = {}
        self.stages: dict[str, dict] = {}
        current = None
        for ins in parser.structure:
            kind, value = ins["instruction"], ins["value"]
            if kind == "COMMENT":
                continue
            if kind == "ARG":
                name, _, default = value.partition("=")
                self.args.setdefault(name.strip(), default.strip())
                continue
            if kind == "FROM":
                m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", value, re.IGNORECASE)
                base, name = self.expand(m.group(1)), m.group(2)
                current = {"base": base, "instructions": []}
                self.stages[name or base] = current
                continue
            current["instructions"].append((kind, self.expand(value)))

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: self.args.get(m.group(1), m.group(0)), text)

    def chain(self, name: str) -> list[str]:
        """``name`` and its parent stages, outermost last."""
        out = [name]
        while self.stages[out[-1]]["base"] in self.stages:
            out.append(self.stages[out[-1]]["base"])
        return out

    def image(self, name: str) -> str:
        return self.stages[self.chain(name)[-1]]["base"]

    def instructions(self, name: str, kind: str, *, inherited: bool = True) -> list[str]:
        stages = self.chain(name) if inherited else [name]
        return [v for s in reversed(stages) for k, v in self.stages[s]["instructions"] if k == kind]

    def copied_from(self, name: str) -> list[str]:
        return [m.group(1) for v in self.instructions(name, "COPY", inherited=False)
                for m in [re.match(r"--from=(\S+)", v)] if m]

    def installed_extras(self, name: str) -> set[str]:
        """Extras named in ``pip install ".[x]"`` in this stage and every stage it copies from."""
        extras: set[str] = set()
        for stage in [name, *(s for src in self.copied_from(name) for s in self.chain(src))]:
            for run in self.instructions(stage, "RUN", inherited=True):
                for group in re.findall(r"\.\[([\w,-]+)\]", run):
                    extras.update(group.split(","))
        return extras

    def pip_installs(self, name: str) -> str:
        """Every RUN of the stages this image copies its files from, joined."""
        return " ".join(run for src in self.copied_from(name) for run in self.instructions(src, "RUN"))


STAGES = Stages(DOCKERFILE)


def test_there_is_a_target_for_every_service():
    assert set(registered_services()) <= set(STAGES.stages)
    assert set(all_services()) <= set(STAGES.stages)


@pytest.mark.parametrize("name", all_services())
def test_each_image_carries_only_its_own_extra(name):
    assert name in EXTRAS, f"pyproject.toml has no [{name}] extra"
    extras = STAGES.installed_extras(name)
    # A GPU image may add the service's own GPU extra (convert-gpu: cufinufft).
    gpu = {f"{name}-gpu"} if STAGES.image(name).startswith("nvidia/cuda:") else set()
    assert name in extras and extras <= {name} | gpu
    assert extras <= set(EXTRAS)


@pytest.mark.parametrize("name", all_services())
def test_each_image_runs_unprivileged_with_a_healthcheck_and_its_entrypoint(name):
    # The instruction in effect is the last one along the stage chain (Docker's inheritance).
    user = STAGES.instructions(name, "USER")[-1]
    uid = user.split(":")[0]
    assert uid not in ("0", "root") and (not uid.isdigit() or int(uid) >= 1000)
    health = STAGES.instructions(name, "HEALTHCHECK")[-1]
    assert "/healthz" in health and "CRYOBUS_HTTP_PORT" in health
    entry = STAGES.instructions(name, "ENTRYPOINT")[-1]
    assert json.loads(entry) == ["cryobus", "run", name]
    env = " ".join(STAGES.instructions(name, "ENV"))
    # /healthz must be reachable from outside the container (the probe, Prometheus).
    assert "CRYOBUS_HTTP_HOST=0.0.0.0" in env and re.search(r"CRYOBUS_HTTP_PORT=(\d+)", env)
    port = re.search(r"CRYOBUS_HTTP_PORT=(\d+)", env).group(1)
    assert port in " ".join(STAGES.instructions(name, "EXPOSE")).split()


@pytest.mark.parametrize("name", sorted(set(all_services()) - {"convert"}))
def test_cpu_services_use_a_slim_python_base(name):
    image = STAGES.image(name)
    assert image.startswith("python:") and "slim" in image
    assert "torch" not in STAGES.pip_installs(name)


def test_convert_uses_a_cuda_runtime_with_the_torch_pin_and_cufinufft():
    image = STAGES.image("convert")
    assert image.startswith("nvidia/cuda:") and "-runtime-" in image
    installs = STAGES.pip_installs("convert")
    pins = {m.group(1) for m in re.finditer(r"torch==([\w.+]+)", installs)}
    pyproject_pins = {m.group(1) for d in EXTRAS["convert"] for m in [re.fullmatch(r"torch==([\w.+]+)", d)] if m}
    assert pins == pyproject_pins == {"2.13.0"}
    # cufinufft, pinned, from an extra the image installs
    deps = [d for extra in STAGES.installed_extras("convert") for d in EXTRAS[extra]]
    assert any(re.fullmatch(r"cufinufft==[\d.]+", d) for d in deps)


def test_the_build_context_holds_what_the_dockerfile_copies():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "*" in ignore  # everything else (.venv, .git, tests, demo output) stays out
    for name in STAGES.stages:
        for copy in STAGES.instructions(name, "COPY", inherited=False):
            if copy.startswith("--from="):
                continue
            sources = copy.split()[:-1]
            for src in sources:
                assert src in included and (REPO / src).exists(), f"COPY {src}: not in the build context"
