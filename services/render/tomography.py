"""Central slices of tilt series and tomograms, as previews.

* Tilt series: the image recorded closest to 0° tilt (from the ``.tlt``/``.rawtlt`` angles or
  the ``.mdoc``'s ``TiltAngle``, in stack order); without angles, the middle section.
* Tomogram: the plane through the middle of the thinnest axis, averaged over ``slab`` planes
  (thin slabs look noisy; facilities usually view 5-20 Å). IMOD's ``tilt`` writes the thin axis
  as y unless the volume was rotated (``trimvol -rx`` / ``clip rotx``), so a volume whose y is
  its smallest dimension is sliced along y (an xz plane) and one whose z is smallest along z.

Both are then rendered like micrographs (:func:`micrograph.preview`: binning, robust clip,
y up).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryobus.shared.formats import mrc


def zero_tilt_section(angles: list[float] | None, n_sections: int) -> int:
    """Index of the section recorded closest to 0° (ties: the lower index); the middle one without angles.

    ``angles`` are in stack order; if their count differs from ``n_sections`` they are ignored.
    """
    if angles and len(angles) == n_sections:
        return int(np.argmin(np.abs(np.asarray(angles, dtype=np.float64))))
    return n_sections // 2


def tilt_series_slice(path: str | Path, angles: list[float] | None, *, max_bytes: int) -> tuple[np.ndarray, int]:
    """The zero-tilt image of a tilt-series stack: (float32 (ny, nx), section index).

    Raises:
        InputError: unreadable or truncated MRC (see :func:`cryobus.shared.formats.mrc.read_header`).
    """
    header = mrc.read_header(path, max_bytes=max_bytes)
    index = zero_tilt_section(angles, header.nz)
    image, _ = mrc.read_image(path, section=index, max_bytes=max_bytes)
    return image, index


def tomogram_slice(path: str | Path, *, slab: int = 1, max_bytes: int) -> tuple[np.ndarray, str]:
    """The central plane of a tomogram across its thinnest axis: (float32 image, axis ``"z"`` or ``"y"``).

    Raises:
        InputError: unreadable or truncated MRC.
    """
    header = mrc.read_header(path, max_bytes=max_bytes)
    axis = "y" if header.ny < header.nz else "z"
    center = (header.ny if axis == "y" else header.nz) // 2
    image, _ = mrc.read_slab(path, axis=axis, center=center, thickness=slab, max_bytes=max_bytes)
    return image, axis
