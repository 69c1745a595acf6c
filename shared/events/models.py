"""The v1 event payloads: the only contract between cryobus services.

Each payload class declares its ``domain`` and ``verb``; the CloudEvents ``type`` is
``cryobus.<domain>.<verb>.v<version>`` and the NATS subject is
``cryobus.events.<domain>.<verb>`` (facts) or ``cryobus.commands.<domain>.<verb>`` (commands).
Within a major version changes are additive only: new optional fields, never a rename.
Paths are absolute POSIX paths on the host/volume that ingest watches; artifacts are URIs.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EventData(BaseModel):
    """Base class of every event payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    domain: ClassVar[str]
    verb: ClassVar[str]
    version: ClassVar[int] = 1
    kind: ClassVar[Literal["event", "command"]] = "event"

    def event_type(self) -> str:
        return f"cryobus.{self.domain}.{self.verb}.v{self.version}"

    def nats_subject(self) -> str:
        prefix = "events" if self.kind == "event" else "commands"
        return f"cryobus.{prefix}.{self.domain}.{self.verb}"

    def about(self) -> str | None:
        """The CloudEvents ``subject``: what this event is about (dataset/item)."""
        return getattr(self, "dataset", None)

    @classmethod
    def static_type(cls) -> str:
        return f"cryobus.{cls.domain}.{cls.verb}.v{cls.version}"

    @classmethod
    def static_subject(cls) -> str:
        prefix = "events" if cls.kind == "event" else "commands"
        return f"cryobus.{prefix}.{cls.domain}.{cls.verb}"


class ExposureDiscovered(EventData):
    """A complete micrograph (or movie) file appeared under a watched root.

    Emitted once per (dataset, path, size, mtime); a rescan re-publishes the same id.
    """

    domain: ClassVar[str] = "exposure"
    verb: ClassVar[str] = "discovered"

    dataset: str = Field(description="Dataset name (the watched root's folder name unless overridden).")
    path: str = Field(description="Absolute path of the file.")
    micrograph_name: str = Field(description="File name without extension; the prismPYP `micrograph_name`.")
    file_format: Literal["mrc", "tiff", "eer"]
    size_bytes: int = Field(ge=0)
    mtime_ns: int = Field(description="Modification time, ns since the epoch.")
    pixel_size_A: float | None = Field(default=None, description="Pixel size in Å/px from the header, if known.")

    def about(self) -> str:
        return f"{self.dataset}/{self.micrograph_name}"


JobSoftware = Literal["relion", "cryosparc", "nextpyp", "ctffind", "serialem"]


class JobDiscovered(EventData):
    """A processing job's outputs are complete and ready to read.

    ``job_type`` uses the producing software's own job names: RELION ``Import``, ``MotionCorr``,
    ``CtfFind``, ``AutoPick``, ``Extract``, ``Class2D``; CryoSPARC ``exposures``, ``particles``,
    ``class_averages``; NextPYP ``pkl``; SerialEM/IMOD ``tilt_series`` (software ``serialem``,
    one tilt series; roles ``mdoc``, ``rawtlt``, ``tlt``, ``xf``, ``tilt_series``, ``tomogram_0``,
    ``tomogram_1``…, ``config``). ``files`` maps a role to an absolute path, e.g.
    ``{"star": ".../CtfFind/job005/micrographs_ctf.star"}`` or, for Class2D,
    ``{"data_star": ..., "model_star": ..., "classes_mrcs": ...}``.
    """

    domain: ClassVar[str] = "job"
    verb: ClassVar[str] = "discovered"

    dataset: str
    software: Literal["relion", "cryosparc", "nextpyp", "ctffind", "serialem"]
    job_type: str
    project_dir: str = Field(description="Absolute path of the project root (RELION paths are relative to it).")
    job_dir: str = Field(description="Absolute path of the job folder.")
    files: dict[str, str]
    iteration: int | None = Field(default=None, description="Iteration of iterative jobs (Class2D: the highest found).")
    fingerprint: str = Field(description="Digest of (path, size, mtime) of every file in `files`.")

    def about(self) -> str:
        return f"{self.dataset}/{self.job_type}/{self.job_dir.rstrip('/').rsplit('/', 1)[-1]}"


