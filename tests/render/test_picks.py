"""Particle picks: read from RELION and CryoSPARC files, drawn where the particles are."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from cryosparc.dataset import Dataset

from cryobus.demo.synthetic import generate_acquisition
from cryobus.services.render import micrograph, picks
from cryobus.shared.errors import InputError
from cryobus.shared.formats import mrc


@pytest.fixture(scope="module")
def acquisition(tmp_path_factory):
    return generate_acquisition(tmp_path_factory.mktemp("acq"), n_micrographs=2, size=512, with_classes=False)


def test_relion_particles_match_the_true_picks(acquisition):
    found = picks.relion_particles(acquisition.root / "Extract/job009/particles.star")
    assert [p.micrograph for p in found] == [m.micrograph_path for m in acquisition.micrographs]
    for mp, truth in zip(found, acquisition.micrographs):
        assert np.allclose(mp.x, [p.x_px for p in truth.particles])
        assert np.allclose(mp.y, [p.y_px for p in truth.particles])
        # box rescaled back to micrograph pixels: box · particle px / micrograph px
        assert mp.box_px == pytest.approx(acquisition.particle_box * acquisition.particle_pixel_size_A / acquisition.pixel_size_A)


def test_circles_are_drawn_at_the_picks_in_the_flipped_preview(acquisition):
    mic = acquisition.micrographs[0]
    image, _ = mrc.read_image(acquisition.root / mic.micrograph_path)
    mp = picks.relion_particles(acquisition.root / "Extract/job009/particles.star")[0]
    factor = micrograph.binning_factor(image.shape, 256)
    preview = micrograph.preview(image, max_size=256)
    rgb = picks.draw_picks(preview, mp, binning=factor, radius=20)
    assert rgb.shape == (*preview.shape, 3)
    ring = np.all(rgb == picks.PICK_RGB, axis=2)
    h = preview.shape[0]
    for x, y in zip(mp.x / factor, mp.y / factor):
        if 12 <= x < preview.shape[1] - 12 and 12 <= y < h - 12:
            row, col = int(round(h - 1 - y)), int(round(x))
            # the circle (radius 10 px in the preview) passes near (row, col ± 10), not at the centre
            assert ring[row - 2 : row + 3, col + 8 : col + 13].any() or ring[row - 2 : row + 3, col - 12 : col - 7].any()


def test_relion_autopick_on_the_real_project(relion_project):
    pairs = picks.relion_coordinate_files(relion_project / "AutoPick/job008/autopick.star")
    assert len(pairs) == 10
    mic, coords = pairs[0]
    got = picks.relion_coordinates(relion_project / coords, mic)
    assert len(got.x) == len(got.y) > 10
    assert got.x[0] == pytest.approx(1614.217657) and got.y[0] == pytest.approx(112.882354)


def test_cryosparc_fractions_become_pixels(tmp_path):
    """Fixture written with cryosparc-tools from the documented ``location/*`` layout (no real
    CryoSPARC picking job is in shared/data)."""
    ds = Dataset.allocate(3, [
        ("location/micrograph_path", "O"), ("location/micrograph_shape", "<u4", (2,)),
        ("location/center_x_frac", "<f4"), ("location/center_y_frac", "<f4"), ("blob/shape", "<u4", (2,)),
    ])
    ds["location/micrograph_path"] = ["J2/motioncorrected/001_a.mrc", "J2/motioncorrected/001_a.mrc", "J2/motioncorrected/002_b.mrc"]
    ds["location/micrograph_shape"] = [[400, 600]] * 3
    ds["location/center_x_frac"] = [0.5, 0.25, 0.1]
    ds["location/center_y_frac"] = [0.5, 0.75, 0.2]
    ds["blob/shape"] = [[64, 64]] * 3
    path = tmp_path / "J5_picked_particles.cs"
    ds.save(path)
    found = picks.cryosparc_particles(path)
    assert [p.micrograph for p in found] == ["J2/motioncorrected/001_a.mrc", "J2/motioncorrected/002_b.mrc"]
    assert np.allclose(found[0].x, [300, 150]) and np.allclose(found[0].y, [200, 300])
    assert found[0].box_px == 64


def test_missing_coordinate_column_names_the_file_and_field(tmp_path, relion_project):
    bad = tmp_path / "bad_autopick.star"
    shutil.copy(relion_project / "AutoPick/job008/Movies/20170629_00021_frameImage_autopick.star", bad)
    bad.write_text(bad.read_text().replace("_rlnCoordinateY", "_rlnSomethingElse"))
    with pytest.raises(InputError) as err:
        picks.relion_coordinates(bad, "mic.mrc")
    assert err.value.field == "rlnCoordinateY" and err.value.file == str(bad)
