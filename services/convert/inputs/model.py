"""What every input mode produces: particle sources with per-image CTF metadata.

A :class:`ParticleSource` is one unit that stacks never cross: the whole indexed STAR / .cs /
job folder, or one STAR+MRC pair. Its arrays are in *output order* (the order images are
written), with ``rows`` mapping each output image back to its metadata row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryobus.shared.errors import InputError
from cryobus.shared.formats.mrc import MrcHeader

# Per-image CTF keys CryoLike slices to each stack (its ``SerializedLensDescriptor``), in npz order.
PER_IMAGE_KEYS = ("defocusU", "defocusV", "defocusAngle", "phaseShift")
ANGLE_KEYS = ("angleRotation", "angleTilt", "anglePsi")
SCALAR_KEYS = ("sphericalAberration", "voltage", "amplitudeContrast")
WHOLE_KEYS = ("ref_pixel_size", "files", "idxs", "ctfBfactor", "ctfScalefactor")


def row_error(reason: str, *, file: str | Path, field: str, row: int | None = None) -> InputError:
    """An :class:`InputError` whose reason names the 0-based metadata row (when known).

    The row is also kept as ``err.row`` for callers that want it structured.
    """
    text = reason if row is None else f"row {row}: {reason}"
    err = InputError(text, file=str(file), field=field)
    err.row = row  # type: ignore[attr-defined]
    return err


@dataclass
class LensMetadata:
    """CTF and bookkeeping values in CryoLike's npz keys and units.

    Attributes:
        per_image: ``defocusU``/``defocusV`` (Å), ``defocusAngle``/``phaseShift`` (radians) and
            ``angleRotation``/``angleTilt``/``anglePsi`` (radians, or None), each (n_rows,) in
            **metadata row order**; sliced per stack through :attr:`ParticleSource.rows`.
        scalars: ``sphericalAberration`` (mm), ``voltage`` (kV), ``amplitudeContrast``, as
            Python floats (one value per source; several distinct values are refused).
        whole: ``ref_pixel_size``, ``files``, ``idxs``, ``ctfBfactor``, ``ctfScalefactor``,
            written unsliced into every stack's npz, as CryoLike does.
    """

    per_image: dict[str, np.ndarray | None]
    scalars: dict[str, float]
    whole: dict[str, Any]

    def npz_entries(self, rows: np.ndarray) -> dict[str, Any]:
        """The lens keys of one stack, in CryoLike's order, ``rows`` selecting the per-image values."""
        out: dict[str, Any] = {}
        for key in PER_IMAGE_KEYS:
            out[key] = self.per_image[key][rows]  # type: ignore[index]
        for key in SCALAR_KEYS:
            out[key] = float(self.scalars[key])
        for key in ANGLE_KEYS:
            value = self.per_image.get(key)
            out[key] = None if value is None else value[rows]
        for key in WHOLE_KEYS:
            out[key] = self.whole.get(key)
        return out


@dataclass
class ParticleSource:
    """One metadata source resolved down to (file, section) per output image.

    Attributes:
        metadata_file: the STAR/.cs file the rows come from.
        mrc_files: resolved MRC stack paths; ``headers`` are their checked headers.
        file_index: int64 (n,) index into ``mrc_files`` per output image.
        section: int64 (n,) 0-based section per output image.
        rows: int64 (n,) metadata row per output image.
        lens: CTF metadata (per-image arrays in row order).
        pixel_size_A: pixel size of the stored images in Å, from the metadata (None if absent).
        pixel_size_field: where ``pixel_size_A`` came from (e.g. ``rlnImagePixelSize``).
        header_pixel_size: whether the MRC header voxel size may serve as a fallback (paired
            and job-folder modes; indexed modes trust only their metadata).
        write_stack_range: paired STAR mode: write ``stack_start``/``stack_end`` into the npz.
        notes: things a user should know that are not errors (e.g. where a job-folder scan stopped).
    """

    metadata_file: Path
    mrc_files: list[Path]
    headers: list[MrcHeader]
    file_index: np.ndarray
    section: np.ndarray
    rows: np.ndarray
    lens: LensMetadata
    pixel_size_A: float | None = None
    pixel_size_field: str | None = None
    header_pixel_size: bool = False
    write_stack_range: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return int(self.rows.size)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(ny, nx) = (N0, N1) of the images; every file of a source has the same size (checked)."""
        h = self.headers[0]
        return (h.ny, h.nx)


def check_sections(
    source_file: Path, mrc_files: list[Path], headers: list[MrcHeader], file_index: np.ndarray,
    section: np.ndarray, rows: np.ndarray, field: str,
) -> None:
    """Every (file, section) exists and every file has the same image size.

    Raises:
        InputError: a section beyond the stack's end or negative (names the metadata row and
            ``field``), or two stacks of different image sizes (``field="nx*ny"``).
    """
    nz = np.array([h.nz for h in headers], dtype=np.int64)
    bad = np.flatnonzero((section < 0) | (section >= nz[file_index]))
    if bad.size:
        k = int(bad[0])
        f = int(file_index[k])
        raise row_error(
            f"image {int(section[k])} (0-based) of {mrc_files[f]} requested, but that stack holds {int(nz[f])} images",
            file=source_file, field=field, row=int(rows[k]),
        )
    sizes = {(h.ny, h.nx) for h in headers}
    if len(sizes) > 1:
        first = headers[0]
        other = next(i for i, h in enumerate(headers) if (h.ny, h.nx) != (first.ny, first.nx))
        raise InputError(
            f"particle stacks differ in image size: {mrc_files[0]} is {first.ny}x{first.nx}, "
            f"{mrc_files[other]} is {headers[other].ny}x{headers[other].nx}",
            file=str(mrc_files[other]), field="nx*ny",
        )


def unique_value(values: np.ndarray, *, file: Path, field: str, rtol: float = 0.0) -> float:
    """The single value of a per-row column that must be constant (kV, Cs, amplitude contrast, pixel size).

    Raises:
        InputError: non-finite values (naming the first bad row) or several distinct values.
    """
    v = np.asarray(values, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise row_error(f"{field} is not a finite number", file=file, field=field, row=int(bad[0]))
    ref = v[0]
    off = np.flatnonzero(np.abs(v - ref) > rtol * abs(ref))
    if off.size:
        k = int(off[0])
        raise row_error(
            f"{field} has several distinct values ({ref:g} in row 0, {v[k]:g}); CryoLike stacks carry one value",
            file=file, field=field, row=k,
        )
    return float(ref)


def finite_column(values: Any, *, file: Path, field: str, dtype: Any = np.float64) -> np.ndarray:
    """A numeric per-row column as an array of ``dtype`` (the file's dtype when None).

    Raises:
        InputError: a value that is not a finite number (naming the row and ``field``).
    """
    try:
        arr = np.asarray(values, dtype=dtype) if dtype is not None else np.array(values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{field} holds non-numeric values: {exc}", file=str(file), field=field) from exc
    bad = np.flatnonzero(~np.isfinite(arr.astype(np.float64)))
    if bad.size:
        raise row_error(f"{field} is not a finite number", file=file, field=field, row=int(bad[0]))
    return arr
