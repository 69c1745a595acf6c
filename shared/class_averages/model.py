"""One 2D classification job's class averages: one record per class, with a stable id.

Stable class id (docs/labelling.md): ``(dataset, job, iteration, class number)`` where

* ``dataset`` is the dataset name of the ``job.discovered`` event;
* ``job`` is the job folder relative to the folder that holds its project, so it stays the same
  when the data is mounted elsewhere (labels keyed by absolute path were Magellon's tkteach bug):
  RELION ``<project>/Class2D/job010``, CryoSPARC ``<project>/J12``;
* ``iteration`` is the iteration the files come from (RELION ``run_it025`` → 25, CryoSPARC
  ``J12_020_class_averages`` → 20), ``None`` for a CryoSPARC output without an iteration number;
* ``class number`` is the number *as the source software numbers it*: RELION 1-based
  (``rlnReferenceImage`` ``000007@…`` is class 7, ``rlnClassNumber`` 7), CryoSPARC 0-based
  (``blob/idx`` and ``alignments2D/class``).

Written out as one string, :func:`class_uid`: ``<dataset>/<job>/it025/class_007`` (``final`` in
place of ``it025`` without an iteration).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

# Where ``class_distribution`` comes from (both are fractions of the job's particles).
HARD_ASSIGNMENTS = "hard_assignments"  # count of particles whose best class is this one / all particles
RELION_SOFT = "rlnClassDistribution"  # RELION's posterior-weighted (soft) class weight
DistributionSource = Literal["hard_assignments", "rlnClassDistribution", "unavailable"]


def iteration_tag(iteration: int | None) -> str:
    """``it025`` for 25, ``final`` for ``None`` (a CryoSPARC output without iteration number)."""
    return "final" if iteration is None else f"it{iteration:03d}"


def class_uid(dataset: str, job: str, iteration: int | None, number: int) -> str:
    """The stable class id as one string, e.g. ``beta-gal/sppractice/Class2D/job010/it025/class_007``."""
    return f"{dataset}/{job}/{iteration_tag(iteration)}/class_{number:03d}"


def job_name(project_dir: str | Path, job_dir: str | Path) -> str:
    """The job part of the class id: ``job_dir`` relative to the parent of ``project_dir``.

    ``/data/sppractice/Class2D/job010`` in project ``/data/sppractice`` → ``sppractice/Class2D/job010``;
    CryoSPARC ``/data/P3/J12`` (project ``/data/P3``) → ``P3/J12``. A ``job_dir`` outside the
    project falls back to its own last two path parts.
    """
    project, job = Path(project_dir), Path(job_dir)
    try:
        return job.relative_to(project.parent).as_posix()
    except ValueError:
        return "/".join(job.parts[-2:])


@dataclass
class ClassAverage:
    """One class average and its statistics.

    Attributes:
        number: class number as the source numbers it (RELION 1-based, CryoSPARC 0-based).
        image: float32 (ny, nx), exactly the values in the file (row 0 = first row stored).
        resolution_A: estimated resolution in Å; ``None`` when the source says it is unknown
            (RELION writes ``inf`` for an empty class).
        particle_count: particles whose best class is this one (hard assignment); ``None``
            when the per-particle file is not available.
        class_distribution: fraction of the job's particles in this class, see
            :attr:`ClassSet.distribution_source`; ``None`` when unknown.
        soft_distribution: RELION's ``rlnClassDistribution`` (RELION only, else ``None``).
        pixel_size_A: pixel size of the class average, Å/px.
    """

    number: int
    image: np.ndarray
    resolution_A: float | None
    particle_count: int | None
    class_distribution: float | None
    pixel_size_A: float | None
    soft_distribution: float | None = None


@dataclass
class ClassSet:
    """The classes of one job at one iteration, as read from its files.

    Attributes:
        dataset, job, iteration: the first three parts of the stable class id.
        software: ``relion`` or ``cryosparc``.
        distribution_source: where every class's ``class_distribution`` comes from:
            ``hard_assignments`` (particle counts / all particles), ``rlnClassDistribution``
            (RELION's soft weight, used when ``run_itNNN_data.star`` is not available) or
            ``unavailable``.
        sources: the files read, by role.
        classes: in class-number order.
    """

    dataset: str
    job: str
    iteration: int | None
    software: Literal["relion", "cryosparc"]
    distribution_source: DistributionSource
    sources: dict[str, str]
    classes: list[ClassAverage] = field(default_factory=list)

    def uid(self, number: int) -> str:
        return class_uid(self.dataset, self.job, self.iteration, number)


def finite_or_none(value: object) -> float | None:
    """``float(value)`` when finite, else ``None`` (RELION's ``inf`` / ``-nan`` for empty classes)."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None
