"""The four input modes as pydantic models: what a service message or the CLI asks to convert.

They mirror CryoLike's four wrappers (reference §1.2). ``folder`` plays CryoLike's
``folder_mrc`` / ``folder_cryosparc`` role; ``project_dir`` is cryobus's addition for paths
that are relative to a RELION/CryoSPARC project folder. Without either, relative paths are
looked up next to the metadata file and then in its parent folders (see
:func:`cryobus.services.convert.inputs.paths.resolve_stack_paths`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StarMrcPairs(_Spec):
    """Pairs of (STAR, MRC): row k of each STAR describes image k of its MRC; stacks never span pairs.

    CryoLike: ``convert_particle_stacks_from_paired_star_and_mrc_files``. The angle flags say
    whether ``rlnDefocusAngle`` / ``rlnPhaseShift`` are in degrees (RELION's unit) or radians.
    """

    mode: Literal["star-pairs"] = "star-pairs"
    star_files: list[Path] = Field(min_length=1)
    mrc_files: list[Path] = Field(min_length=1)
    defocus_angle_is_degree: bool = True
    phase_shift_is_degree: bool = True


class IndexedStar(_Spec):
    """One RELION particle STAR (3.0 single block, or 3.1+ with ``data_optics``), ``rlnImageName = idx@stack``.

    CryoLike: ``convert_particle_stacks_from_indexed_star_file``.
    """

    mode: Literal["star"] = "star"
    star_file: Path
    folder: Path | None = Field(default=None, description="CryoLike's folder_mrc: stacks are looked up here by file name.")
    project_dir: Path | None = Field(default=None, description="Folder the relative rlnImageName paths are relative to.")


class IndexedCs(_Spec):
    """One CryoSPARC particle ``.cs`` with ``blob/path`` and ``blob/idx``.

    CryoLike: ``convert_particle_stacks_from_indexed_cryosparc_file``.
    """

    mode: Literal["cs"] = "cs"
    cs_file: Path
    passthrough_file: Path | None = Field(
        default=None, description="J<n>_passthrough_<name>.cs: fields the .cs lacks (e.g. ctf/*), matched on uid."
    )
    folder: Path | None = Field(default=None, description="CryoLike's folder_cryosparc: stacks are looked up here by file name.")
    project_dir: Path | None = Field(default=None, description="CryoSPARC project folder the blob/path values are relative to.")


class CsJobDir(_Spec):
    """A CryoSPARC job folder ``FOLDER/J{job}`` with its passthrough ``.cs`` and ``restack/`` or ``downsample/`` batches.

    CryoLike: ``convert_particle_stacks_from_cryosparc_job_directory``.
    """

    mode: Literal["job-dir"] = "job-dir"
    folder: Path
    job: int = Field(ge=0)


InputSpec = Annotated[StarMrcPairs | IndexedStar | IndexedCs | CsJobDir, Field(discriminator="mode")]
