"""Bad input gets a clear `*.failed` event naming the file and the reason, nothing else is held
up, and the services keep running."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from .helpers import cryobus, events_in_state_dir

pytestmark = pytest.mark.slow

STAR_WITHOUT_DEFOCUS_U = """
# version 50001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
opticsGroup1 1 1.0 300.0 2.7 0.1

data_micrographs

loop_
_rlnMicrographName #1
_rlnOpticsGroup #2
_rlnDefocusV #3
_rlnCtfMaxResolution #4
_rlnCtfFigureOfMerit #5
MotionCorr/job002/Movies/a.mrc 1 15000.0 4.2 0.1
"""


def _age(path: Path) -> None:
    old = time.time() - 120
    os.utime(path, (old, old), follow_symlinks=False)


@pytest.fixture(scope="module")
def bad_run(shared_data: Path, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("bad")
    root = work / "facility"
    good = root / "session1"
    good.mkdir(parents=True)
    micrograph = shared_data / "sstagg__Magellon/CoreService/sandbox/particle_picking_demo/output" / \
        "24dec03a_00034gr_00005sq_v01_00003hl_00018ex_topaz_ds8.mrc"
    shutil.copy(micrograph, good / micrograph.name)
    lowmag = shared_data / "sstagg__Magellon/Sandbox/hole_square_detection_ptolemy/example_images/low_mag/20may08a_16760340.mrc"
    raw = lowmag.read_bytes()
    (good / "truncated_exposure.mrc").write_bytes(raw[: len(raw) // 2])
    project = root / "relionproj"
    (project / "CtfFind/job003").mkdir(parents=True)
    (project / "CtfFind/job003/micrographs_ctf.star").write_text(STAR_WITHOUT_DEFOCUS_U)
    (root / "J7").mkdir()
    (root / "J7/J7_particles.cs").write_text("this is not a numpy file\n")
    outside = work / "outside.mrc"
    shutil.copy(micrograph, outside)
    (good / "escape.mrc").symlink_to(outside)
    for p in [*root.rglob("*")]:
        _age(p)
    out = work / "out"
    proc = cryobus("up", "--watch", str(root), "--store", (out / "artifacts").as_uri(), "--state-dir",
                   str(out / "state"), "--exit-when-idle", "--idle-timeout", "240", timeout=400,
                   env={"CRYOBUS_SETTLE_S": "0.2"})
    events = events_in_state_dir(out / "state")
    failed = [e.data for e in events if e.type.endswith(".failed.v1")]
    return {"proc": proc, "root": root, "out": out, "events": events, "failed": failed, "micrograph": micrograph}


def _failure_for(failed, suffix: str):
    hits = [f for f in failed if f.file and f.file.endswith(suffix)]
    assert hits, f"no failure names {suffix}: {[(f.service, f.file, f.reason) for f in failed]}"
    return hits[0]


def test_run_reports_failure_in_exit_code_and_summary(bad_run):
    proc = bad_run["proc"]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    # truncated MRC (ingest), STAR without rlnDefocusU (metadata), the fake .cs (metadata for the
    # particle counts, render for the picks, convert for the particle tensors), the symlink out of
    # the roots (ingest)
    assert "failures: 6" in proc.stdout, proc.stdout[-3000:]


def test_truncated_mrc_is_refused_by_name(bad_run):
    f = _failure_for(bad_run["failed"], "truncated_exposure.mrc")
    assert f.service == "ingest" and f.error_class == "permanent"
    assert "promise" in f.reason or "truncated" in f.reason


def test_star_without_defocus_u_names_the_column(bad_run):
    f = _failure_for(bad_run["failed"], "CtfFind/job003/micrographs_ctf.star")
    assert f.service == "metadata" and f.field == "rlnDefocusU"


def test_cs_that_is_not_numpy_is_named(bad_run):
    hits = [f for f in bad_run["failed"] if f.file and f.file.endswith("J7/J7_particles.cs")]
    assert {f.service for f in hits} == {"metadata", "render", "convert"}
    assert all("numpy" in f.reason and f.error_class == "permanent" for f in hits)


def test_symlink_out_of_the_roots_is_refused(bad_run):
    f = _failure_for(bad_run["failed"], "escape.mrc")
    assert f.service == "ingest" and "outside the allowed roots" in f.reason


def test_good_input_beside_the_bad_is_still_processed(bad_run):
    name = bad_run["micrograph"].stem
    preview = bad_run["out"] / "artifacts" / "facility" / "webp" / f"{name}.webp"
    assert preview.is_file()
    assert not (bad_run["out"] / "artifacts" / "facility" / "webp" / "escape.webp").exists()
