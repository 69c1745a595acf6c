"""Fixtures of the labelling tests: the real RELION Class2D job, a CryoSPARC 2D job built with
cryosparc-tools, label stores on SQLite and on a throw-away PostgreSQL cluster, and discovery of
jobs through ingest's own scanner (the events the service really receives)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryobus.services.ingest.recognise import scan_tree
from cryobus.services.ingest.roots import AllowedRoots
from cryobus.services.labelling.store import LabelStore
from cryobus.shared.events import JobDiscovered
from cryobus.shared.formats import star

CI = os.environ.get("CI") == "true"


def _missing(reason: str):
    if CI:
        pytest.fail(f"{reason} (CI=true: install it, see docs/labelling.md)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def job010(relion_project: Path) -> Path:
    """The real RELION 5 Class2D job (50 classes, iteration 25, 2374 particles)."""
    job = relion_project / "Class2D" / "job010"
    if not (job / "run_it025_model.star").is_file():
        _missing(f"{job} is missing")
    return job


def discover(root: Path, dataset: str | None = None) -> list[JobDiscovered]:
    """What ingest announces for ``root`` (every file counts as stable)."""
    result = scan_tree(root, dataset=dataset or root.name, allowed=AllowedRoots([root]), is_stable=lambda p: True)
    return [d for d in result.found if isinstance(d, JobDiscovered)]


@pytest.fixture(scope="session")
def relion_event(relion_project: Path, job010: Path) -> JobDiscovered:
    """ingest's ``job.discovered`` for Class2D/job010."""
    jobs = [j for j in discover(relion_project) if j.job_type == "Class2D"]
    assert len(jobs) == 1
    return jobs[0]


def make_cryosparc_2d_job(folder: Path, job010: Path, *, job: str = "J7", iterations=(19, 20), with_particles=True) -> Path:
    """A CryoSPARC 2D Classification job folder, written with cryosparc-tools.

    No real CryoSPARC 2D job is in ../shared/data (see its PROVENANCE.md), so this one is built
    from the documented field layout (cryosparc-tools ``Dataset`` fields that CryoSPARC's 2D
    job writes and Magellon's extractor reads): ``<job>_<iter>_class_averages.cs`` with
    ``blob/path``, ``blob/idx``, ``blob/shape``, ``blob/psize_A``, ``blob/res_A``; the
    ``.mrc`` stack beside it; ``<job>_<iter>_particles.cs`` with ``alignments2D/class``. The
    images, resolutions and particle classes are the real RELION job010's (its classes
    renumbered from 0, as CryoSPARC numbers them), so the expected values are known.
    """
    from cryosparc.dataset import Dataset

    job_dir = folder / job
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job.json").write_text('{"uid": "%s", "project_uid": "P1", "type": "class_2D"}' % job)
    with mrcfile.open(job010 / "run_it025_classes.mrcs", permissive=True) as m:
        images = np.array(m.data, dtype=np.float32)
    model = star.read_star(job010 / "run_it025_model.star")["model_classes"]
    res = model["rlnEstimatedResolution"].to_numpy(dtype=np.float64)
    particles = star.read_star(job010 / "run_it025_data.star")["particles"]
    classes = particles["rlnClassNumber"].to_numpy().astype(np.uint32) - 1
    n = images.shape[0]
    for it in iterations:
        prefix = f"{job}_{it:03d}"
        mrc_rel = f"{job}/{prefix}_class_averages.mrc"
        with mrcfile.new(folder / mrc_rel, overwrite=True) as m:
            m.set_data(images if it == iterations[-1] else images[::-1].copy())
            m.voxel_size = 3.54
        avg = Dataset.allocate(
            n,
            fields=[("blob/path", "O"), ("blob/idx", "u4"), ("blob/shape", "u4", (2,)), ("blob/psize_A", "f4"),
                    ("blob/sign", "f4"), ("blob/res_A", "f4")],
        )  # fmt: skip
        avg["blob/path"] = np.array([mrc_rel] * n, dtype=object)
        avg["blob/idx"] = np.arange(n, dtype=np.uint32)
        avg["blob/shape"] = np.tile(np.array(images.shape[1:], dtype=np.uint32), (n, 1))
        avg["blob/psize_A"] = 3.54
        avg["blob/sign"] = -1.0
        avg["blob/res_A"] = res.astype(np.float32)
        avg.save(job_dir / f"{prefix}_class_averages.cs")
        if with_particles:
            parts = Dataset.allocate(
                len(classes),
                fields=[("blob/path", "O"), ("blob/idx", "u4"), ("alignments2D/class", "u4"),
                        ("alignments2D/class_posterior", "f4"), ("alignments2D/psize_A", "f4")],
            )  # fmt: skip
            parts["blob/path"] = np.array([f"{job}/extract/particles.mrc"] * len(classes), dtype=object)
            parts["blob/idx"] = np.arange(len(classes), dtype=np.uint32)
            parts["alignments2D/class"] = classes
            parts["alignments2D/class_posterior"] = 0.95
            parts["alignments2D/psize_A"] = 3.54
            parts.save(job_dir / f"{prefix}_particles.cs")
    return job_dir


@pytest.fixture
def cryosparc_project(tmp_path: Path, job010: Path) -> Path:
    """A CryoSPARC project folder ``P1/`` holding one 2D job ``J7`` (iterations 19 and 20)."""
    project = tmp_path / "P1"
    make_cryosparc_2d_job(project, job010)
    return project


# ---------------------------------------------------------------------------- PostgreSQL


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL cluster (initdb + pg_ctl) on a random loopback port; yields its base URL.

    Skipped when PostgreSQL's server binaries are not installed (``apt-get install postgresql``),
    failed instead under CI=true. As root, the cluster runs as the ``postgres`` system user
    (PostgreSQL refuses to run as root).
    """
    bindir = _pg_bin()
    if bindir is None:
        _missing("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
    as_root = os.geteuid() == 0
    prefix: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="cryobus-pg-"))
    if as_root:
        if shutil.which("runuser") is None:
            _missing("runuser not found: cannot start PostgreSQL as a non-root user")
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres", "postgres")
    data, sock, logfile = base / "data", base / "sock", base / "server.log"
    port = _free_port()
    run = lambda *args: subprocess.run(prefix + [str(a) for a in args], check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run("mkdir", "-p", sock)
        run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync")
        run(
            bindir / "pg_ctl", "-D", data, "-l", logfile, "-w", "-t", "60", "-o",
            f"-F -p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=200", "start",
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr or exc.stdout}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def new_pg_database(server_url: str) -> str:
    """A fresh, empty database on the throw-away cluster; returns its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server_url}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> str:
    """A label-store URL, once on SQLite (a file) and once on PostgreSQL (a fresh database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.sqlite'}"
    return new_pg_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def store(db_url: str):
    s = LabelStore(db_url)
    try:
        yield s
    finally:
        s.close()