class IngestRequested(EventData):
    """Command: scan these paths once (``cryobus ingest PATH``)."""

    domain: ClassVar[str] = "ingest"
    verb: ClassVar[str] = "requested"
    kind: ClassVar[Literal["event", "command"]] = "command"

    paths: list[str]
    dataset: str | None = Field(default=None, description="Dataset name; default: each path's folder name.")

    def about(self) -> str | None:
        return self.dataset


class IngestScanCompleted(EventData):
    """Ingest finished a full scan of a root: every complete input under it has been announced."""

    domain: ClassVar[str] = "ingest"
    verb: ClassVar[str] = "scanned"

    dataset: str
    root: str
    inputs_announced: int = Field(ge=0, description="Inputs announced by this scan (new or already known).")
    inputs_refused: int = Field(ge=0, description="Paths refused (outside roots, incomplete, unreadable).")


class InputMissing(EventData):
    """A file referenced by an input (e.g. a micrograph named in a STAR file) does not exist.

    Not a failure: the rest of the work goes on. The id is derived from (dataset, path), so
    each missing file is reported once however many services or rows notice it.
    """

    domain: ClassVar[str] = "input"
    verb: ClassVar[str] = "missing"

    dataset: str
    path: str = Field(description="The missing file (absolute path).")
    referenced_by: str = Field(description="The file that references it.")
    field: str | None = Field(default=None, description="The column/field holding the reference, e.g. rlnMicrographName.")


class ArtifactStored(EventData):
    """An artifact was written to the store. Nobody finds an artifact any other way."""

    domain: ClassVar[str] = "artifact"
    verb: ClassVar[str] = "stored"

    dataset: str
    uri: str = Field(description="Full URI, e.g. file:///data/out/ds/webp/mic.webp or s3://bucket/ds/...")
    key: str = Field(description="Key relative to the store root.")
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    media_type: str
    producer: str = Field(description="Service that wrote it.")
    role: str = Field(description="What it is, e.g. micrograph_preview, power_spectrum_preview, class_average, metadata_table.")
    inputs: list[str] = Field(default_factory=list, description="Paths/URIs it was computed from.")

    def about(self) -> str:
        return f"{self.dataset}/{self.key}"


class MetadataUpdated(EventData):
    """The dataset's prismPYP metadata tables were (re)written."""

    domain: ClassVar[str] = "metadata"
    verb: ClassVar[str] = "updated"

    dataset: str
    table_uri: str = Field(description="micrograph_metadata.csv")
    pixel_size_uri: str | None = Field(default=None, description="pixel_size.txt (absent until a pixel size is known)")
    micrographs_list_uri: str = Field(description="all_micrographs_list.micrographs")
    micrographs: list[str] = Field(description="micrograph_name of every row, in table order.")
    sources: list[str] = Field(description="Input files the table was built from.")
    unmatched: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per source, the micrographs other sources have and it lacks (the mismatch report).",
    )
    table_parquet_uri: str | None = Field(
        default=None, description="micrograph_metadata.parquet: the same table, typed (what services read back)."
    )


class RenderCompleted(EventData):
    """A preview image was rendered and stored."""

    domain: ClassVar[str] = "render"
    verb: ClassVar[str] = "completed"

    dataset: str
    image_kind: Literal[
        "micrograph",
        "power_spectrum",
        "class_average",
        "class_average_montage",
        "particle_picks",
        "tilt_series_slice",
        "tomogram_slice",
    ]
    name: str = Field(description="micrograph_name, or `<job>/<iteration>/class_NNN` for class averages.")
    source: str = Field(description="The image file rendered (absolute path).")
    artifact_uri: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    method: str = Field(description="How it was made, e.g. `ctffind_diagnostic` or `computed_periodogram`.")
    params_tag: str | None = Field(
        default=None,
        description="Render parameters' tag when not the defaults (see RenderRequested); None for the default render.",
    )

    def about(self) -> str:
        return f"{self.dataset}/{self.name}"


