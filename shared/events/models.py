"""The v1 event payloads: the only contract between cryobus services.

Each payload class declares its ``domain`` and ``verb``; the CloudEvents ``type`` is
``cryobus.<domain>.<verb>.v<version>`` and the NATS subject is
``cryobus.events.<domain>.<verb>`` (facts) or ``cryobus.commands.<domain>.<verb>`` (commands).
Within a major version changes are additive only: new optional fields, never a rename.
Paths are absolute POSIX paths on the host/volume that ingest watches; artifacts are URIs.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


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


JobSoftware = Literal["relion", "cryosparc", "nextpyp", "ctffind"]


class JobDiscovered(EventData):
    """A processing job's outputs are complete and ready to read.

    ``job_type`` uses the producing software's own job names: RELION ``Import``, ``MotionCorr``,
    ``CtfFind``, ``AutoPick``, ``Extract``, ``Class2D``; CryoSPARC ``exposures``, ``particles``,
    ``class_averages``; NextPYP ``pkl``. ``files`` maps a role to an absolute path, e.g.
    ``{"star": ".../CtfFind/job005/micrographs_ctf.star"}`` or, for Class2D,
    ``{"data_star": ..., "model_star": ..., "classes_mrcs": ...}``.
    """

    domain: ClassVar[str] = "job"
    verb: ClassVar[str] = "discovered"

    dataset: str
    software: Literal["relion", "cryosparc", "nextpyp", "ctffind"]
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


class RenderCompleted(EventData):
    """A preview image was rendered and stored."""

    domain: ClassVar[str] = "render"
    verb: ClassVar[str] = "completed"

    dataset: str
    image_kind: Literal["micrograph", "power_spectrum", "class_average"]
    name: str = Field(description="micrograph_name, or `<job>/<iteration>/class_NNN` for class averages.")
    source: str = Field(description="The image file rendered (absolute path).")
    artifact_uri: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    method: str = Field(description="How it was made, e.g. `ctffind_diagnostic` or `computed_periodogram`.")

    def about(self) -> str:
        return f"{self.dataset}/{self.name}"


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


EVENT_TYPES: tuple[type[EventData], ...] = (
    ExposureDiscovered,
    JobDiscovered,
    IngestRequested,
    IngestScanCompleted,
    InputMissing,
    ArtifactStored,
    MetadataUpdated,
    RenderCompleted,
    ProcessingFailed,
)

_BY_TYPE = {cls.static_type(): cls for cls in EVENT_TYPES if cls is not ProcessingFailed}


def event_class_for_type(event_type: str) -> type[EventData] | None:
    """The payload class for a CloudEvents ``type`` string, or None if unknown."""
    cls = _BY_TYPE.get(event_type)
    if cls is None and event_type.endswith(".failed.v1") and event_type.startswith("cryobus."):
        return ProcessingFailed
    return cls
