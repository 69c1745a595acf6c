"""CryoSPARC inputs: an indexed particle ``.cs`` and a job folder with restack/downsample batches.

``.cs`` loading is :mod:`cryobus.shared.formats.cryosparc`'s. Field mapping (reference §5.3;
CryoLike ``LensDescriptor.from_cryosparc_file``); per-image arrays keep the file's dtype
(float32), as CryoLike stores them:

| npz key | .cs field | unit |
|---|---|---|
| defocusU, defocusV | ctf/df1_A, ctf/df2_A | Å |
| defocusAngle, phaseShift | ctf/df_angle_rad, ctf/phase_shift_rad | radians |
| sphericalAberration, voltage, amplitudeContrast | ctf/cs_mm, ctf/accel_kv, ctf/amp_contrast (one value) | mm, kV, — |
| ref_pixel_size (indexed) | [blob/psize_A, blob/psize_A] (float64), else None | Å |
| files, idxs (indexed) | blob/path, blob/idx as stored, whole column | — |

CryoLike reads only element 0 of the three scalar fields; cryobus refuses a file where they
differ between rows, since one value per stack cannot describe it.

Job folder layout (reference §1.4): ``FOLDER/J{n}/J{n}_passthrough_particles.cs`` and
``FOLDER/J{n}/restack/batch_{i:06}_restacked.mrc`` (or ``downsample/batch_{i:06}_downsample.mrc``),
i = 0, 1, …; the ``.cs`` rows describe the batch images in order. The scan stops at the first
missing batch number and says so (:attr:`ParticleSource.notes` and the log).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

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
from cryobus.shared.formats.cryosparc import read_cs, require_fields
from cryobus.shared.formats.mrc import read_header

log = logging.getLogger(__name__)

CTF_FIELDS = (
    "ctf/df1_A",
    "ctf/df2_A",
    "ctf/df_angle_rad",
    "ctf/phase_shift_rad",
    "ctf/accel_kv",
    "ctf/cs_mm",
    "ctf/amp_contrast",
)
BATCH_FOLDERS = (("restack", "restacked"), ("downsample", "downsample"))


def _lens(arr: np.ndarray, cs_file: Path) -> LensMetadata:
    require_fields(arr, CTF_FIELDS, file=cs_file)
    if arr.size == 0:
        raise InputError("the .cs file has no rows", file=str(cs_file), field="rows")

    def col(name: str) -> np.ndarray:
        return finite_column(arr[name], file=cs_file, field=name, dtype=None).copy()

    per_image: dict[str, np.ndarray | None] = {
        "defocusU": col("ctf/df1_A"),
        "defocusV": col("ctf/df2_A"),
        "defocusAngle": col("ctf/df_angle_rad"),
        "phaseShift": col("ctf/phase_shift_rad"),
        "angleRotation": None,
        "angleTilt": None,
        "anglePsi": None,
    }
    scalars = {
        "sphericalAberration": unique_value(arr["ctf/cs_mm"], file=cs_file, field="ctf/cs_mm"),
        "voltage": unique_value(arr["ctf/accel_kv"], file=cs_file, field="ctf/accel_kv"),
        "amplitudeContrast": unique_value(arr["ctf/amp_contrast"], file=cs_file, field="ctf/amp_contrast"),
    }
    whole = {"ref_pixel_size": None, "files": None, "idxs": None, "ctfBfactor": None, "ctfScalefactor": None}
    return LensMetadata(per_image=per_image, scalars=scalars, whole=whole)


def merge_passthrough(arr: np.ndarray, cs_file: Path, passthrough_file: Path) -> np.ndarray:
    """``arr`` with the fields only its passthrough ``.cs`` holds, matched row by row on ``uid``.

    CryoSPARC writes the fields a job created into ``J<n>_<name>.cs`` and the fields it passed
    on unchanged (often ``ctf/*``) into ``J<n>_passthrough_<name>.cs``; both carry ``uid``.
    Fields present in both are taken from ``arr``.

    Returns:
        A new structured array, ``arr``'s rows in ``arr``'s order, ``arr``'s fields then the others.

    Raises:
        InputError: the passthrough file is unreadable, either file lacks ``uid``, or a row's uid
            is not in the passthrough file (``field="uid"``, row named).
    """
    extra_arr = read_cs(passthrough_file)
    require_fields(arr, ("uid",), file=cs_file)
    require_fields(extra_arr, ("uid",), file=passthrough_file)
    extra = [n for n in extra_arr.dtype.names if n not in arr.dtype.names]
    if not extra:
        return arr
    order = np.argsort(extra_arr["uid"], kind="stable")
    sorted_uid = extra_arr["uid"][order]
    pos = np.clip(np.searchsorted(sorted_uid, arr["uid"]), 0, max(sorted_uid.size - 1, 0))
    found = sorted_uid[pos] == arr["uid"] if sorted_uid.size else np.zeros(arr.size, dtype=bool)
    if not found.all():
        row = int(np.flatnonzero(~found)[0])
        raise row_error(
            f"uid {int(arr['uid'][row])} of {cs_file.name} is not in the passthrough file",
            file=passthrough_file, field="uid", row=row,
        )
    take = order[pos]
    names = list(arr.dtype.names) + extra
    merged = np.empty(arr.shape, dtype=[(n, (arr if n in arr.dtype.names else extra_arr).dtype.fields[n][0]) for n in names])
    for n in arr.dtype.names:
        merged[n] = arr[n]
    for n in extra:
        merged[n] = extra_arr[n][take]
    return merged


def read_indexed_cs(
    cs_file: Path,
    *,
    passthrough_file: Path | None = None,
    folder: Path | None = None,
    project_dir: Path | None = None,
    cryolike_order: bool = False,
) -> ParticleSource:
    """Read an indexed CryoSPARC particle ``.cs`` and check every stack it names.

    Args:
        cs_file: the ``.cs`` (numpy structured array) with ``blob/path``, ``blob/idx`` and ``ctf/*``.
        passthrough_file: its ``J<n>_passthrough_<name>.cs``, supplying fields (e.g. ``ctf/*``)
            the ``.cs`` lacks (:func:`merge_passthrough`).
        folder, project_dir: where stacks are looked up (:mod:`.paths`).
        cryolike_order: CryoLike's output order (grouped by sorted ``blob/path``); default row order.

    Raises:
        InputError: not a ``.cs``; a missing ``blob/*`` or ``ctf/*`` field (``field`` = it);
            non-finite CTF values (row named); several kV/Cs/amplitude contrasts/pixel sizes;
            a ``blob/path`` that does not exist (row named); a truncated stack; a ``blob/idx``
            beyond its stack's end (row named).
    """
    cs_file = Path(cs_file)
    arr = read_cs(cs_file)
    if passthrough_file is not None:
        arr = merge_passthrough(arr, cs_file, Path(passthrough_file))
    require_fields(arr, ("blob/path", "blob/idx"), file=cs_file)
    lens = _lens(arr, cs_file)
    raw_paths = arr["blob/path"]
    files, file_of_row = resolve_stack_paths(
        list(raw_paths), metadata_file=cs_file, field="blob/path", folder=folder, project_dir=project_dir
    )
    headers = [read_header(f) for f in files]
    index = arr["blob/idx"].astype(np.int64)
    lens.whole["files"] = raw_paths.copy()
    lens.whole["idxs"] = arr["blob/idx"].copy()
    pixel_size = None
    if "blob/psize_A" in arr.dtype.names:
        pixel_size = unique_value(arr["blob/psize_A"], file=cs_file, field="blob/psize_A", rtol=1e-6)
        lens.whole["ref_pixel_size"] = np.array([pixel_size, pixel_size], dtype=np.float64)
    rows = np.argsort(raw_paths, kind="stable") if cryolike_order else np.arange(arr.size, dtype=np.int64)
    check_sections(cs_file, files, headers, file_of_row[rows], index[rows], rows, "blob/idx")
    return ParticleSource(
        metadata_file=cs_file,
        mrc_files=files,
        headers=headers,
        file_index=file_of_row[rows],
        section=index[rows],
        rows=rows.astype(np.int64),
        lens=lens,
        pixel_size_A=pixel_size if pixel_size and pixel_size > 0 else None,
        pixel_size_field="blob/psize_A" if pixel_size else None,
    )


def find_batches(job_dir: Path) -> tuple[list[Path], list[str]]:
    """The batch files of a job folder, in order, up to the first missing number.

    Returns:
        ``(files, notes)``: notes say where the scan stopped and name batch files beyond a gap,
        which are not used.

    Raises:
        InputError: neither ``restack/`` nor ``downsample/`` exists, or ``batch_000000`` is missing.
    """
    for sub, kind in BATCH_FOLDERS:
        batch_dir = job_dir / sub
        if batch_dir.is_dir():
            break
    else:
        raise InputError(
            "job folder has neither a restack/ nor a downsample/ folder of particle batches",
            file=str(job_dir), field="restack",
        )
    files: list[Path] = []
    while (candidate := batch_dir / f"batch_{len(files):06d}_{kind}.mrc").is_file():
        files.append(candidate)
    if not files:
        raise InputError(f"no batch files: {candidate.name} does not exist", file=str(candidate), field="batch")
    pattern = re.compile(rf"batch_(\d+)_{kind}\.mrc$")
    beyond = sorted(
        p.name for p in batch_dir.iterdir() if (m := pattern.match(p.name)) and int(m.group(1)) > len(files)
    )
    note = f"{batch_dir}: read batches 000000..{len(files) - 1:06d}; {candidate.name} does not exist, scan stopped there"
    if beyond:
        note += f" (batch files after the gap, not used: {', '.join(beyond[:5])}{' ...' if len(beyond) > 5 else ''})"
        log.warning("%s", note)
    else:
        log.info("%s", note)
    return files, [note]


def read_cs_job_dir(folder: Path, job: int) -> ParticleSource:
    """Read a CryoSPARC job folder ``folder/J{job}`` (restack or downsample job).

    The passthrough ``.cs`` rows describe the batch images sequentially (file order, then
    section order); the ``.cs`` row count must equal the number of batch images.

    The pixel size is not taken from the passthrough ``.cs`` (a downsample job passes the
    *input* particles' ``blob/psize_A`` through); it comes from the caller or from the batch
    files' MRC headers, which CryoSPARC writes.

    Raises:
        InputError: no ``J{job}`` folder, no passthrough ``.cs``, no batch folder or files, a
            missing ``ctf/*`` field, a truncated batch, batches of different image sizes, or a
            row count different from the image count (``field="rows"``, with where the scan stopped).
    """
    job_dir = Path(folder) / f"J{job}"
    if not job_dir.is_dir():
        raise InputError(f"job folder J{job} not found in {folder}", file=str(job_dir), field="job")
    cs_file = job_dir / f"J{job}_passthrough_particles.cs"
    if not cs_file.is_file():
        raise InputError("passthrough particle file not found", file=str(cs_file), field="passthrough")
    arr = read_cs(cs_file)
    lens = _lens(arr, cs_file)
    files, notes = find_batches(job_dir)
    headers = [read_header(f) for f in files]
    counts = [h.nz for h in headers]
    total = sum(counts)
    if total != arr.size:
        raise InputError(
            f"{cs_file.name} has {arr.size} rows but the batch files hold {total} images "
            f"({', '.join(f'{f.name}: {n}' for f, n in zip(files, counts))}); {notes[0]}",
            file=str(cs_file), field="rows",
        )
    file_index = np.repeat(np.arange(len(files), dtype=np.int64), counts)
    section = np.concatenate([np.arange(n, dtype=np.int64) for n in counts])
    rows = np.arange(total, dtype=np.int64)
    check_sections(cs_file, files, headers, file_index, section, rows, "batch")
    return ParticleSource(
        metadata_file=cs_file,
        mrc_files=files,
        headers=headers,
        file_index=file_index,
        section=section,
        rows=rows,
        lens=lens,
        header_pixel_size=True,
        notes=notes,
    )
