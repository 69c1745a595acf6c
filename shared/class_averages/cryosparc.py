"""CryoSPARC 2D Classification class averages: ``JXXX_YYY_class_averages.mrc`` +
``JXXX_YYY_class_averages.cs`` (+ ``JXXX_YYY_particles.cs`` for particle counts), the highest
iteration YYY as ingest announces it (``job.discovered`` job_type ``class_averages``, files
``cs`` and ``mrc``). ``job.json`` is not needed.

Field layout read (cryosparc-tools ``Dataset``; the fields Magellon's extractor and CryoSPARC's
own Select 2D job use):

=====================================  ====  ==================================================
``class_averages.cs``  ``blob/idx``    u4    section of the ``.mrc`` stack = the class index
``class_averages.cs``  ``blob/res_A``  f4    estimated resolution of the class, Å
``class_averages.cs``  ``blob/psize_A`` f4   pixel size of the class average, Å/px
``particles.cs``  ``alignments2D/class``  u4  each particle's most likely class (hard assignment)
=====================================  ====  ==================================================

CryoSPARC numbers classes from 0, so the class number of the stable id is ``blob/idx``.
``class_distribution`` is count / all particles of ``particles.cs`` (hard assignments, as
Magellon computes it); without that file counts and distribution are unknown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryobus.shared.class_averages.model import HARD_ASSIGNMENTS, ClassAverage, ClassSet, finite_or_none, job_name
from cryobus.shared.errors import InputError
from cryobus.shared.formats import mrc

DEFAULT_MAX_BYTES = 8 << 30
CLASS_FIELDS = ("blob/idx", "blob/res_A", "blob/psize_A")
PARTICLE_CLASS_FIELD = "alignments2D/class"


def load_cs(path: str | Path, fields: list[str] | None = None):
    """Load a ``.cs`` dataset with cryosparc-tools (never unpickled).

    Raises:
        InputError: the file is missing or is not a CryoSPARC dataset.
    """
    from cryosparc.dataset import Dataset
    from cryosparc.errors import DatasetLoadError

    p = Path(path)
    if not p.is_file():
        raise InputError("CryoSPARC .cs file not found", file=str(p))
    try:
        return Dataset.load(p, fields=fields) if fields else Dataset.load(p)
    except (DatasetLoadError, ValueError, OSError) as exc:
        cause = exc.__cause__ or exc
        raise InputError(f"not a CryoSPARC dataset (numpy .cs or CSDAT file): {cause}", file=str(p)) from exc


def particles_cs_for(class_averages_cs: str | Path) -> Path:
    """``J12_020_class_averages.cs`` → ``J12_020_particles.cs`` beside it (may not exist)."""
    p = Path(class_averages_cs)
    if not p.name.endswith("_class_averages.cs"):
        raise InputError("not a CryoSPARC class averages file (*_class_averages.cs)", file=str(p))
    return p.with_name(p.name[: -len("_class_averages.cs")] + "_particles.cs")


def _require(ds, fields, file: str) -> None:
    names = set(ds.fields())
    for f in fields:
        if f not in names:
            raise InputError(f"field {f} missing from CryoSPARC dataset", file=file, field=f)


def hard_counts(particles_cs: str | Path, n_classes: int) -> np.ndarray:
    """Particles per class from ``alignments2D/class`` of a 2D job's ``particles.cs``.

    Returns:
        int64 (n_classes,), element k = particles whose class is k (0-based).

    Raises:
        InputError: field missing, or a class index ≥ ``n_classes`` (``field="alignments2D/class"``).
    """
    path = str(particles_cs)
    ds = load_cs(path, fields=["uid", PARTICLE_CLASS_FIELD])
    _require(ds, [PARTICLE_CLASS_FIELD], path)
    cls = np.asarray(ds[PARTICLE_CLASS_FIELD]).astype(np.int64)
    if cls.size and (cls.min() < 0 or cls.max() >= n_classes):
        raise InputError(
            f"alignments2D/class outside 0..{n_classes - 1} (found {int(cls.min())}..{int(cls.max())})",
            file=path,
            field=PARTICLE_CLASS_FIELD,
        )
    return np.bincount(cls, minlength=n_classes)


def read_class_averages(
    *,
    dataset: str,
    project_dir: str | Path,
    job_dir: str | Path,
    cs: str | Path,
    mrc_path: str | Path,
    particles_cs: str | Path | None = None,
    iteration: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ClassSet:
    """Read every class of one CryoSPARC 2D classification output.

    Args:
        dataset: dataset name (first part of the class id).
        project_dir, job_dir: as in ``job.discovered``; give the ``job`` part of the class id.
        cs, mrc_path: ``JXXX_YYY_class_averages.cs`` and ``.mrc``.
        particles_cs: ``JXXX_YYY_particles.cs`` for counts; ``None`` when not available.
        iteration: YYY (ingest's ``iteration``), ``None`` for an output without iteration number.
        max_bytes: refuse a stack whose header promises more.

    Returns:
        A :class:`ClassSet` (class numbers 0-based, as CryoSPARC's), images float32 (ny, nx).

    Raises:
        InputError: unreadable files, missing fields, duplicate ``blob/idx``, or an index the
            stack does not have.
    """
    cs_path = str(cs)
    ds = load_cs(cs_path)
    _require(ds, CLASS_FIELDS, cs_path)
    idx = np.asarray(ds["blob/idx"]).astype(np.int64)
    stack, header = mrc.read_stack(mrc_path, max_bytes=max_bytes)
    if len(set(idx.tolist())) != idx.size:
        raise InputError("duplicate blob/idx in class averages", file=cs_path, field="blob/idx")
    if idx.size and (idx.min() < 0 or idx.max() >= stack.shape[0]):
        raise InputError(
            f"blob/idx {int(idx.max())} outside the stack of {stack.shape[0]} sections", file=str(mrc_path), field="blob/idx"
        )
    n_classes = int(idx.max()) + 1 if idx.size else 0
    counts = hard_counts(particles_cs, n_classes) if particles_cs is not None else None
    total = int(counts.sum()) if counts is not None else 0
    res = np.asarray(ds["blob/res_A"])
    psize = np.asarray(ds["blob/psize_A"])
    classes = []
    for row in np.argsort(idx, kind="stable"):
        number = int(idx[row])
        apix = finite_or_none(psize[row])
        count = int(counts[number]) if counts is not None else None
        classes.append(
            ClassAverage(
                number=number,
                image=np.ascontiguousarray(stack[number], dtype=np.float32),
                resolution_A=finite_or_none(res[row]),
                particle_count=count,
                class_distribution=(count / total if total else 0.0) if counts is not None else None,
                pixel_size_A=apix if apix and apix > 0 else header.voxel_size_A,
            )
        )
    sources = {"cs": cs_path, "mrc": str(mrc_path)}
    if particles_cs is not None:
        sources["particles_cs"] = str(particles_cs)
    return ClassSet(
        dataset=dataset,
        job=job_name(project_dir, job_dir),
        iteration=iteration,
        software="cryosparc",
        distribution_source=HARD_ASSIGNMENTS if counts is not None else "unavailable",
        sources=sources,
        classes=classes,
    )
