"""RELION per-micrograph motion STAR: the drift of a real movie."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import starfile

from cryobus.shared.errors import InputError
from cryobus.shared.formats.relion_motion import read_motion_star

MOTION_STAR = "MotionCorr/job002/Movies/20170629_00021_frameImage.star"


def test_real_motion_star_track(relion_project: Path) -> None:
    track = read_motion_star(relion_project / MOTION_STAR)
    assert track.frame_numbers.tolist() == list(range(1, 25))
    assert track.original_pixel_size_A == pytest.approx(0.885)
    assert track.binning == 1.0
    assert track.n_movie_frames == 24
    assert track.shift_x_px.dtype == np.float64 and track.shift_x_px.shape == (24,)
    assert (track.shift_x_px[1], track.shift_y_px[1]) == pytest.approx((0.960904, -0.81203))


def test_mean_frame_displacement_is_the_mean_step_in_angstrom(relion_project: Path) -> None:
    raw = starfile.read(relion_project / MOTION_STAR)
    x = raw["global_shift"]["rlnMicrographShiftX"].to_numpy()
    y = raw["global_shift"]["rlnMicrographShiftY"].to_numpy()
    steps = [math.dist((x[i], y[i]), (x[i + 1], y[i + 1])) for i in range(len(x) - 1)]
    expected = sum(steps) / len(steps) * raw["general"]["rlnMicrographOriginalPixelSize"]
    assert read_motion_star(relion_project / MOTION_STAR).mean_frame_displacement_A == pytest.approx(expected, rel=1e-12)


def test_relion_accumulated_motion_is_the_path_length_in_pixels(relion_project: Path) -> None:
    mics = starfile.read(relion_project / "MotionCorr/job002/corrected_micrographs.star")["micrographs"]
    row = mics[mics["rlnMicrographMetadata"] == MOTION_STAR].iloc[0]
    track = read_motion_star(relion_project / MOTION_STAR)
    assert track.total_displacement_px == pytest.approx(row["rlnAccumMotionTotal"], abs=1e-5)
    # ...so it is not in Å, whatever RELION's label text says
    assert track.total_displacement_px * track.original_pixel_size_A != pytest.approx(row["rlnAccumMotionTotal"], abs=0.5)


def _write(path: Path, general: str, shifts: str | None) -> Path:
    text = f"data_general\n\n{general}\n\n"
    if shifts is not None:
        text += f"data_global_shift\n\nloop_\n_rlnMicrographFrameNumber #1\n_rlnMicrographShiftX #2\n_rlnMicrographShiftY #3\n{shifts}\n"
    path.write_text(text)
    return path


def test_frames_are_ordered_by_frame_number(tmp_path: Path) -> None:
    f = _write(tmp_path / "m.star", "_rlnMicrographOriginalPixelSize 2.0", "3 6.0 8.0\n1 0.0 0.0\n2 3.0 4.0")
    track = read_motion_star(f)
    assert track.frame_numbers.tolist() == [1, 2, 3]
    assert track.mean_frame_displacement_A == pytest.approx(10.0)  # steps of 5 px at 2 Å/px
    assert track.n_movie_frames is None


def test_one_frame_has_no_mean_displacement(tmp_path: Path) -> None:
    f = _write(tmp_path / "m.star", "_rlnMicrographOriginalPixelSize 1.0", "1 0.0 0.0")
    assert math.isnan(read_motion_star(f).mean_frame_displacement_A)


def test_missing_global_shift_block_is_refused(tmp_path: Path) -> None:
    f = _write(tmp_path / "m.star", "_rlnMicrographOriginalPixelSize 1.0", None)
    with pytest.raises(InputError) as err:
        read_motion_star(f)
    assert err.value.field == "data_global_shift"


def test_missing_pixel_size_is_refused(tmp_path: Path) -> None:
    f = _write(tmp_path / "m.star", "_rlnMicrographBinning 1.0", "1 0.0 0.0\n2 1.0 1.0")
    with pytest.raises(InputError) as err:
        read_motion_star(f)
    assert err.value.field == "rlnMicrographOriginalPixelSize"
    assert err.value.file == str(f)
