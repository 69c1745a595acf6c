"""A facility's story: a real RELION 5 project lands → `make demo DATA=… OUT=…` produces its
prismPYP metadata table, power-spectrum previews and class-average images, and reports the
micrographs that were never published as missing — once each — without holding anything up."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from PIL import Image

from .helpers import REPO, events_in_state_dir, stored_by_key, sha256_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(relion_project: Path, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("relion")
    data = work / "sppractice"
    shutil.copytree(relion_project, data)
    out = work / "out"
    proc = subprocess.run(
        ["make", "-s", "demo", f"DATA={data}", f"OUT={out}"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    events = events_in_state_dir(out / ".cryobus-state")
    return {"proc": proc, "data": data, "out": out, "dataset": out / "artifacts" / "sppractice", "events": events}


def test_demo_exits_zero_and_prints_where_artifacts_are(demo_run):
    proc = demo_run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cryobus run summary" in proc.stdout
    assert str(demo_run["dataset"]) in proc.stdout
    assert "missing referenced files" in proc.stdout


def test_metadata_table_matches_ctffind_star(demo_run, relion_project):
    table = pd.read_csv(demo_run["dataset"] / "micrograph_metadata.csv")
    header = (demo_run["dataset"] / "micrograph_metadata.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["micrograph_name", "rel_ice_thickness", "ctf_fit", "est_resolution", "avg_motion",
                          "num_particles", "mean_defocus"]
    ctf = starfile.read(relion_project / "CtfFind/job005/micrographs_ctf.star")["micrographs"]
    assert len(table) == len(ctf) == 24
    ctf = ctf.assign(micrograph_name=ctf["rlnMicrographName"].map(lambda p: Path(p).stem)).set_index("micrograph_name")
    t = table.set_index("micrograph_name").loc[ctf.index]
    np.testing.assert_allclose(t["mean_defocus"], (ctf["rlnDefocusU"] + ctf["rlnDefocusV"]) / 2, rtol=1e-9)
    np.testing.assert_allclose(t["est_resolution"], ctf["rlnCtfMaxResolution"], rtol=1e-9)
    np.testing.assert_allclose(t["ctf_fit"], ctf["rlnCtfFigureOfMerit"], rtol=1e-9)
    assert t["rel_ice_thickness"].isna().all()  # RELION has none: NaN, not prismPYP's constant 1
    assert (demo_run["dataset"] / "pixel_size.txt").read_text() == "0.885\n"
    listed = (demo_run["dataset"] / "all_micrographs_list.micrographs").read_text().split()
    assert sorted(listed) == sorted(ctf.index)


def test_particle_counts_equal_extract_job(demo_run, relion_project):
    table = pd.read_csv(demo_run["dataset"] / "micrograph_metadata.csv").set_index("micrograph_name")
    particles = starfile.read(relion_project / "Extract/job009/particles.star")["particles"]
    counts = particles["rlnMicrographName"].map(lambda p: Path(p).stem).value_counts()
    for name, n in counts.items():
        assert table.loc[name, "num_particles"] == n
    assert table["num_particles"].fillna(0).sum() == len(particles) == 2374


def test_motion_of_00021_comes_from_its_motioncorr_star(demo_run, relion_project):
    table = pd.read_csv(demo_run["dataset"] / "micrograph_metadata.csv").set_index("micrograph_name")
    motion = starfile.read(relion_project / "MotionCorr/job002/Movies/20170629_00021_frameImage.star")
    shifts = motion["global_shift"][["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy()
    pixel = float(motion["general"]["rlnMicrographOriginalPixelSize"])
    per_frame = np.linalg.norm(np.diff(shifts, axis=0), axis=1).mean() * pixel
    assert table.loc["20170629_00021_frameImage", "avg_motion"] == pytest.approx(per_frame, rel=1e-6)


def test_power_spectrum_preview_from_ctffind_diagnostic(demo_run):
    path = demo_run["dataset"] / "webp" / "20170629_00021_frameImage_ctffit.webp"
    with Image.open(path) as img:
        assert img.format == "WEBP" and min(img.size) >= 64
    done = [e.data for e in demo_run["events"] if e.type == "cryobus.render.completed.v1"
            and e.data.name == "20170629_00021_frameImage" and e.data.image_kind == "power_spectrum"]
    assert done and done[-1].method == "ctffind_diagnostic"
    assert done[-1].source.endswith("CtfFind/job005/Movies/20170629_00021_frameImage_PS.ctf")


def test_one_png_per_class_of_class2d_job010(demo_run):
    folder = demo_run["dataset"] / "class_averages" / "job010" / "it025"
    pngs = sorted(folder.glob("class_*.png"))
    assert [p.name for p in pngs] == [f"class_{k:03d}.png" for k in range(1, 51)]
    with Image.open(pngs[0]) as img:
        assert img.format == "PNG"


def test_missing_micrographs_reported_once_each_and_nothing_failed(demo_run):
    events = demo_run["events"]
    missing = [e for e in events if e.type == "cryobus.input.missing.v1"]
    paths = [e.data.path for e in missing]
    assert len(paths) == len(set(paths)), "a missing file was reported more than once"
    assert any(p.endswith("MotionCorr/job002/Movies/20170629_00022_frameImage.mrc") for p in paths)
    assert not [e for e in events if e.type.endswith(".failed.v1")]


def test_every_announced_artifact_exists_with_its_announced_content(demo_run):
    by_key = stored_by_key(demo_run["events"])
    root = demo_run["out"] / "artifacts"
    for key, shas in by_key.items():
        path = root / key
        assert path.is_file(), key
        if "micrograph_metadata" not in key and "micrographs" not in key:  # tables are upserted views
            assert len(shas) == 1, f"{key} written with different content"
        assert sha256_file(path) in shas
