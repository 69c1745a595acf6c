"""Per-micrograph metadata from a CryoSPARC exposures ``.cs`` file (Import Micrographs, Patch Motion,
Patch CTF, CTFFIND4, Curate Exposures outputs, or their ``exports/groups/<group>/*_exported.cs`` form).

Read with cryosparc-tools (``cryosparc.dataset.Dataset.load``: numpy ``.cs`` or CSDAT, never
unpickled). Field layout (cryosparc-tools ``Dataset`` fields; CryoSPARC's exposure models, where a
group a job did not compute is filled with its defaults, 0 for numbers)::

    uid                              u8    the exposure's uid; motion-corrected files are named "<uid>_<movie>..."
    micrograph_blob/path             str   the (dose-weighted) micrograph, relative to the project dir
    micrograph_blob/psize_A          f4    its pixel size, Å/px
    micrograph_blob_non_dw/path, /psize_A  the same for the non-dose-weighted micrograph
    ctf/df1_A, ctf/df2_A             f4    defocus along the two astigmatism axes, Å
    ctf/df_angle_rad                 f4    astigmatism angle, radians
    ctf/ctf_fit_to_A                 f4    resolution up to which the CTF fit holds, Å
    ctf/accel_kv, ctf/cs_mm, ctf/amp_contrast  f4  the microscope the fit assumed: kV, mm, fraction
    ctf/cross_corr_ctffind4          f4    CTFFIND's cross-correlation (CTFFIND4 job only; 0 otherwise)
    ctf/fig_of_merit_gctf            f4    GCTF's figure of merit (GCTF job only; 0 otherwise)
    ctf_stats/ice_thickness_rel      f4    Patch CTF's relative ice thickness
    ctf_stats/ctf_fit_to_A           f4    Patch CTF's fit resolution, Å
    rigid_motion/path                str   .npy full-frame trajectory, relative to the project dir
    rigid_motion/psize_A             f4    pixel size the trajectory is measured in (the movie's), Å/px

Exported files prefix paths with ``>``; such a path is looked up relative to the exported file's
folder first, then to the project directory.
"""

from __future__ import annotations

import re
import tokenize
from pathlib import Path

import numpy as np
import pandas as pd
from cryosparc.dataset import Dataset
from cryosparc.errors import DatasetLoadError

from cryobus.services.metadata.table import CTF_FIT_CTFFIND_CC, CTF_FIT_GCTF_FOM
from cryobus.shared.errors import InputError
from cryobus.shared.formats.cryosparc import check_promised_size
from cryobus.shared.micrograph_names import micrograph_name

MOTION_FROM_RIGID_TRAJECTORY = "cryosparc_rigid_trajectory"
MOTION_UNAVAILABLE = "unavailable"
NAME_FIELDS = ("micrograph_blob/path", "micrograph_blob_non_dw/path")
PIXEL_FIELDS = ("micrograph_blob/psize_A", "micrograph_blob_non_dw/psize_A")
# Fields read as numbers: a file that stores one of them as text, dates or raw bytes is refused.
NUMBER_FIELDS = ("uid", *PIXEL_FIELDS, "ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/cross_corr_ctffind4",
                 "ctf/fig_of_merit_gctf", "ctf/ctf_fit_to_A", "ctf_stats/ctf_fit_to_A", "ctf_stats/ice_thickness_rel",
                 "rigid_motion/psize_A", "movie_blob/psize_A", "ctf/accel_kv", "ctf/cs_mm",
                 "ctf/amp_contrast")  # fmt: skip

_JOB_DIR = re.compile(r"^J\d+$")