class RenderRequested(EventData):
    """Command: render a dataset's images again, with these parameters (``cryobus reprocess --stage render``).

    The render service replays the discovery events (``exposure.discovered``, ``job.discovered``)
    of ``dataset`` from the event stream (those published at or after ``since``, if given) and
    renders them with ``params``. Non-default parameters write beside the default images, under
    ``<dataset>/renders/<params_tag>/``; an image that already exists there is not redone, so the
    same request twice does no duplicate work.
    """

    domain: ClassVar[str] = "render"
    verb: ClassVar[str] = "requested"
    kind: ClassVar[Literal["event", "command"]] = "command"

    dataset: str
    since: str | None = Field(default=None, description="ISO 8601 time; only discovery events published since then.")
    params: dict[str, object] = Field(
        default_factory=dict,
        description="Render parameters overriding the defaults, by name (see services/render/params.py).",
    )


class ReprocessRequested(EventData):
    """Command: redo a stage's work for a dataset (``cryobus reprocess --stage S``), for metadata and
    labelling (render has its own :class:`RenderRequested`, with render parameters; a conversion
    with new parameters is a ``convert.requested`` — ``cryobus convert`` — into a new folder).

    Every service with reprocessing enabled receives it; the one named by ``stage`` replays the
    events it consumes for ``dataset`` (published since ``since``) from the event stream and handles
    them again under this command's correlation id. An event already reprocessed with the same
    ``params`` is skipped, so the same request twice does no duplicate work.
    """

    domain: ClassVar[str] = "reprocess"
    verb: ClassVar[str] = "requested"
    kind: ClassVar[Literal["event", "command"]] = "command"

    stage: Literal["metadata", "labelling"]
    dataset: str
    since: str | None = Field(default=None, description="ISO 8601 time; only events published since then.")
    params: dict[str, object] = Field(
        default_factory=dict, description="Stage parameters, by name; a stage that takes none refuses any."
    )


class PortalMetadataWritten(EventData):
    """One tilt series' CryoET Data Portal metadata was written (see docs/cryoet-portal.md).

    Every file is also announced by ``artifact.stored`` (zarr chunks included); this event lists
    the metadata files and the OME-Zarr roots. Keys live under ``<dataset>/cryoet/``, the portal
    bucket root: ``<portal_dataset_id>/<run_name>/...``.
    """

    domain: ClassVar[str] = "cryoet"
    verb: ClassVar[str] = "written"

    dataset: str
    portal_dataset_id: int = Field(description="The portal dataset id (`dataset.dataset_identifier` of the config).")
    deposition_id: int
    run_name: str = Field(description="The portal run (folder) name.")
    source_dir: str = Field(description="The tilt-series folder (absolute path).")
    config: str = Field(description="The dataset config YAML used (absolute path).")
    voxel_spacings_A: list[float] = Field(
        default_factory=list,
        description="Voxel spacing (Å) of each `VoxelSpacing<vs:.3f>` folder written; empty without tomograms.",
    )
    artifact_uris: list[str] = Field(description="URIs of the metadata JSON, .rawtlt and NDJSON files written.")
    omezarr_uris: list[str] = Field(
        default_factory=list, description="URIs of the OME-Zarr roots (their chunks are announced one by one)."
    )
    files_written: int = Field(ge=0, description="Every file written, zarr chunks included.")
    missing_config_fields: list[str] = Field(
        default_factory=list,
        description="Config fields the portal needs that neither the config nor the files give. Always empty "
        "here: a run with missing fields fails with `metadata.failed` instead (its reason lists them all).",
    )
    derived_from: dict[str, str] = Field(default_factory=dict, description="Derived fact -> the file it came from.")
    warnings: list[str] = Field(default_factory=list, description="Inconsistencies that did not stop the run.")

    def about(self) -> str:
        return f"{self.dataset}/{self.run_name}"


class ProcessingFailed(EventData):
    """A service gave up on an event: bad input (permanent) or retries exhausted.

    Published on ``cryobus.events.<service>.failed`` with type ``cryobus.<service>.failed.v1``;
    the original message is copied to ``cryobus.dlq.<service>``.
    """

    domain: ClassVar[str] = "service"
    verb: ClassVar[str] = "failed"

    service: str
    reason: str
    file: str | None = Field(default=None, description="The offending file, when known.")
    field: str | None = Field(default=None, description="The offending field/column, when known.")
    error_class: Literal["permanent", "retries_exhausted"]
    failed_event_id: str | None = None
    failed_event_type: str | None = None
    failed_subject: str
    deliveries: int = Field(ge=1)
    dataset: str | None = None

    def event_type(self) -> str:
        return f"cryobus.{self.service}.failed.v{self.version}"

    def nats_subject(self) -> str:
        return f"cryobus.events.{self.service}.failed"

    def about(self) -> str | None:
        return self.file or self.dataset


