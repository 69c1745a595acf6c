"""RELION STAR inputs: STAR+MRC pairs and indexed particle STARs (3.0 single block, 3.1+ optics).

Parsing and the optics merge are :mod:`cryobus.shared.formats.star`'s. This module maps RELION
columns to CryoLike's lens keys (reference §5.1–5.2; CryoLike ``metadata/lens_descriptor.py``):

| npz key | STAR column | unit in npz |
|---|---|---|
| defocusU, defocusV | rlnDefocusU, rlnDefocusV (required) | Å, float64 |
| defocusAngle | rlnDefocusAngle (required) | radians (from degrees) |
| phaseShift | rlnPhaseShift (default 0) | radians (from degrees) |
| angleRotation/Tilt/Psi | rlnAngleRot/Tilt/Psi, only when all three are present | radians |
| voltage, sphericalAberration | rlnVoltage, rlnSphericalAberration (required, one value) | kV, mm |
| amplitudeContrast | rlnAmplitudeContrast (default 0.1, one value) | — |
| ctfBfactor, ctfScalefactor | rlnCtfBfactor / rlnCtfScalefactor (whole column), else 0.0 / 1.0 | Å², — |
| ref_pixel_size (indexed) | unique values of rlnImagePixelSize in the first two rows, else None | Å |
| files, idxs (indexed) | paths and 0-based indices of rlnImageName, whole column | — |

The pixel size used for conversion is rlnImagePixelSize (row or optics group), or for RELION
3.0 files ``10 000 · rlnDetectorPixelSize / rlnMagnification`` (CryoLike never derives it and
then needs an explicit ``pixel_size``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cryobus.services.convert.inputs.model import (
    LensMetadata,
    ParticleSource,
    check_sections,
    finite_column,
    row_error,
    unique_value,
)
from cryobus.services.convert.inputs.paths import resolve_stack_paths
from cryobus.shared.errors import InputError
from cryobus.shared.formats.mrc import read_header
from cryobus.shared.formats.star import particle_block, read_star, require_columns

log = logging.getLogger(__name__)

REQUIRED_CTF = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration")
_ANGLES = (("angleRotation", "rlnAngleRot"), ("angleTilt", "rlnAngleTilt"), ("anglePsi", "rlnAnglePsi"))


def _particles(star_file: Path) -> tuple[pd.DataFrame, bool]:
    """The particle table with optics merged in, and whether rlnImagePixelSize is in the file itself."""
    blocks = read_star(star_file)
    df = particle_block(blocks, file=star_file)
    stored = any("rlnImagePixelSize" in b.columns for b in blocks.values())
    if df.empty:
        raise InputError("the particle table has no rows", file=str(star_file), field="data_particles")
    return df, stored


def _lens(df: pd.DataFrame, star_file: Path, *, angle_in_degrees: bool, phase_in_degrees: bool) -> LensMetadata:
    require_columns(df, REQUIRED_CTF, file=star_file, block="particles")
    n = len(df)

    def col(name: str) -> np.ndarray:
        return finite_column(df[name].to_numpy(), file=star_file, field=name)

    def angle(values: np.ndarray, degrees: bool) -> np.ndarray:
        return np.radians(values) if degrees else values

    per_image: dict[str, np.ndarray | None] = {
        "defocusU": col("rlnDefocusU"),
        "defocusV": col("rlnDefocusV"),
        "defocusAngle": angle(col("rlnDefocusAngle"), angle_in_degrees),
        "phaseShift": angle(col("rlnPhaseShift"), phase_in_degrees) if "rlnPhaseShift" in df else np.zeros(n),
    }
    present = [column for _, column in _ANGLES if column in df]
    if len(present) == 3:
        for key, column in _ANGLES:
            per_image[key] = np.radians(col(column))
    else:
        if present:
            # CryoLike's lens buffer refuses a partial set ("Some, but not all, optional buffers are
            # set"); Extract/Class2D STARs carry only rlnAnglePsi. The angles play no part in conversion.
            log.warning("%s: only %s of the three Euler angles present; angles not stored", star_file, present)
        for key, _ in _ANGLES:
            per_image[key] = None
    scalars = {
        "voltage": unique_value(df["rlnVoltage"].to_numpy(), file=star_file, field="rlnVoltage"),
        "sphericalAberration": unique_value(
            df["rlnSphericalAberration"].to_numpy(), file=star_file, field="rlnSphericalAberration"
        ),
        "amplitudeContrast": unique_value(df["rlnAmplitudeContrast"].to_numpy(), file=star_file, field="rlnAmplitudeContrast")
        if "rlnAmplitudeContrast" in df
        else 0.1,
    }
    whole = {
        "ctfBfactor": col("rlnCtfBfactor") if "rlnCtfBfactor" in df else np.float64(0.0),
        "ctfScalefactor": col("rlnCtfScalefactor") if "rlnCtfScalefactor" in df else np.float64(1.0),
        "ref_pixel_size": None,
        "files": None,
        "idxs": None,
    }
    return LensMetadata(per_image=per_image, scalars=scalars, whole=whole)


def _pixel_size(df: pd.DataFrame, star_file: Path, stored: bool) -> tuple[float | None, str | None]:
    """The pixel size in Å: rlnImagePixelSize, or (RELION 3.0) the one derived by the shared reader."""
    if "rlnImagePixelSize" not in df:
        return None, None
    field = "rlnImagePixelSize" if stored else "rlnDetectorPixelSize/rlnMagnification"
    value = unique_value(df["rlnImagePixelSize"].to_numpy(), file=star_file, field=field, rtol=1e-6)
    if value <= 0:
        raise row_error(f"{field} gives a non-positive pixel size {value}", file=star_file, field=field, row=0)
    return value, field


def read_indexed_star(
    star_file: Path,
    *,
    folder: Path | None = None,
    project_dir: Path | None = None,
    cryolike_order: bool = False,
) -> ParticleSource:
    """Read an indexed particle STAR (``rlnImageName = NNNNNN@stack``) and check every stack it names.

    Args:
        star_file: RELION 3.0 (single block) or 3.1+ (``data_optics`` + ``data_particles``) STAR.
        folder, project_dir: where stacks are looked up (:mod:`.paths`).
        cryolike_order: output images grouped by stack path in sorted order, rows in file order
            within a stack (CryoLike's order); default: the STAR's row order.

    Returns:
        One :class:`ParticleSource` (indices 1-based in the STAR, 0-based here).

    Raises:
        InputError: unreadable STAR, missing ``rlnImageName`` or CTF column, non-numeric or
            non-finite values, several voltages/Cs/amplitude contrasts/pixel sizes, a malformed
            ``rlnImageName`` (row named), a missing or truncated stack, an index beyond a stack's end.
    """
    star_file = Path(star_file)
    df, stored_px = _particles(star_file)
    require_columns(df, ["rlnImageName"], file=star_file, block="particles")
    names = [str(v) for v in df["rlnImageName"].tolist()]
    paths: list[str] = []
    index = np.empty(len(names), dtype=np.int64)
    for row, name in enumerate(names):
        number, sep, path = name.partition("@")
        try:
            value = int(number)
        except ValueError:
            value = 0
        if not sep or not path or value < 1:
            raise row_error(
                f"rlnImageName {name!r} is not NNNNNN@stack with a 1-based index", file=star_file, field="rlnImageName", row=row
            )
        paths.append(path)
        index[row] = value - 1
    lens = _lens(df, star_file, angle_in_degrees=True, phase_in_degrees=True)
    files, file_of_row = resolve_stack_paths(
        paths, metadata_file=star_file, field="rlnImageName", folder=folder, project_dir=project_dir
    )
    headers = [read_header(f) for f in files]
    lens.whole["files"] = np.array(paths)
    lens.whole["idxs"] = index.copy()
    pixel_size, px_field = _pixel_size(df, star_file, stored_px)
    if stored_px:
        # CryoLike keeps the distinct values of the first two rows (``project_descriptor``).
        lens.whole["ref_pixel_size"] = np.unique(df["rlnImagePixelSize"].to_numpy(dtype=np.float64)[:2])
    rows = np.argsort(np.array(paths), kind="stable") if cryolike_order else np.arange(len(df), dtype=np.int64)
    check_sections(star_file, files, headers, file_of_row[rows], index[rows], rows, "rlnImageName")
    return ParticleSource(
        metadata_file=star_file,
        mrc_files=files,
        headers=headers,
        file_index=file_of_row[rows],
        section=index[rows],
        rows=rows.astype(np.int64),
        lens=lens,
        pixel_size_A=pixel_size,
        pixel_size_field=px_field,
    )


def read_star_mrc_pair(
    star_file: Path,
    mrc_file: Path,
    *,
    defocus_angle_is_degree: bool = True,
    phase_shift_is_degree: bool = True,
) -> ParticleSource:
    """Read one STAR+MRC pair: STAR row k describes image k of the MRC.

    Returns:
        A :class:`ParticleSource` whose npz carry ``stack_start``/``stack_end`` (CryoLike's
        paired mode); ``files``/``idxs``/``ref_pixel_size`` are None, as in CryoLike.

    Raises:
        InputError: as :func:`read_indexed_star` for the CTF columns; the MRC is missing or
            truncated; the STAR has a different number of rows than the MRC has images
            (``field="rows"``; CryoLike notices only when writing, or never).
    """
    star_file, mrc_file = Path(star_file), Path(mrc_file)
    df, stored_px = _particles(star_file)
    lens = _lens(df, star_file, angle_in_degrees=defocus_angle_is_degree, phase_in_degrees=phase_shift_is_degree)
    if not mrc_file.is_file():
        raise InputError("particle stack does not exist", file=str(mrc_file), field="mrc_files")
    header = read_header(mrc_file)
    if header.nz != len(df):
        raise InputError(
            f"{star_file.name} has {len(df)} particle rows but {mrc_file.name} holds {header.nz} images",
            file=str(star_file), field="rows",
        )
    pixel_size, px_field = _pixel_size(df, star_file, stored_px)
    n = len(df)
    return ParticleSource(
        metadata_file=star_file,
        mrc_files=[mrc_file],
        headers=[header],
        file_index=np.zeros(n, dtype=np.int64),
        section=np.arange(n, dtype=np.int64),
        rows=np.arange(n, dtype=np.int64),
        lens=lens,
        pixel_size_A=pixel_size,
        pixel_size_field=px_field,
        header_pixel_size=True,
        write_stack_range=True,
    )
