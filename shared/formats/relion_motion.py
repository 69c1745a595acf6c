"""RELION per-micrograph motion STAR files (``MotionCorr/jobNNN/<movie>.star``).

Written by RELION's motion correction (own implementation or MotionCor2 wrapper) for every movie:
``data_general`` (movie size, ``rlnMicrographBinning``, ``rlnMicrographOriginalPixelSize`` Å/px,
dose) and ``data_global_shift`` (``rlnMicrographFrameNumber``, ``rlnMicrographShiftX/Y``). RELION
stores the global shifts in *unbinned movie pixels* (RELION ``Micrograph`` class); the
``rlnMicrographOriginalPixelSize`` is the pixel size of those pixels.

RELION's ``rlnAccumMotionTotal`` in ``corrected_micrographs.star`` is the sum over frames 2..N of
the Euclidean frame-to-frame shift computed from these same global shifts
(``MotioncorrRunner::generateLogFilePDFAndWriteStarFiles``): it is in **pixels**, not Å, although
the label's description says Å. Checked on the real RELION 5 run in shared/data: the shifts of
20170629_00021 sum to 16.420846 px = its rlnAccumMotionTotal (14.53 Å at 0.885 Å/px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryobus.shared.errors import InputError
from cryobus.shared.formats.star import read_star, require_columns


@dataclass(frozen=True)
class MotionTrack:
    """Whole-frame (global) drift of one movie.

    Attributes:
        frame_numbers: int64, shape (n,), 1-based movie frame numbers, ascending.
        shift_x_px, shift_y_px: float64, shape (n,), global shift of each frame in unbinned movie pixels.
        original_pixel_size_A: Å/px of the unbinned movie (rlnMicrographOriginalPixelSize).
        binning: rlnMicrographBinning (1.0 when absent); the micrograph pixel size is
            original_pixel_size_A · binning.
        n_movie_frames: rlnImageSizeZ (frames in the movie file), None when absent.
    """

    frame_numbers: np.ndarray
    shift_x_px: np.ndarray
    shift_y_px: np.ndarray
    original_pixel_size_A: float
    binning: float = 1.0
    n_movie_frames: int | None = None

    @property
    def frame_displacements_px(self) -> np.ndarray:
        """float64, shape (n-1,): Euclidean shift between consecutive aligned frames, unbinned pixels."""
        return np.hypot(np.diff(self.shift_x_px), np.diff(self.shift_y_px))

    @property
    def total_displacement_px(self) -> float:
        """Path length of the drift in unbinned pixels; equals RELION's rlnAccumMotionTotal."""
        return float(self.frame_displacements_px.sum())

    @property
    def mean_frame_displacement_A(self) -> float:
        """Average per-frame drift in Å.

        Definition (cryobus ``avg_motion``): the mean over consecutive aligned frames of the
        Euclidean frame-to-frame global shift, times the original pixel size:
        ``mean_i sqrt((x[i+1]-x[i])² + (y[i+1]-y[i])²) · original_pixel_size_A``, which equals
        ``rlnAccumMotionTotal · original_pixel_size_A / (n - 1)``. NaN when fewer than 2 frames.
        """
        d = self.frame_displacements_px
        if d.size == 0:
            return math.nan
        return float(d.mean() * self.original_pixel_size_A)


def _scalar(general, column: str):
    return general[column].iloc[0] if column in general.columns else None


def read_motion_star(path: str | Path) -> MotionTrack:
    """Read a RELION per-micrograph motion STAR.

    Args:
        path: the ``<movie>.star`` referenced by ``rlnMicrographMetadata``.

    Returns:
        :class:`MotionTrack` with the ``data_global_shift`` rows sorted by frame number (rows are
        numbered 1..n when ``rlnMicrographFrameNumber`` is absent).

    Raises:
        InputError: missing/unparseable file; no ``data_general`` or ``data_global_shift`` block
            (field names the block); missing ``rlnMicrographOriginalPixelSize`` or
            ``rlnMicrographShiftX``/``Y``; a non-positive pixel size.
    """
    blocks = read_star(path)
    for block in ("general", "global_shift"):
        if block not in blocks:
            raise InputError(f"no data_{block} block in motion STAR", file=str(path), field=f"data_{block}")
    general, shifts = blocks["general"], blocks["global_shift"]
    require_columns(general, ["rlnMicrographOriginalPixelSize"], file=path, block="general")
    require_columns(shifts, ["rlnMicrographShiftX", "rlnMicrographShiftY"], file=path, block="global_shift")
    pixel_size = float(general["rlnMicrographOriginalPixelSize"].iloc[0])
    if not (math.isfinite(pixel_size) and pixel_size > 0):
        raise InputError(
            f"rlnMicrographOriginalPixelSize must be > 0, got {pixel_size}",
            file=str(path),
            field="rlnMicrographOriginalPixelSize",
        )
    if "rlnMicrographFrameNumber" in shifts.columns:
        shifts = shifts.sort_values("rlnMicrographFrameNumber", kind="stable")
        frames = shifts["rlnMicrographFrameNumber"].to_numpy(dtype=np.int64)
    else:
        frames = np.arange(1, len(shifts) + 1, dtype=np.int64)
    binning = _scalar(general, "rlnMicrographBinning")
    n_movie = _scalar(general, "rlnImageSizeZ")
    return MotionTrack(
        frame_numbers=frames,
        shift_x_px=shifts["rlnMicrographShiftX"].to_numpy(dtype=np.float64),
        shift_y_px=shifts["rlnMicrographShiftY"].to_numpy(dtype=np.float64),
        original_pixel_size_A=pixel_size,
        binning=1.0 if binning is None else float(binning),
        n_movie_frames=None if n_movie is None else int(n_movie),
    )