GradeLetter = Literal["A", "B", "C", "D", "F"]


class LabelRecorded(EventData):
    """A labeler graded a 2D class average in the labelling web app (or undid their last grade).

    One event per grade action, published after the grade is committed to the label store
    (through its outbox, so a grade saved while NATS is down is announced later, never lost).
    Grades: A best … F unusable (numerically A=1 … F=5, tkteach's category order). The class is
    named by its stable id (dataset, job, iteration, class number; docs/labelling.md).
    """

    domain: ClassVar[str] = "label"
    verb: ClassVar[str] = "recorded"

    dataset: str
    class_uid: str = Field(description="Stable class id `<dataset>/<job>/it<NNN>/class_<KKK>` (`final` without iteration).")
    job: str = Field(description="Job folder relative to the parent of its project, e.g. `sppractice/Class2D/job010`.")
    iteration: int | None = Field(default=None, description="Iteration the class comes from; None without one.")
    class_number: int = Field(ge=0, description="As the source numbers it: RELION 1-based, CryoSPARC 0-based.")
    labeler: str = Field(description="The labeler's e-mail identity.")
    grade: GradeLetter | None = Field(description="The labeler's grade now; None when an undo removed it.")
    previous_grade: GradeLetter | None = Field(default=None, description="The labeler's grade before this action.")
    action: Literal["graded", "undone"]
    revision: int = Field(ge=1, description="Id of this action in the label store's grade history (increasing).")
    recorded_at: str = Field(description="When the grade was saved, ISO 8601 UTC.")

    def about(self) -> str:
        return self.class_uid


class TrainingSetExported(EventData):
    """A training set of graded class averages was written to the artifact store.

    Files under ``labelling/training_sets/<export_id>/``: ``manifest.json`` (definitions, counts,
    every file's sha256), ``training_set.csv`` and ``.parquet`` (one row per class: stable id, the
    six model features, per-labeler grades, consensus target), ``images/*.mrcs`` (float32 class
    averages, lossless). Each file is also announced by ``artifact.stored``. ``export_id`` is
    derived from the content, so exporting the same labels twice writes the same files.
    """

    domain: ClassVar[str] = "training_set"
    verb: ClassVar[str] = "exported"

    export_id: str
    manifest_uri: str
    table_uri: str = Field(description="training_set.csv")
    table_parquet_uri: str = Field(description="training_set.parquet (same rows, typed columns)")
    image_uris: list[str] = Field(description="The float32 MRC stacks holding the classes' images.")
    classes: int = Field(ge=0, description="Rows in the table.")
    labelers: list[str] = Field(description="Labelers whose grades are in the table (e-mail).")
    datasets: list[str]
    include_partial: bool = Field(description="True: classes graded by some labelers are included too.")
    requested_by: str | None = None

    def about(self) -> str:
        return self.export_id


