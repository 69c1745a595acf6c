"""Central slices of tilt series and tomograms."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from cryobus.services.metadata.cryoet import imod
from cryobus.services.render import tomography
from cryobus.shared.errors import InputError

MAX = 1 << 30


def test_zero_tilt_section_from_the_real_tlt(shared_data):
    angles = imod.read_tilt_angles(shared_data / "turonova__cryoCAT/tests/test_data/TS_017/017.tlt")
    index = tomography.zero_tilt_section(angles, len(angles))
    assert abs(angles[index]) == min(abs(a) for a in angles)
    assert tomography.zero_tilt_section(angles, len(angles) + 1) == (len(angles) + 1) // 2  # count mismatch: middle


def test_tilt_series_slice_reads_the_zero_tilt_image(tmp_path):
    angles = [-6.0, -3.0, 0.0, 3.0, 6.0]
    stack = np.stack([np.full((16, 24), k, np.float32) for k in range(5)])
    path = tmp_path / "ts.mrc"
    mrcfile.write(path, stack)
    image, index = tomography.tilt_series_slice(path, [3.0, 6.0, 0.0, -3.0, -6.0], max_bytes=MAX)
    assert index == 2 and image.shape == (16, 24) and (image == 2).all()
    image, index = tomography.tilt_series_slice(path, None, max_bytes=MAX)
    assert index == 2
    del angles


@pytest.mark.parametrize("thin_axis", ["z", "y"])
def test_tomogram_slice_cuts_across_the_thinnest_axis(tmp_path, thin_axis):
    # A slab of value 1 in the middle of the thin axis, 0 elsewhere; the averaged slab of 3 sees only it.
    shape = (9, 40, 50) if thin_axis == "z" else (40, 9, 50)
    volume = np.zeros(shape, np.float32)
    if thin_axis == "z":
        volume[3:6] = 1.0
    else:
        volume[:, 3:6] = 1.0
    path = tmp_path / "tomo.rec"
    mrcfile.write(path, volume)
    image, axis = tomography.tomogram_slice(path, slab=3, max_bytes=MAX)
    assert axis == thin_axis
    assert image.shape == ((40, 50) if thin_axis == "z" else (40, 50))
    assert np.allclose(image, 1.0)
    image, _ = tomography.tomogram_slice(path, slab=9, max_bytes=MAX)
    assert np.allclose(image, 3 / 9)


def test_truncated_tomogram_is_a_clear_error(tmp_path):
    path = tmp_path / "tomo.mrc"
    mrcfile.write(path, np.zeros((8, 32, 32), np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        tomography.tomogram_slice(path, max_bytes=MAX)
    assert err.value.field == "nx*ny*nz" and "truncated" in err.value.reason
