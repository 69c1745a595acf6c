"""Multiscale OME-Zarr (NGFF 0.4, zarr v2) copies of MRC volumes, as the portal publishes them.

Layout (reference §2.3, the portal's ``ingestion_tools/scripts/common/image.py``): levels
``"0"``, ``"1"``, ``"2"`` = 100 / 50 / 25 %, each the 2×2×2 block mean of the one before (tilt
series: 1×2×2, sections are never merged); shapes ``ceil(n / 2**level)``; float32; chunks up to
256³; ``dimension_separator "/"``; default Blosc compressor; ``.zattrs`` ``multiscales`` with axes
z, y, x (``space``, ``angstrom``) and a ``scale`` transform per level (voxel size × factor, Å).
Spec: https://ngff.openmicroscopy.org/0.4/.

Differences from the portal, on purpose: odd edges are padded by repeating the edge voxel before
averaging (the portal's ``skimage.block_reduce`` pads with 0, which darkens the last plane);
the volume is processed in z slabs so memory stays bounded (≈ a slab of 2·``slab`` planes).

We write NGFF metadata ourselves with ``zarr`` rather than through ``ome-zarr``: every
``ome-zarr`` release pulls ``s3fs``/``aiobotocore``, which would downgrade the ``botocore`` that
our S3 store and tests use.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import zarr

from cryobus.shared.errors import InputError

LEVELS = 3
CHUNK = 256
NGFF_VERSION = "0.4"


def _halve(block: np.ndarray, fz: int) -> np.ndarray:
    """Block mean over (fz, 2, 2); odd sizes padded by edge repetition. float32 (z, y, x)."""
    z, y, x = block.shape
    pad = ((0, (-z) % fz), (0, y % 2), (0, x % 2))
    if any(p for _, p in pad):
        block = np.pad(block, pad, mode="edge")
    zz, yy, xx = block.shape
    view = block.reshape(zz // fz, fz, yy // 2, 2, xx // 2, 2)
    return view.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def level_shapes(shape_zyx: tuple[int, int, int], *, downsample_z: bool = True, levels: int = LEVELS) -> list[tuple[int, int, int]]:
    """Shapes (z, y, x) of each pyramid level: ``ceil(n / 2**i)`` (z kept when not downsampled)."""
    z, y, x = shape_zyx
    return [
        (math.ceil(z / 2**i) if downsample_z else z, math.ceil(y / 2**i), math.ceil(x / 2**i))
        for i in range(levels)
    ]


def multiscales_attrs(voxel_size_A: float, *, downsample_z: bool = True, levels: int = LEVELS) -> dict:
    """The NGFF 0.4 ``.zattrs`` content for a pyramid of ``levels`` levels (scales in Å)."""
    datasets = []
    for i in range(levels):
        f = 2**i
        scale = [voxel_size_A * (f if downsample_z else 1), voxel_size_A * f, voxel_size_A * f]
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    axes = [{"name": n, "type": "space", "unit": "angstrom"} for n in ("z", "y", "x")]
    return {"multiscales": [{"version": NGFF_VERSION, "name": "/", "axes": axes, "datasets": datasets}]}


def write_multiscale(
    mrc_path: str | os.PathLike,
    zarr_path: str | os.PathLike,
    voxel_size_A: float,
    *,
    downsample_z: bool = True,
    levels: int = LEVELS,
    slab: int = 64,
) -> list[tuple[int, int, int]]:
    """Write an MRC volume as a multiscale OME-Zarr directory (atomically: temp dir + rename).

    Args:
        mrc_path: the MRC volume (x fastest; read memory-mapped, converted to float32).
        zarr_path: the ``.zarr`` directory to create (replaced if it exists).
        voxel_size_A: voxel size of level 0, Å.
        downsample_z: ``False`` for tilt series (sections are kept).
        levels: number of levels (3 = 100/50/25 %).
        slab: z planes processed at once (even).

    Returns:
        the (z, y, x) shape of each level.

    Raises:
        InputError: the MRC cannot be opened or is not 3D/2D image data.
    """
    target = Path(zarr_path)
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    slab = max(2, slab - slab % 2)
    try:
        mrc = mrcfile.mmap(mrc_path, mode="r", permissive=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot open MRC: {exc}", file=mrc_path) from exc
    with mrc:
        data = mrc.data
        if data is None or data.ndim not in (2, 3):
            raise InputError("MRC holds no 2D/3D image data", file=mrc_path, field="mode")
        if data.ndim == 2:
            data = data[np.newaxis]
        shapes = level_shapes(data.shape, downsample_z=downsample_z, levels=levels)
        group = zarr.open_group(zarr.DirectoryStore(str(tmp)), mode="w")
        arrays = [
            group.create_dataset(
                str(i), shape=s, chunks=tuple(min(CHUNK, n) for n in s), dtype="float32", dimension_separator="/"
            )
            for i, s in enumerate(shapes)
        ]
        for z0 in range(0, data.shape[0], slab):
            arrays[0][z0 : z0 + slab] = np.asarray(data[z0 : z0 + slab], dtype=np.float32)
    fz = 2 if downsample_z else 1
    for i in range(1, levels):
        src, dst = arrays[i - 1], arrays[i]
        out_slab = slab // fz if downsample_z else slab
        for o0 in range(0, dst.shape[0], out_slab):
            block = src[o0 * fz : (o0 + out_slab) * fz]
            dst[o0 : o0 + out_slab] = _halve(block, fz)
    group.attrs.put(multiscales_attrs(voxel_size_A, downsample_z=downsample_z, levels=levels))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return shapes
