"""A tomogram → an NGFF 0.4 pyramid whose levels are block means, written slab by slab."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from cryobus.services.metadata.cryoet.omezarr import write_multiscale
from tests.cryoet.conftest import write_mrc


def _mean_pool(a: np.ndarray, fz: int) -> np.ndarray:
    """Reference 2x2x2 (or 1x2x2) mean with edge padding, on the whole array at once."""
    pad = [(0, (-a.shape[0]) % fz), (0, a.shape[1] % 2), (0, a.shape[2] % 2)]
    a = np.pad(a.astype(np.float64), pad, mode="edge")
    z, y, x = a.shape
    return a.reshape(z // fz, fz, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5))


def test_slabwise_pyramid_equals_whole_volume_pooling(tmp_path: Path):
    data = write_mrc(tmp_path / "t.mrc", (13, 10, 7), 5.0)
    shapes = write_multiscale(tmp_path / "t.mrc", tmp_path / "t.zarr", 5.0, slab=4)

    group = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")
    assert shapes == [(13, 10, 7), (7, 5, 4), (4, 3, 2)]
    level1 = _mean_pool(data, 2)
    assert np.allclose(group["1"][:], level1, atol=1e-5)
    assert np.allclose(group["2"][:], _mean_pool(level1.astype(np.float32), 2), atol=1e-5)
    assert not (tmp_path / ".t.zarr.tmp").exists()


def test_tilt_series_pyramid_keeps_every_section(tmp_path: Path):
    write_mrc(tmp_path / "ts.mrc", (9, 16, 12), 2.0)
    shapes = write_multiscale(tmp_path / "ts.mrc", tmp_path / "ts.zarr", 2.0, downsample_z=False, slab=4)

    assert shapes == [(9, 16, 12), (9, 8, 6), (9, 4, 3)]
    ms = zarr.open_group(str(tmp_path / "ts.zarr"), mode="r").attrs["multiscales"][0]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [
        [2.0, 2.0, 2.0], [2.0, 4.0, 4.0], [2.0, 8.0, 8.0],
    ]