def load_dataset(path: str | Path) -> Dataset:
    """Load a CryoSPARC ``.cs`` dataset with cryosparc-tools.

    Returns:
        The ``Dataset`` (numeric fields as numpy arrays, string fields as ``str`` object arrays).

    Raises:
        InputError: the file is missing, its header promises more rows than it holds (refused before
            allocation), or cryosparc-tools cannot load it (not a numpy/CSDAT dataset, e.g. a text
            file named ``.cs``); the reason carries the cause.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("CryoSPARC .cs file not found", file=str(p))
    try:
        check_promised_size(p)  # Dataset.load allocates what the header promises before reading
        return Dataset.load(p)
    except DatasetLoadError as exc:
        cause = exc.__cause__ or exc
        raise InputError(f"not a CryoSPARC dataset (numpy .cs or CSDAT file): {cause}", file=str(p)) from exc
    except (ValueError, KeyError, TypeError, SyntaxError, tokenize.TokenError) as exc:  # check_promised_size
        raise InputError(f"not a CryoSPARC dataset (numpy .cs or CSDAT file): {exc}", file=str(p)) from exc


def infer_project_dir(cs_path: str | Path) -> Path:
    """The CryoSPARC project directory of a ``.cs`` file: the parent of its ``J<n>/`` job folder, or of
    ``exports/`` for ``exports/groups/<group>/*.cs``; else the file's own folder."""
    p = Path(cs_path).absolute()
    if _JOB_DIR.match(p.parent.name):
        return p.parent.parent
    parts = p.parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "exports" and i + 1 < len(parts) and parts[i + 1] == "groups":
            return Path(*parts[:i])
    return p.parent


def text_value(value: object) -> str:
    """A field value as ``str``: bytes decoded as UTF-8, and what UTF-8 cannot hold (surrogates, or
    the code points past U+10FFFF that a corrupt numpy ``U`` field can carry) replaced."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8", "replace")


def _text(ds: Dataset, field: str) -> np.ndarray | None:
    if field not in ds.fields():
        return None
    return np.array([text_value(v) for v in ds[field]], dtype=object)


def _number(ds: Dataset, field: str, *, zero_is_unset: bool = True) -> np.ndarray:
    """``field`` as float64 (NaN when absent); CryoSPARC's default 0 read as "not estimated" (NaN) unless
    ``zero_is_unset`` is False; a vector field gives its first element."""
    n = len(ds)
    if field not in ds.fields() or n == 0:
        return np.full(n, np.nan)
    raw = np.asarray(ds[field]).reshape(n, -1)[:, 0]
    # float32 → the shortest decimal that is that float32 (0.83, not 0.8299999833106995), as prismPYP writes it
    values = raw.astype(str).astype(np.float64) if raw.dtype == np.float32 else raw.astype(np.float64)
    values[~np.isfinite(values)] = np.nan
    if zero_is_unset:
        values[values == 0] = np.nan
    return values


def _first(*arrays: np.ndarray) -> np.ndarray:
    out = arrays[0].copy()
    for a in arrays[1:]:
        out = np.where(np.isnan(out), a, out)
    return out


def _unset_path(value: str) -> bool:
    return value.strip() in ("", ".", ">")


def _names(ds: Dataset, uids: np.ndarray | None, *, file: str) -> list[str]:
    """Normalised names from micrograph_blob/path, per row else micrograph_blob_non_dw/path."""
    columns = [c for c in (_text(ds, f) for f in NAME_FIELDS) if c is not None]
    if not columns:
        raise InputError(
            "exposures .cs has neither micrograph_blob/path nor micrograph_blob_non_dw/path: its rows cannot be named",
            file=file,
            field=NAME_FIELDS[0],
        )
    names = []
    for i in range(len(ds)):
        path = next((c[i] for c in columns if not _unset_path(c[i])), None)
        if path is None:
            raise InputError(f"row {i} has an empty micrograph path", file=file, field=NAME_FIELDS[0])
        names.append(micrograph_name(path, uid=None if uids is None else int(uids[i])))
    return names


def _candidates(path: str, cs_path: Path, project_dir: Path) -> list[Path]:
    if path.startswith(">"):
        rel = path[1:].lstrip("/")
        return [cs_path.parent / rel, project_dir / rel]
    p = Path(path)
    return [p] if p.is_absolute() else [project_dir / p]


def mean_frame_displacement_A(
    trajectory_path: str | Path, psize_A: float, *, field: str = "rigid_motion/path"
) -> float:
    """Mean frame-to-frame drift of a CryoSPARC rigid (full-frame) trajectory, Å.

    Args:
        trajectory_path: the ``.npy`` named by ``rigid_motion/path``: float array of shape
            ``(1, n_frames, 2)`` (as Patch Motion writes it) or ``(n_frames, 2)``, the (x, y) shift of
            each aligned frame in movie pixels (read so by pyem's ``cryosparc_2_cs_motion_parameters``
            and by CryoSPARC→RELION importers, which copy it into rlnMicrographShiftX/Y).
        psize_A: ``rigid_motion/psize_A``, the pixel size of those shifts, Å/px.

    Returns:
        ``mean_i ‖s[i+1] − s[i]‖ · psize_A`` over consecutive frames; NaN for fewer than 2 frames.
        Same formula as RELION's :attr:`MotionTrack.mean_frame_displacement_A`.

    Raises:
        InputError: the file is not a numpy array of that shape, or its header promises more than
            it holds (file = the trajectory, ``field``).
    """
    p = Path(trajectory_path)
    try:
        check_promised_size(p)
        traj = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError) as exc:
        raise InputError(f"not a numpy trajectory: {exc}", file=str(p), field=field) from exc
    if not isinstance(traj, np.ndarray) or traj.shape[-1:] != (2,) or traj.ndim not in (2, 3) or (
        traj.ndim == 3 and traj.shape[0] != 1
    ):
        raise InputError(
            f"expected a (1, n_frames, 2) or (n_frames, 2) trajectory, got shape {getattr(traj, 'shape', None)}",
            file=str(p),
            field=field,
        )
    xy = np.asarray(traj, dtype=np.float64).reshape(-1, 2)
    if len(xy) < 2:
        return float("nan")
    return float(np.mean(np.hypot(*np.diff(xy, axis=0).T)) * psize_A)


def _motion(
    ds: Dataset, cs_path: Path, project_dir: Path
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]:
    n = len(ds)
    paths = _text(ds, "rigid_motion/path")
    motion = np.full(n, np.nan)
    source = np.full(n, None, dtype=object)
    missing: list[tuple[str, str, str]] = []
    if paths is None:
        return motion, source, missing
    psize = _first(_number(ds, "rigid_motion/psize_A"), _number(ds, "movie_blob/psize_A"))
    for i, path in enumerate(paths):
        if _unset_path(path):
            continue  # this exposure was not motion-corrected
        source[i] = MOTION_UNAVAILABLE
        candidates = _candidates(path, cs_path, project_dir)
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            missing.append((str(candidates[-1]), str(cs_path), "rigid_motion/path"))
            continue
        if np.isnan(psize[i]):
            continue
        motion[i] = mean_frame_displacement_A(found, float(psize[i]))
        source[i] = MOTION_FROM_RIGID_TRAJECTORY
    return motion, source, missing


def _most_common(values: np.ndarray) -> float | None:
    s = pd.Series(values).dropna()
    return None if s.empty else float(s.mode().iloc[0])


def exposure_rows(
    cs_path: str | Path, *, project_dir: str | Path | None = None
) -> tuple[pd.DataFrame, float | None, list[tuple[str, str, str]]]:
    """The ``cryosparc.exposures`` partial of an exposures ``.cs`` file.

    Columns (a column whose fields are all absent, or 0 = "not estimated", is NaN):

    * ``micrograph_name``: of ``micrograph_blob/path``, else ``micrograph_blob_non_dw/path``, with the
      row's ``<uid>_`` prefix and processing suffixes dropped (``shared/micrograph_names.py``);
    * ``micrograph_uid``: the exposure ``uid`` (uint64; lets particle uids be resolved to names,
      see :func:`uid_names`; the merge ignores it);
    * ``mean_defocus`` = (``ctf/df1_A`` + ``ctf/df2_A``) / 2 Å (not df1 alone, prismPYP's bug);
      ``defocus_u_A`` = df1, ``defocus_v_A`` = df2, ``defocus_angle_deg`` = degrees(``ctf/df_angle_rad``);
      ``voltage_kV`` = ``ctf/accel_kv``, ``cs_mm`` = ``ctf/cs_mm``, ``amplitude_contrast`` = ``ctf/amp_contrast``;
    * ``est_resolution`` = ``ctf/ctf_fit_to_A`` Å, else ``ctf_stats/ctf_fit_to_A``;
    * ``ctf_fit`` = ``ctf/cross_corr_ctffind4`` with ``ctf_fit_source`` = ``ctffind_cross_correlation``
      (a CTFFIND4 job); else ``ctf/fig_of_merit_gctf`` with ``gctf_figure_of_merit``; Patch CTF
      computes neither, so its rows have NaN and None;
    * ``rel_ice_thickness`` = ``ctf_stats/ice_thickness_rel`` (Patch CTF);
    * ``avg_motion`` = :func:`mean_frame_displacement_A` of ``rigid_motion/path`` at
      ``rigid_motion/psize_A`` (else ``movie_blob/psize_A``), ``motion_source`` =
      ``cryosparc_rigid_trajectory``; ``unavailable`` when the trajectory file is missing or has
      no pixel size; None without ``rigid_motion/path``;
    * ``pixel_size_A`` = ``micrograph_blob/psize_A``, else ``micrograph_blob_non_dw/psize_A`` (Å/px).

    Args:
        cs_path: the ``.cs`` (a job output or an exported group).
        project_dir: the CryoSPARC project directory that paths start from; default
            :func:`infer_project_dir`.

    Returns:
        ``(frame sorted by micrograph_name, pixel size, missing)``: the pixel size is the most common
        ``pixel_size_A`` (smallest on a tie) or None; ``missing`` lists
        ``(trajectory path, cs_path, "rigid_motion/path")`` for every trajectory that does not exist.

    Raises:
        InputError: not a loadable dataset; a :data:`NUMBER_FIELDS` field that does not hold numbers
            (field = that field); neither path field (field ``micrograph_blob/path``); a
            row without any micrograph path; two rows with the same ``micrograph_name`` (field
            ``micrograph_blob/path``); a trajectory that exists but is not a ``(…, n, 2)`` array.
    """
    cs = Path(cs_path)
    file = str(cs)
    project = Path(project_dir) if project_dir is not None else infer_project_dir(cs)
    ds = load_dataset(cs)
    for f in NUMBER_FIELDS:
        if f in ds.fields() and np.asarray(ds[f]).dtype.kind not in "biuf":
            raise InputError(f"field {f} holds {np.asarray(ds[f]).dtype} values, not numbers", file=file, field=f)
    uids = np.asarray(ds["uid"], dtype=np.uint64) if "uid" in ds.fields() else None
    names = _names(ds, uids, file=file)
    dup = pd.Series(names)[pd.Series(names).duplicated()]
    if not dup.empty:
        raise InputError(f"micrograph_name {dup.iloc[0]!r} occurs more than once", file=file, field=NAME_FIELDS[0])

    df1, df2 = _number(ds, "ctf/df1_A"), _number(ds, "ctf/df2_A")
    has_defocus = ~(np.isnan(df1) & np.isnan(df2))
    angle = np.where(has_defocus, np.degrees(_number(ds, "ctf/df_angle_rad", zero_is_unset=False)), np.nan)
    cc, gctf = _number(ds, "ctf/cross_corr_ctffind4"), _number(ds, "ctf/fig_of_merit_gctf")
    fit = _first(cc, gctf)
    fit_source = np.where(~np.isnan(cc), CTF_FIT_CTFFIND_CC, np.where(~np.isnan(gctf), CTF_FIT_GCTF_FOM, None))
    motion, motion_source, missing = _motion(ds, cs, project)
    pixel = _first(*(_number(ds, f) for f in PIXEL_FIELDS))

    frame = pd.DataFrame(
        {
            "micrograph_name": pd.Series(names, dtype=object),
            "micrograph_uid": pd.Series(uids if uids is not None else [pd.NA] * len(ds), dtype="UInt64"),
            "rel_ice_thickness": _number(ds, "ctf_stats/ice_thickness_rel"),
            "ctf_fit": fit,
            "est_resolution": _first(_number(ds, "ctf/ctf_fit_to_A"), _number(ds, "ctf_stats/ctf_fit_to_A")),
            "avg_motion": motion,
            "mean_defocus": (df1 + df2) / 2.0,
            "defocus_u_A": df1,
            "defocus_v_A": df2,
            "defocus_angle_deg": angle,
            "ctf_fit_source": pd.Series(fit_source, dtype=object),
            "motion_source": pd.Series(motion_source, dtype=object),
            "pixel_size_A": pixel,
            # The microscope the fit assumed; Cs and amplitude contrast may legitimately be 0, so a 0
            # counts only where there is a fit.
            "voltage_kV": _number(ds, "ctf/accel_kv"),
            "cs_mm": np.where(has_defocus, _number(ds, "ctf/cs_mm", zero_is_unset=False), np.nan),
            "amplitude_contrast": np.where(has_defocus, _number(ds, "ctf/amp_contrast", zero_is_unset=False), np.nan),
        }
    )
    frame = frame.sort_values("micrograph_name", kind="stable").reset_index(drop=True)
    return frame, _most_common(pixel), missing


def uid_names(exposures: pd.DataFrame) -> dict[int, str]:
    """``{exposure uid: micrograph_name}`` of an :func:`exposure_rows` frame (rows without a uid skipped),
    for resolving a particles file's ``location/micrograph_uid``."""
    if "micrograph_uid" not in exposures.columns:
        return {}
    known = exposures[exposures["micrograph_uid"].notna()]
    return {int(u): str(n) for u, n in zip(known["micrograph_uid"], known["micrograph_name"])}