class ParticlesConverted(EventData):
    """One particle stack was converted into CryoLike's layout; every file of it is written.

    Published (after the stack's files, each announced by ``artifact.stored``) by the convert
    service for each stack of a conversion. The files lie under ``prefix`` in the artifact store in
    CryoLike's layout (docs/convert.md), so ``layout_uri`` can be handed to CryoLike unchanged:
    ``phys/particles_phys_stack_NNNNNN.pt`` (B, N0, N1) physical images,
    ``fft/particles_fourier_stack_NNNNNN.pt`` (B, n_shells, n_inplanes) polar Fourier images and
    ``fft/particles_fourier_stack_NNNNNN.npz`` (image descriptor + CTF values: defocus Å, angles
    radians, Cs mm, voltage kV). ``NNNNNN`` = ``stack_index``.
    """

    domain: ClassVar[str] = "particles"
    verb: ClassVar[str] = "converted"

    dataset: str
    stack_index: int = Field(ge=0, description="Stack number (NNNNNN in the file names), from 0.")
    n_stacks: int = Field(ge=1, description="Stacks of this conversion (so a waiter knows when it has them all).")
    n_images: int = Field(ge=1, description="Images in this stack.")
    prefix: str = Field(description="Key prefix of the CryoLike layout in the artifact store.")
    layout_uri: str = Field(description="URI of the folder holding phys/, fft/ and plots/ (the prefix).")
    phys_uri: str = Field(description="phys/particles_phys_stack_NNNNNN.pt")
    fourier_uri: str = Field(description="fft/particles_fourier_stack_NNNNNN.pt")
    npz_uri: str = Field(description="fft/particles_fourier_stack_NNNNNN.npz (written last)")
    plot_uris: dict[str, str] = Field(
        default_factory=dict, description="PNG plots by kind (`phys`, `fourier`, `power`); empty without plots."
    )
    metadata_file: str = Field(description="The STAR / .cs file the stack's rows come from (absolute path).")
    source_files: list[str] = Field(description="The MRC stacks the stack's images were read from (absolute paths).")
    image_shape: list[int] = Field(min_length=2, max_length=2, description="(N0, N1) of the stored physical images, px.")
    phys_dtype: str = Field(description="torch dtype of the physical images: float32, or float16 for MRC mode 12.")
    fourier_dtype: str = Field(description="torch dtype of the Fourier images: complex64 (single) or complex128 (double).")
    pixel_size_A: float | None = Field(default=None, description="Saved `pixel_size` of the npz (Å, first axis).")
    device: str = Field(description="Where it was transformed: `cpu` or `cuda:N`.")
    timings_s: dict[str, float] = Field(
        default_factory=dict, description="Seconds spent on this stack: `read_s`, `transform_s` (incl. host/device copies), `write_s`."
    )
    gpu_memory_bytes: int | None = Field(
        default=None, description="On a GPU: peak device memory in use so far (torch + cufinufft); None on the CPU."
    )

    def about(self) -> str:
        return f"{self.dataset}/{self.prefix}/{self.stack_index:06d}"


