"""prismPYP's ``micrograph_metadata.csv`` table built from a RELION project (pure functions: they read files,
write nothing, touch no bus or store).

Sources: CtfFind ``micrographs_ctf.star`` (CTF columns), MotionCorr ``corrected_micrographs.star``
plus per-micrograph motion STARs (``avg_motion``), Extract/Refine ``particles.star``
(``num_particles``). Each source gives a frame keyed by ``micrograph_name``;
:func:`cryobus.services.metadata.table.merge_partials` joins them (with those of other software) by
name, never by row position, unlike prismPYP's cryoSPARC builder. Column meanings,
units and what NaN means: docs/metadata-columns.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cryobus.services.metadata.table import (  # noqa: F401  (COLUMNS etc. re-exported for callers)
    COLUMNS,
    CTF_FIT_CTFFIND_CC,
    CTF_FIT_RELION_FOM,
    EXTRA_COLUMNS,
    PRISMPYP_COLUMNS,
    RELION_CTF,
    RELION_MOTION,
    RELION_PARTICLES,
    Partial,
    merge_partials,
)
from cryobus.shared.errors import InputError
from cryobus.shared.formats.ctffind import diagnostic_image_path, read_ctffind_txt
from cryobus.shared.formats.relion_motion import read_motion_star
from cryobus.shared.formats.star import (
    micrograph_block,
    micrograph_name,
    particle_block,
    read_star,
    require_columns,
)

# Values of motion_source (ctf_fit_source values live in table.py).
MOTION_FROM_MOTION_STAR = "relion_motion_star"
MOTION_FROM_ACCUM_TOTAL = "relion_accum_motion_total"
MOTION_UNAVAILABLE = "unavailable"


def _names(df: pd.DataFrame, *, file: str | Path) -> pd.Series:
    """micrograph_name per row; a name used twice would make the join ambiguous, so it is refused."""
    names = df["rlnMicrographName"].astype(str).map(micrograph_name)
    dup = names[names.duplicated()]
    if not dup.empty:
        raise InputError(
            f"micrograph_name {dup.iloc[0]!r} occurs more than once", file=str(file), field="rlnMicrographName"
        )
    return names


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    if name in df.columns:
        return pd.to_numeric(df[name], errors="coerce").astype(float)
    return pd.Series(np.nan, index=df.index, dtype=float)


def _most_common(values: pd.Series) -> float | None:
    values = values.dropna()
    if values.empty:
        return None
    return float(values.mode().iloc[0])  # mode() is sorted: ties go to the smallest pixel size


def ctf_rows(ctf_star_path: str | Path, project_dir: str | Path) -> tuple[pd.DataFrame, float | None]:
    """CTF columns per micrograph from a RELION CtfFind ``micrographs_ctf.star``.

    Args:
        ctf_star_path: the ``micrographs_ctf.star`` (RELION 3.0 single block or 3.1+ optics + micrographs).
        project_dir: the RELION project directory that the STAR's relative paths start from.

    Returns:
        ``(frame, pixel_size_A)``. The frame has one row per micrograph, sorted by ``micrograph_name``,
        with ``micrograph_name``, ``mean_defocus`` = (rlnDefocusU + rlnDefocusV) / 2 Å,
        ``defocus_u_A``, ``defocus_v_A``, ``defocus_angle_deg`` (rlnDefocusAngle, °),
        ``est_resolution`` = rlnCtfMaxResolution Å, ``ctf_fit`` = rlnCtfFigureOfMerit (RELION copies
        CTFFIND's cross-correlation, column #6, into it: verified equal on the real CtfFind/job005
        files), ``ctf_fit_source``, ``pixel_size_A`` (rlnMicrographPixelSize, Å/px) and the microscope
        the fit assumed: ``voltage_kV`` (rlnVoltage), ``cs_mm`` (rlnSphericalAberration, mm),
        ``amplitude_contrast`` (rlnAmplitudeContrast), from the optics group.
        When the STAR lacks rlnCtfFigureOfMerit / rlnCtfMaxResolution for a row, the CTFFIND ``.txt``
        beside its rlnCtfImage is read instead (``ctf_fit_source`` = ``ctffind_cross_correlation``);
        without either, NaN and ``ctf_fit_source`` None. ``pixel_size_A`` (the scalar) is the most
        common micrograph pixel size (the smallest on a tie), None when the file has none.

    Raises:
        InputError: unreadable STAR, no micrographs block, missing rlnMicrographName / rlnDefocusU /
            rlnDefocusV (field = the first missing), a duplicate micrograph_name, or a corrupt
            CTFFIND ``.txt`` that had to be read.
    """
    blocks = read_star(ctf_star_path)
    df = micrograph_block(blocks, file=ctf_star_path)
    require_columns(df, ["rlnMicrographName", "rlnDefocusU", "rlnDefocusV"], file=ctf_star_path, block="micrographs")
    names = _names(df, file=ctf_star_path)
    du, dv = _column(df, "rlnDefocusU"), _column(df, "rlnDefocusV")
    fom, res = _column(df, "rlnCtfFigureOfMerit"), _column(df, "rlnCtfMaxResolution")
    source = pd.Series(np.where(fom.notna(), CTF_FIT_RELION_FOM, None), index=df.index, dtype=object)

    if "rlnCtfImage" in df.columns:
        for i in df.index[fom.isna() | res.isna()]:
            image = diagnostic_image_path(str(df.at[i, "rlnCtfImage"]))
            if not image.name:
                continue  # an empty or "." rlnCtfImage names no file
            txt = Path(project_dir) / image.with_suffix(".txt")
            if not txt.is_file():
                continue
            fit = read_ctffind_txt(txt)[0]
            if math.isnan(fom[i]):
                fom[i] = fit.cross_correlation
                source[i] = CTF_FIT_CTFFIND_CC
            if math.isnan(res[i]):
                res[i] = fit.fit_resolution_A

    pixel = _column(df, "rlnMicrographPixelSize")
    out = pd.DataFrame(
        {
            "micrograph_name": names,
            "ctf_fit": fom,
            "est_resolution": res,
            "mean_defocus": (du + dv) / 2.0,
            "defocus_u_A": du,
            "defocus_v_A": dv,
            "defocus_angle_deg": _column(df, "rlnDefocusAngle"),
            "ctf_fit_source": source,
            "pixel_size_A": pixel,
            "voltage_kV": _column(df, "rlnVoltage"),
            "cs_mm": _column(df, "rlnSphericalAberration"),
            "amplitude_contrast": _column(df, "rlnAmplitudeContrast"),
        }
    )
    return out.sort_values("micrograph_name", kind="stable").reset_index(drop=True), _most_common(pixel)


def motion_rows(
    corrected_micrographs_star_path: str | Path,
    project_dir: str | Path,
    *,
    n_frames: int | None = None,
) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """``avg_motion`` per micrograph from a RELION MotionCorr ``corrected_micrographs.star``.

    Per micrograph, in this order:

    1. its motion STAR (rlnMicrographMetadata, relative to ``project_dir``) exists →
       ``avg_motion`` = :attr:`MotionTrack.mean_frame_displacement_A`, ``motion_source`` =
       ``relion_motion_star``;
    2. else, ``n_frames`` given and rlnAccumMotionTotal and rlnMicrographOriginalPixelSize present →
       ``avg_motion`` = rlnAccumMotionTotal (unbinned px) · rlnMicrographOriginalPixelSize / (n_frames − 1),
       ``motion_source`` = ``relion_accum_motion_total`` (the same number as 1. when n_frames is the
       number of aligned frames);
    3. else NaN, ``motion_source`` = ``unavailable``.

    Args:
        corrected_micrographs_star_path: the MotionCorr job's ``corrected_micrographs.star``.
        project_dir: the RELION project directory.
        n_frames: number of aligned frames per movie, when the caller knows it (e.g. from the movie
            header); the STAR itself does not record it. Must be ≥ 2.

    Returns:
        ``(frame, missing)``: frame sorted by ``micrograph_name`` with ``micrograph_name``,
        ``avg_motion`` (Å), ``motion_source``, ``pixel_size_A`` (rlnMicrographPixelSize, Å/px);
        ``missing`` lists ``(motion STAR path, corrected_micrographs_star_path, "rlnMicrographMetadata")``
        for each referenced motion STAR that does not exist (that micrograph fell back to 2./3.).

    Raises:
        InputError: unreadable STAR, missing rlnMicrographName, a duplicate micrograph_name, a motion
            STAR that exists but is corrupt (file = that STAR), or ``n_frames`` < 2.
    """
    if n_frames is not None and n_frames < 2:
        raise InputError(f"n_frames must be >= 2, got {n_frames}", file=str(corrected_micrographs_star_path))
    blocks = read_star(corrected_micrographs_star_path)
    df = micrograph_block(blocks, file=corrected_micrographs_star_path)
    require_columns(df, ["rlnMicrographName"], file=corrected_micrographs_star_path, block="micrographs")
    names = _names(df, file=corrected_micrographs_star_path)
    accum = _column(df, "rlnAccumMotionTotal")
    original_px = _column(df, "rlnMicrographOriginalPixelSize")

    motion = pd.Series(np.nan, index=df.index, dtype=float)
    source = pd.Series(MOTION_UNAVAILABLE, index=df.index, dtype=object)
    missing: list[tuple[str, str, str]] = []
    for i in df.index:
        if "rlnMicrographMetadata" in df.columns and isinstance(df.at[i, "rlnMicrographMetadata"], str):
            motion_star = Path(project_dir) / df.at[i, "rlnMicrographMetadata"]
            if motion_star.is_file():
                motion[i] = read_motion_star(motion_star).mean_frame_displacement_A
                source[i] = MOTION_FROM_MOTION_STAR
                continue
            missing.append((str(motion_star), str(corrected_micrographs_star_path), "rlnMicrographMetadata"))
        if n_frames is not None and not math.isnan(accum[i]) and not math.isnan(original_px[i]):
            motion[i] = accum[i] * original_px[i] / (n_frames - 1)
            source[i] = MOTION_FROM_ACCUM_TOTAL

    out = pd.DataFrame(
        {
            "micrograph_name": names,
            "avg_motion": motion,
            "motion_source": source,
            "pixel_size_A": _column(df, "rlnMicrographPixelSize"),
        }
    )
    return out.sort_values("micrograph_name", kind="stable").reset_index(drop=True), missing


def particle_counts(particles_star_path: str | Path) -> pd.DataFrame:
    """Particles per micrograph from a RELION particles STAR (Extract, Class2D ``_data.star``, Refine3D …).

    Returns:
        Frame sorted by ``micrograph_name`` with ``micrograph_name`` (of rlnMicrographName) and
        ``num_particles`` (int64, every particle row counted). Micrographs without particles do not
        appear (see :func:`merge_sources`).

    Raises:
        InputError: unreadable STAR, no particles block, or no rlnMicrographName column.
    """
    blocks = read_star(particles_star_path)
    df = particle_block(blocks, file=particles_star_path)
    require_columns(df, ["rlnMicrographName"], file=particles_star_path, block="particles")
    counts = df["rlnMicrographName"].astype(str).map(micrograph_name).value_counts().sort_index()
    return pd.DataFrame(
        {"micrograph_name": counts.index.astype(str), "num_particles": counts.to_numpy(dtype=np.int64)}
    )


def merge_sources(
    ctf: pd.DataFrame | None,
    motion: pd.DataFrame | None,
    particles: pd.DataFrame | None,
) -> pd.DataFrame:
    """Join the RELION per-source frames into the metadata table (:func:`table.merge_partials` with
    the sources ``relion.ctf``, ``relion.motion``, ``relion.particles``).

    Outer join on ``micrograph_name``, sorted by ``micrograph_name``, columns exactly :data:`COLUMNS`.
    ``pixel_size_A`` is the CTF source's value, else the motion source's; ``rel_ice_thickness`` is
    always NaN (RELION estimates no ice thickness); ``num_particles`` (nullable Int64) is 0 for
    micrographs a given particles source does not list and NA when no particles source is given.

    Raises:
        InputError: a frame lists a micrograph_name twice. ValueError: a frame without micrograph_name.
    """
    given = ((RELION_CTF, ctf), (RELION_MOTION, motion), (RELION_PARTICLES, particles))
    return merge_partials([Partial(source, frame, file="") for source, frame in given if frame is not None]).table
