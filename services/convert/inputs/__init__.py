"""The four CryoLike input modes, read and checked down to (stack file, section) per image.

:func:`load_sources` is the one entry point: it reads every metadata file and every MRC header
an input names, and raises :class:`~cryobus.shared.errors.InputError` for anything wrong
before a single image is read.
"""

from __future__ import annotations

from cryobus.services.convert.inputs.cryosparc import read_cs_job_dir, read_indexed_cs
from cryobus.services.convert.inputs.model import LensMetadata, ParticleSource
from cryobus.services.convert.inputs.specs import CsJobDir, IndexedCs, IndexedStar, InputSpec, StarMrcPairs
from cryobus.services.convert.inputs.star import read_indexed_star, read_star_mrc_pair
from cryobus.shared.errors import InputError

__all__ = [
    "CsJobDir",
    "IndexedCs",
    "IndexedStar",
    "InputSpec",
    "LensMetadata",
    "ParticleSource",
    "StarMrcPairs",
    "load_sources",
]


def load_sources(spec: StarMrcPairs | IndexedStar | IndexedCs | CsJobDir, *, cryolike_order: bool = False) -> list[ParticleSource]:
    """Read and check an input.

    Args:
        spec: one of the four input models.
        cryolike_order: indexed modes only: CryoLike's image order (grouped by sorted stack
            path) instead of metadata row order.

    Returns:
        One source per STAR+MRC pair (stacks never span pairs), else a single source.

    Raises:
        InputError: see the readers (:func:`read_star_mrc_pair`, :func:`read_indexed_star`,
            :func:`read_indexed_cs`, :func:`read_cs_job_dir`); for pairs also lists of
            different lengths (``field="mrc_files"``; CryoLike silently truncates).
    """
    if isinstance(spec, StarMrcPairs):
        if len(spec.star_files) != len(spec.mrc_files):
            raise InputError(
                f"{len(spec.star_files)} STAR files but {len(spec.mrc_files)} MRC files: they must pair up",
                file=str(spec.star_files[0]), field="mrc_files",
            )
        return [
            read_star_mrc_pair(
                star, mrc,
                defocus_angle_is_degree=spec.defocus_angle_is_degree,
                phase_shift_is_degree=spec.phase_shift_is_degree,
            )
            for star, mrc in zip(spec.star_files, spec.mrc_files)
        ]
    if isinstance(spec, IndexedStar):
        return [read_indexed_star(spec.star_file, folder=spec.folder, project_dir=spec.project_dir, cryolike_order=cryolike_order)]
    if isinstance(spec, IndexedCs):
        return [
            read_indexed_cs(
                spec.cs_file, passthrough_file=spec.passthrough_file, folder=spec.folder,
                project_dir=spec.project_dir, cryolike_order=cryolike_order,
            )
        ]
    if isinstance(spec, CsJobDir):
        return [read_cs_job_dir(spec.folder, spec.job)]
    raise TypeError(f"unknown input spec {type(spec).__name__}")
