"""RELION Class2D class averages: ``run_itNNN_classes.mrcs`` + ``run_itNNN_model.star``
(+ ``run_itNNN_data.star`` for particle counts), the highest iteration as ingest announces it.

Format (RELION docs, "Conventions & File formats"; RELION 5 writes the same blocks):

* ``data_model_general``: ``rlnPixelSize`` (Å/px of the class averages).
* ``data_model_classes``: one row per class, ``rlnReferenceImage`` ``00000k@…/run_itNNN_classes.mrcs``
  (class k, 1-based, is section k−1 of the stack), ``rlnClassDistribution`` (the soft, posterior-
  weighted fraction of particles), ``rlnEstimatedResolution`` (Å; ``inf`` for an empty class).
* ``data_particles`` of ``run_itNNN_data.star``: ``rlnClassNumber``, each particle's most likely
  class (a hard assignment).

``class_distribution`` is the hard-assignment fraction (count / all particles, as Magellon
computes it for CryoSPARC) when the data STAR is there, so both softwares feed the model the
same quantity; RELION's soft ``rlnClassDistribution`` is kept beside it as ``soft_distribution``
and is used as ``class_distribution`` only without a data STAR (the set says which).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryobus.shared.class_averages.model import (
    HARD_ASSIGNMENTS,
    RELION_SOFT,
    ClassAverage,
    ClassSet,
    finite_or_none,
    job_name,
)
from cryobus.shared.errors import InputError
from cryobus.shared.formats import mrc, star

DEFAULT_MAX_BYTES = 8 << 30


def _class_number(reference: str, *, file: str) -> int:
    """``000007@Class2D/job010/run_it025_classes.mrcs`` → 7."""
    head, sep, _ = str(reference).partition("@")
    if not sep or not head.strip().isdigit() or int(head) < 1:
        raise InputError(f"rlnReferenceImage {reference!r} is not <index>@<stack>", file=file, field="rlnReferenceImage")
    return int(head)


def hard_counts(data_star: str | Path, n_classes: int) -> np.ndarray:
    """Particles per class from ``rlnClassNumber`` of a Class2D data STAR.

    Returns:
        int64 (n_classes,): element k−1 counts the particles whose ``rlnClassNumber`` is k.

    Raises:
        InputError: no particles block, no ``rlnClassNumber`` column, or a class number outside
            1..n_classes (``field="rlnClassNumber"``).
    """
    path = str(data_star)
    blocks = star.read_star(path)
    particles = blocks.get("particles")
    if particles is None:
        others = [b for b in blocks if b != "optics"]
        if len(others) != 1:
            raise InputError("no data_particles block", file=path, field="data_particles")
        particles = blocks[others[0]]
    star.require_columns(particles, ["rlnClassNumber"], file=path, block="particles")
    numbers = particles["rlnClassNumber"].to_numpy()
    if numbers.size and (numbers.min() < 1 or numbers.max() > n_classes):
        raise InputError(
            f"rlnClassNumber outside 1..{n_classes} (found {int(numbers.min())}..{int(numbers.max())})",
            file=path,
            field="rlnClassNumber",
        )
    return np.bincount(numbers.astype(np.int64) - 1, minlength=n_classes)


def read_class2d(
    *,
    dataset: str,
    project_dir: str | Path,
    job_dir: str | Path,
    model_star: str | Path,
    classes_mrcs: str | Path,
    data_star: str | Path | None = None,
    iteration: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ClassSet:
    """Read every class of one RELION Class2D iteration.

    Args:
        dataset: dataset name (first part of the class id).
        project_dir, job_dir: as in ``job.discovered``; give the ``job`` part of the class id.
        model_star, classes_mrcs: ``run_itNNN_model.star`` and ``run_itNNN_classes.mrcs``.
        data_star: ``run_itNNN_data.star`` for hard-assignment counts; ``None`` to use
            ``rlnClassDistribution`` and leave counts unknown.
        iteration: NNN (ingest's ``iteration``).
        max_bytes: refuse a stack whose header promises more (see ``shared.formats.mrc``).

    Returns:
        A :class:`ClassSet`, classes in class-number order, images float32 (ny, nx) as stored.

    Raises:
        InputError: missing/unparsable files, missing columns (``rlnReferenceImage``,
            ``rlnEstimatedResolution``, ``rlnClassDistribution``, ``rlnClassNumber``), a reference
            to a section the stack does not have, or duplicate class numbers.
    """
    model_path = str(model_star)
    blocks = star.read_star(model_path)
    if "model_classes" not in blocks:
        raise InputError("no data_model_classes block: not a Class2D model STAR", file=model_path, field="data_model_classes")
    table = blocks["model_classes"]
    star.require_columns(
        table, ["rlnReferenceImage", "rlnClassDistribution", "rlnEstimatedResolution"], file=model_path, block="model_classes"
    )
    general = blocks.get("model_general")
    star_apix = None
    if general is not None and "rlnPixelSize" in general.columns:
        star_apix = finite_or_none(general["rlnPixelSize"].iloc[0])

    stack, header = mrc.read_stack(classes_mrcs, max_bytes=max_bytes)
    apix = star_apix if star_apix and star_apix > 0 else header.voxel_size_A
    numbers = [_class_number(r, file=model_path) for r in table["rlnReferenceImage"]]
    if len(set(numbers)) != len(numbers):
        raise InputError("duplicate class numbers in rlnReferenceImage", file=model_path, field="rlnReferenceImage")
    if max(numbers) > stack.shape[0]:
        raise InputError(
            f"rlnReferenceImage names class {max(numbers)} but the stack has {stack.shape[0]} sections",
            file=str(classes_mrcs),
            field="rlnReferenceImage",
        )
    counts = hard_counts(data_star, max(numbers)) if data_star is not None else None
    total = int(counts.sum()) if counts is not None else 0

    classes = []
    for number, soft, res in sorted(
        zip(numbers, table["rlnClassDistribution"], table["rlnEstimatedResolution"], strict=True)
    ):
        count = int(counts[number - 1]) if counts is not None else None
        soft_v = finite_or_none(soft)
        classes.append(
            ClassAverage(
                number=number,
                image=np.ascontiguousarray(stack[number - 1], dtype=np.float32),
                resolution_A=finite_or_none(res),
                particle_count=count,
                class_distribution=(count / total if total else 0.0) if counts is not None else soft_v,
                pixel_size_A=apix,
                soft_distribution=soft_v,
            )
        )
    sources = {"model_star": model_path, "classes_mrcs": str(classes_mrcs)}
    if data_star is not None:
        sources["data_star"] = str(data_star)
    return ClassSet(
        dataset=dataset,
        job=job_name(project_dir, job_dir),
        iteration=iteration,
        software="relion",
        distribution_source=HARD_ASSIGNMENTS if counts is not None else RELION_SOFT,
        sources=sources,
        classes=classes,
    )
