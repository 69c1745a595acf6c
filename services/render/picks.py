"""Particle picks: coordinates from RELION / CryoSPARC, and circles drawn on a micrograph preview.

Coordinate conventions (both in pixels of the full-size micrograph, file order, row 0 = y 0):

* RELION ``rlnCoordinateX`` / ``rlnCoordinateY``: column / row of the particle centre
  (RELION ``autopick.star`` → one ``*_autopick.star`` per micrograph; ``Extract`` →
  ``particles.star`` with ``rlnMicrographName`` on every row).
* CryoSPARC ``location/center_x_frac`` / ``location/center_y_frac``: fractions of
  ``location/micrograph_shape`` (ny, nx), so x = frac_x · nx, y = frac_y · ny
  (cryosparc-tools documentation, "Particle picking" example, which plots them over the
  micrograph array with ``origin="lower"``).

The overlay is drawn on the (flipped, y up) preview, so a pick at row y of the file is drawn at
preview row ``h − 1 − y / f`` for binning factor f.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cryobus.shared.errors import InputError
from cryobus.shared.formats import cryosparc, star

PICK_RGB = (0, 200, 255)  # cyan: stands out on grey and from the amber CTF rings


@dataclass(frozen=True)
class MicrographPicks:
    """The picks of one micrograph.

    Attributes:
        micrograph: the micrograph file as the source names it (RELION: relative to the
            project; CryoSPARC: relative to the project folder).
        x, y: float64 (n,) particle centres, px of the full-size micrograph (x = column, y = row).
        box_px: extraction box edge in micrograph pixels, when the source says.
    """

    micrograph: str
    x: np.ndarray
    y: np.ndarray
    box_px: float | None = None


def relion_coordinate_files(autopick_star: str | Path) -> list[tuple[str, str]]:
    """(micrograph, coordinate STAR) pairs from RELION's ``autopick.star`` (``data_coordinate_files``).

    Raises:
        InputError: the block or ``rlnMicrographName`` / ``rlnMicrographCoordinates`` is missing.
    """
    blocks = star.read_star(autopick_star)
    table = blocks.get("coordinate_files")
    if table is None:
        raise InputError("no data_coordinate_files block", file=str(autopick_star), field="data_coordinate_files")
    star.require_columns(table, ["rlnMicrographName", "rlnMicrographCoordinates"], file=autopick_star, block="coordinate_files")
    return list(zip(table["rlnMicrographName"].astype(str), table["rlnMicrographCoordinates"].astype(str)))


def relion_coordinates(coordinate_star: str | Path, micrograph: str) -> MicrographPicks:
    """Picks of one micrograph from a RELION coordinate STAR (``*_autopick.star``, ``*_manualpick.star``).

    Raises:
        InputError: no ``rlnCoordinateX``/``rlnCoordinateY`` column, or non-numeric values.
    """
    blocks = star.read_star(coordinate_star)
    if not blocks:
        return MicrographPicks(micrograph, np.empty(0), np.empty(0))
    table = next(iter(blocks.values()))
    star.require_columns(table, ["rlnCoordinateX", "rlnCoordinateY"], file=coordinate_star, block="")
    return MicrographPicks(micrograph, _numeric(table["rlnCoordinateX"], coordinate_star), _numeric(table["rlnCoordinateY"], coordinate_star))


def relion_particles(particles_star: str | Path) -> list[MicrographPicks]:
    """Picks per micrograph from a RELION ``particles.star`` (Extract and later jobs), in first-seen order.

    ``box_px`` = ``rlnImageSize · rlnImagePixelSize / rlnMicrographOriginalPixelSize`` when the
    optics group has all three (an extraction box rescaled back to micrograph pixels), else
    ``rlnImageSize``.

    Raises:
        InputError: no particles block, a coordinate / micrograph column is missing, or a coordinate
            or box-size value is not a number.
    """
    table = star.particle_block(star.read_star(particles_star), file=particles_star)
    star.require_columns(table, ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"], file=particles_star, block="particles")
    box = None
    if "rlnImageSize" in table.columns:
        size = _numeric(table["rlnImageSize"], particles_star)
        if {"rlnImagePixelSize", "rlnMicrographOriginalPixelSize"} <= set(table.columns):
            size = size * _numeric(table["rlnImagePixelSize"], particles_star) / _numeric(
                table["rlnMicrographOriginalPixelSize"], particles_star
            )
        box = size
    out = []
    for name, rows in table.groupby("rlnMicrographName", sort=False):
        box_px = float(box[table.index.get_loc(rows.index[0])]) if box is not None else None
        out.append(MicrographPicks(str(name), _numeric(rows["rlnCoordinateX"], particles_star),
                                   _numeric(rows["rlnCoordinateY"], particles_star), box_px))
    return out


def cryosparc_particles(particles_cs: str | Path) -> list[MicrographPicks]:
    """Picks per micrograph from a CryoSPARC particles ``.cs`` (``location/*`` fields), first-seen order.

    ``box_px`` = ``blob/shape[0] · blob/psize_A / micrograph pixel size`` is not known from the
    ``.cs`` alone (the micrograph's pixel size lives in the exposures), so it is ``blob/shape[0]``
    when the particles were extracted without binning; ``None`` without ``blob/shape``.

    Raises:
        InputError: a ``location/*`` field is missing, or holds other than one path / number(s) per particle.
    """
    arr = cryosparc.read_cs(particles_cs)
    fields = ["location/micrograph_path", "location/center_x_frac", "location/center_y_frac", "location/micrograph_shape"]
    cryosparc.require_fields(arr, fields, file=particles_cs)
    if len(arr) == 0:
        return []
    paths = np.asarray(arr["location/micrograph_path"])
    if paths.dtype.kind not in "SU" or paths.ndim != 1:
        raise InputError(f"expected one path per particle, found {paths.dtype} {paths.shape[1:]}", file=str(particles_cs),
                         field="location/micrograph_path")  # fmt: skip
    paths = np.char.decode(paths, "utf-8", "replace") if paths.dtype.kind == "S" else paths
    shapes = _cs_numbers(arr, "location/micrograph_shape", particles_cs, width=2)
    xf = _cs_numbers(arr, "location/center_x_frac", particles_cs)[:, 0]
    yf = _cs_numbers(arr, "location/center_y_frac", particles_cs)[:, 0]
    box = None
    if "blob/shape" in arr.dtype.names:
        box = _cs_numbers(arr, "blob/shape", particles_cs)[:, 0]
    out = []
    _, first = np.unique(paths, return_index=True)
    for i in sorted(first):
        sel = paths == paths[i]
        ny, nx = shapes[i][0], shapes[i][1]
        out.append(MicrographPicks(paths[i], xf[sel] * nx, yf[sel] * ny, float(box[i]) if box is not None else None))
    return out


def _cs_numbers(arr: np.ndarray, field: str, file, *, width: int = 1) -> np.ndarray:
    """``arr[field]`` as float64 (n, k), k ≥ ``width``; InputError naming the field otherwise."""
    values = np.asarray(arr[field])
    if values.dtype.kind not in "biuf" or values.size < width * len(arr):
        raise InputError(f"expected {width} number(s) per particle, found {values.dtype} {values.shape[1:]}",
                         file=str(file), field=field)  # fmt: skip
    return values.astype(np.float64).reshape(len(arr), -1)


def _numeric(column, file) -> np.ndarray:
    try:
        return column.astype(np.float64).to_numpy()
    except (TypeError, ValueError) as err:
        raise InputError(f"non-numeric value in {column.name}: {err}", file=str(file), field=str(column.name)) from err


def radius_px(picks: MicrographPicks, *, image_shape: tuple[int, int], pixel_size_A: float | None,
              radius_A: float | None) -> float:
    """Circle radius in full-size micrograph pixels.

    ``radius_A`` / pixel size when both are given; else half the extraction box; else 1.5 % of the
    micrograph's long side.
    """
    if radius_A is not None and pixel_size_A:
        return radius_A / pixel_size_A
    if picks.box_px:
        return picks.box_px / 2.0
    return 0.015 * max(image_shape)


def draw_picks(preview: np.ndarray, picks: MicrographPicks, *, binning: int, radius: float,
               colour: tuple[int, int, int] = PICK_RGB) -> np.ndarray:
    """Circles at the picks on a flipped (y up) micrograph preview.

    Args:
        preview: uint8 (h, w) preview made with binning factor ``binning`` and ``flip_y=True``.
        picks: coordinates in full-size micrograph pixels.
        binning: the preview's integer binning factor.
        radius: circle radius in full-size micrograph pixels.
        colour: RGB of the circles.

    Returns:
        uint8 (h, w, 3) RGB image. Picks outside the preview are skipped.
    """
    h, w = preview.shape
    image = Image.fromarray(np.ascontiguousarray(preview)).convert("RGB")
    draw = ImageDraw.Draw(image)
    r = max(2.0, radius / binning)
    width = max(1, int(math.ceil(r / 12)))
    for x, y in zip(picks.x / binning, picks.y / binning):
        if not (math.isfinite(x) and math.isfinite(y)) or not (0 <= x < w and 0 <= y < h):
            continue
        row = h - 1 - y  # the preview is flipped: file row 0 is the bottom line
        draw.ellipse((x - r, row - r, x + r, row + r), outline=colour, width=width)
    return np.asarray(image)