class ImageDescriptorValues(BaseModel):
    """CryoLike's ``ImageDescriptor.from_individual_values`` arguments, inline in a request.

    Missing ``n_pixels`` / ``pixel_size`` are taken from the particles (their stored size and
    pixel size, after any downsampling); the other defaults are CryoLike's.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_pixels: int | list[int] | None = Field(default=None, description="Image size in px (one value or [N0, N1]).")
    pixel_size: float | list[float] | None = Field(default=None, description="Pixel size in Å (one value or two).")
    precision: Literal["single", "double"] = "single"
    resolution_factor: float = Field(default=1.0, gt=0, description="radius_max = resolution_factor · n_pixels / 4.")
    n_inplanes: int | None = Field(default=None, ge=1, description="Angles per shell; default 2 · n_pixels.")
    viewing_distance: float | None = Field(default=None, gt=0, description="Templates only; default 1/(4π)/resolution_factor.")


class ConvertRequested(EventData):
    """Command: convert particle stacks into CryoLike's layout (``cryobus convert ...``).

    ``mode`` is one of CryoLike's four input modes and says which input fields are used:
    ``star-pairs`` (``star_files`` + ``mrc_files``, paired by position), ``star`` (``star_file``),
    ``cs`` (``cs_file``, optionally ``passthrough_file``), ``job-dir`` (``job_folder`` + ``job``).
    The image descriptor is the params ``.npz`` at ``params_file``, or built from ``descriptor``,
    or, with neither, CryoLike's defaults for the particles. Options are named as CryoLike names
    them (docs/convert.md). The convert service answers with one ``particles.converted`` per
    stack, or ``convert.failed`` (file, field and row of bad input) before any stack is announced.
    """

    domain: ClassVar[str] = "convert"
    verb: ClassVar[str] = "requested"
    kind: ClassVar[Literal["event", "command"]] = "command"

    dataset: str = Field(description="Dataset the outputs belong to (first part of the default prefix).")
    mode: Literal["star-pairs", "star", "cs", "job-dir"]
    star_files: list[str] = Field(default_factory=list, description="star-pairs: STAR files (absolute paths).")
    mrc_files: list[str] = Field(default_factory=list, description="star-pairs: MRC stacks, one per STAR file.")
    star_file: str | None = Field(default=None, description="star: indexed particle STAR (rlnImageName = idx@stack).")
    cs_file: str | None = Field(default=None, description="cs: indexed CryoSPARC particle .cs (blob/path, blob/idx).")
    passthrough_file: str | None = Field(default=None, description="cs: passthrough .cs supplying fields the .cs lacks (by uid).")
    job_folder: str | None = Field(default=None, description="job-dir: folder holding J<job>/.")
    job: int | None = Field(default=None, ge=0, description="job-dir: CryoSPARC job number.")
    folder: str | None = Field(default=None, description="CryoLike's folder_mrc / folder_cryosparc: stacks looked up here by name.")
    project_dir: str | None = Field(default=None, description="Folder the metadata's relative stack paths are relative to.")
    defocus_angle_is_degree: bool = Field(default=True, description="star-pairs: rlnDefocusAngle in degrees.")
    phase_shift_is_degree: bool = Field(default=True, description="star-pairs: rlnPhaseShift in degrees.")
    params_file: str | None = Field(default=None, description="CryoLike params .npz (absolute path the service can read).")
    descriptor: ImageDescriptorValues | None = Field(default=None, description="Inline image descriptor (instead of params_file).")
    batch_size: int = Field(default=1024, ge=1, description="Images per output stack.")
    n_stacks_max: int = Field(default=-1, ge=-1, description="Stop after this many stacks; -1 = all.")
    downsample_factor: int = Field(default=1, ge=1)
    downsample_type: Literal["mean", "max"] = "mean"
    pixel_size: float | None = Field(default=None, gt=0, description="Pixel size of the input images, Å.")
    override_pixel_size: bool = Field(default=False, description="Let pixel_size win over a different metadata value.")
    flag_plots: bool = True
    precision: Literal["single", "double"] | None = Field(default=None, description="Default: the descriptor's.")
    cryolike_compatible: bool = Field(default=False, description="Indexed modes: CryoLike's image order (by sorted stack path).")
    overwrite: bool = Field(default=False, description="Replace existing outputs under the prefix.")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    prefix: str | None = Field(
        default=None, description="Key prefix of the outputs in the service's store; default `<dataset>/cryolike/<input name>`."
    )

    @model_validator(mode="after")
    def _mode_inputs(self) -> ConvertRequested:
        needed = {
            "star-pairs": ("star_files", "mrc_files"),
            "star": ("star_file",),
            "cs": ("cs_file",),
            "job-dir": ("job_folder", "job"),
        }[self.mode]
        missing = [name for name in needed if getattr(self, name) in (None, [])]
        if missing:
            raise ValueError(f"mode {self.mode!r} needs {', '.join(missing)}")
        if self.mode == "star-pairs" and len(self.star_files) != len(self.mrc_files):
            raise ValueError(f"{len(self.star_files)} star_files but {len(self.mrc_files)} mrc_files: they must pair up")
        if self.n_stacks_max == 0:
            raise ValueError("n_stacks_max must be -1 (all) or at least 1")
        return self


EVENT_TYPES: tuple[type[EventData], ...] = (
    ExposureDiscovered,
    JobDiscovered,
    IngestRequested,
    IngestScanCompleted,
    InputMissing,
    ArtifactStored,
    MetadataUpdated,
    RenderCompleted,
    RenderRequested,
    ReprocessRequested,
    ProcessingFailed,
    PortalMetadataWritten,
    LabelRecorded,
    TrainingSetExported,
    ParticlesConverted,
    ConvertRequested,
)

_BY_TYPE = {cls.static_type(): cls for cls in EVENT_TYPES if cls is not ProcessingFailed}


def event_class_for_type(event_type: str) -> type[EventData] | None:
    """The payload class for a CloudEvents ``type`` string, or None if unknown."""
    cls = _BY_TYPE.get(event_type)
    if cls is None and event_type.endswith(".failed.v1") and event_type.startswith("cryobus."):
        return ProcessingFailed
    return cls
