"""The convert service: particle stacks → CryoLike's layout, as ingest announces them or as asked.

Handles:

* ``job.discovered`` for particle jobs: RELION ``Extract`` (``files["star"]``, an indexed STAR
  whose ``rlnImageName`` paths are relative to ``project_dir``) and CryoSPARC ``particles``
  (``files["cs"]``, with ``files["passthrough_cs"]`` supplying the fields the job passed on, e.g.
  ``ctf/*``; outputs without ``blob/path``, such as picks, are not particle stacks and are
  skipped). The image descriptor is the params ``.npz`` of ``CRYOBUS_CONVERT_PARAMS`` when set,
  else one built from the particles with CryoLike's defaults (stored size and pixel size,
  ``resolution_factor`` 1, ``n_inplanes = 2·n_pixels``, precision single). Outputs go to
  ``<dataset>/cryolike/<job>/`` — ``<job>`` is the job folder relative to the project
  (``Extract/job009``), plus the ``.cs`` name for CryoSPARC (``J12/J12_particles``), since one job
  may have several particle outputs — and are rewritten when the job is announced again.
* ``convert.requested`` (``cryobus convert ...``): any of CryoLike's four input modes with its
  options; outputs under the request's ``prefix`` (default ``<dataset>/cryolike/<input name>``);
  existing outputs are refused unless ``overwrite`` (a redelivery of the same request rewrites).

Per conversion, :func:`~cryobus.services.convert.pipeline.prepare` reads and checks every input
first, so bad input becomes ``convert.failed`` (file, field, and the metadata row in the reason)
before anything is written. Then each file is written and announced by ``artifact.stored`` as it
lands, and each stack by ``particles.converted`` once all its files are written (queued, and
published before the message is acked). Memory is bounded by the batch: at most three stacks
are in memory in the pipeline, one conversion runs at a time per replica (its NUFFT uses every
core, or the GPU), and a request whose stacks would not fit in ``max_image_bytes`` is refused.

Where the service may read: when ``watch``/``roots`` are configured, every path of a request and
every stack file the metadata names must lie under one of them (real paths, symlinks resolved).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from cryobus.services.convert.inputs.specs import CsJobDir, IndexedCs, IndexedStar, StarMrcPairs
from cryobus.services.convert.params import DefaultDescriptor, ImageDescriptor
from cryobus.services.convert.pipeline import (
    ConvertOptions,
    InputsSpec,
    Prepared,
    StackWritten,
    convert,
    prepare,
    select_device,
)
from cryobus.shared.bus.service import HandlerContext, Service
from cryobus.shared.config import Settings
from cryobus.shared.errors import InputError
from cryobus.shared.events import ConvertRequested, Envelope, JobDiscovered, ParticlesConverted
from cryobus.shared.formats.cryosparc import read_cs
from cryobus.shared.store import StoredObject, safe_key

service = Service(name="convert")

# One conversion at a time per replica: each uses every core (finufft) or the GPU, and holds up to
# three stacks in memory; a second message waits here (its heartbeats go on). Scale with replicas.
_ONE_AT_A_TIME = threading.Lock()

# artifact.stored roles of the CryoLike files, by the writer's role names.
ROLES = {
    "phys": "particles_phys",
    "fourier": "particles_fourier",
    "npz": "particles_npz",
    "plot_phys": "particles_plot_phys",
    "plot_fourier": "particles_plot_fourier",
    "plot_power": "particles_plot_power_spectrum",
}
_PLOT_KINDS = {"plot_phys": "phys", "plot_fourier": "fourier", "plot_power": "power"}
# Stacks the pipeline may hold at once (read i+1, transform i, write i-1).
_STACKS_IN_MEMORY = 3


# ---------------------------------------------------------------------------------- inputs


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def check_roots(paths: Iterable[tuple[str | os.PathLike, str]], settings: Settings) -> None:
    """Refuse paths outside the configured ``watch`` + ``roots`` folders (no folders: no limit).

    Args:
        paths: (path, field it came from) pairs.

    Raises:
        InputError: a path outside every root (``field`` = where it came from).
    """
    roots = [_real(r) for r in [*settings.watch, *settings.roots]]
    if not roots:
        return
    for path, field in paths:
        real = _real(path)
        if not any(real.is_relative_to(root) for root in roots):
            raise InputError(
                f"{path} lies outside the allowed roots ({', '.join(str(r) for r in roots)})", file=str(path), field=field
            )


def _absolute(path: str, field: str) -> Path:
    p = Path(path)
    if not p.is_absolute():
        raise InputError(f"paths in a convert request must be absolute, got {path!r}", file=path, field=field)
    return p


def request_spec(req: ConvertRequested) -> tuple[InputsSpec, list[tuple[Path, str]]]:
    """The pipeline's input spec for a request, and every path it names with its field.

    Raises:
        InputError: a relative path.
    """
    named: list[tuple[Path, str]] = []

    def path(value: str | None, field: str) -> Path | None:
        if value is None:
            return None
        p = _absolute(value, field)
        named.append((p, field))
        return p

    folder, project_dir = path(req.folder, "folder"), path(req.project_dir, "project_dir")
    spec: InputsSpec
    if req.mode == "star-pairs":
        spec = StarMrcPairs(
            star_files=[path(s, "star_files") for s in req.star_files],  # type: ignore[misc]
            mrc_files=[path(m, "mrc_files") for m in req.mrc_files],  # type: ignore[misc]
            defocus_angle_is_degree=req.defocus_angle_is_degree,
            phase_shift_is_degree=req.phase_shift_is_degree,
        )
    elif req.mode == "star":
        spec = IndexedStar(star_file=path(req.star_file, "star_file"), folder=folder, project_dir=project_dir)  # type: ignore[arg-type]
    elif req.mode == "cs":
        spec = IndexedCs(
            cs_file=path(req.cs_file, "cs_file"),  # type: ignore[arg-type]
            passthrough_file=path(req.passthrough_file, "passthrough_file"),
            folder=folder,
            project_dir=project_dir,
        )
    else:
        spec = CsJobDir(folder=path(req.job_folder, "job_folder"), job=req.job)  # type: ignore[arg-type]
    return spec, named


def request_params(req: ConvertRequested) -> tuple[ImageDescriptor | DefaultDescriptor | Path, list[tuple[Path, str]]]:
    """The image descriptor a request asks for: its params file, its inline values, or CryoLike's defaults."""
    if req.params_file is not None:
        p = _absolute(req.params_file, "params_file")
        return p, [(p, "params_file")]
    d = req.descriptor
    if d is None:
        return DefaultDescriptor(), []

    def pair(value: object) -> object:
        return tuple(value) if isinstance(value, list) else value

    return (
        DefaultDescriptor(
            n_pixels=pair(d.n_pixels), pixel_size=pair(d.pixel_size), precision=d.precision,  # type: ignore[arg-type]
            resolution_factor=d.resolution_factor, n_inplanes=d.n_inplanes, viewing_distance=d.viewing_distance,
        ),
        [],
    )


def default_prefix(dataset: str, req: ConvertRequested) -> str:
    """``<dataset>/cryolike/<input name>``: the metadata file's stem, or ``J<n>`` for a job folder."""
    if req.mode == "job-dir":
        name = f"J{req.job}"
    else:
        first = req.star_files[0] if req.mode == "star-pairs" else (req.star_file or req.cs_file)
        name = Path(first or "particles").stem
    return safe_key(dataset, "cryolike", name)


def job_conversion(job: JobDiscovered) -> tuple[InputsSpec, str] | None:
    """The input spec and output prefix of a discovered particle job; None for other jobs.

    Raises:
        InputError: an unreadable ``.cs``.
    """
    project = Path(job.project_dir)
    job_dir = Path(job.job_dir)
    rel = os.path.relpath(job_dir, project) if job_dir.is_relative_to(project) else job_dir.name
    if (job.software, job.job_type) == ("relion", "Extract") and "star" in job.files:
        return IndexedStar(star_file=Path(job.files["star"]), project_dir=project), safe_key(job.dataset, "cryolike", rel)
    if (job.software, job.job_type) == ("cryosparc", "particles") and "cs" in job.files:
        cs = Path(job.files["cs"])
        passthrough = Path(job.files["passthrough_cs"]) if "passthrough_cs" in job.files else None
        fields = set(read_cs(cs).dtype.names or ())
        if passthrough is not None:
            fields |= set(read_cs(passthrough).dtype.names or ())
        if "blob/path" not in fields:
            return None  # picks or other particle metadata without images: nothing to convert
        spec = IndexedCs(cs_file=cs, passthrough_file=passthrough, project_dir=project)
        return spec, safe_key(job.dataset, "cryolike", rel, cs.stem)
    return None


# ---------------------------------------------------------------------------------- running


def check_memory(prepared: Prepared, settings: Settings) -> None:
    """Refuse a conversion whose in-flight stacks would exceed ``max_image_bytes``.

    Per image: the read image (its MRC dtype) and the stored physical image (float32 at most)
    plus its Fourier image (n_shells · n_inplanes complex, 8 or 16 bytes).

    Raises:
        InputError: ``field="batch_size"``.
    """
    grid = prepared.grid
    worst = 0
    for source, desc, stored in zip(prepared.sources, prepared.descriptors, prepared.stored_shapes):
        itemsize = max(h.dtype.itemsize for h in source.headers)
        complex_size = 16 if desc.precision == "double" else 8
        per_image = source.image_shape[0] * source.image_shape[1] * max(itemsize, 4) + stored[0] * stored[1] * 4
        per_image += grid.n_shells * grid.n_inplanes * complex_size
        worst = max(worst, per_image)
    largest = max((s.n_images for s in prepared.stacks), default=0)
    need = _STACKS_IN_MEMORY * largest * worst
    if need > settings.max_image_bytes:
        raise InputError(
            f"{largest} images per stack need about {need / 2**30:.1f} GiB in flight, more than max_image_bytes "
            f"({settings.max_image_bytes / 2**30:.1f} GiB); use a smaller batch_size",
            field="batch_size",
        )


def run_conversion(
    ctx: HandlerContext,
    *,
    dataset: str,
    spec: InputsSpec,
    params: ImageDescriptor | DefaultDescriptor | Path,
    options: ConvertOptions,
    inputs: list[str],
) -> list[StackWritten]:
    """Check, convert and announce one conversion (see the module docstring).

    Raises:
        InputError: bad input, found before anything is written; a device that cannot be used.
    """
    with _ONE_AT_A_TIME:
        store = ctx.store
        prepared = prepare(spec, params, options, store=store)
        check_memory(prepared, ctx.settings)
        check_roots(((f, "stack") for s in prepared.sources for f in s.mrc_files), ctx.settings)
        try:
            select_device(options.device)
        except RuntimeError as exc:
            raise InputError(str(exc), field="device") from None
        for note in prepared.notes:
            ctx.log.info("%s", note)
        n_stacks = len(prepared.stacks)
        layout_uri = store.uri_for(options.prefix)

        def put(key: str, data: bytes, media_type: str, role: str) -> StoredObject:
            return ctx.put_artifact(key, data, media_type=media_type, role=ROLES[role], dataset=dataset, inputs=inputs)

        def announce(w: StackWritten) -> None:
            source = prepared.stacks[w.index].source
            npz = w.artifacts["npz"]
            event = ParticlesConverted(
                dataset=dataset,
                stack_index=w.index,
                n_stacks=n_stacks,
                n_images=w.n_images,
                prefix=options.prefix,
                layout_uri=layout_uri,
                phys_uri=w.artifacts["phys"].uri,
                fourier_uri=w.artifacts["fourier"].uri,
                npz_uri=npz.uri,
                plot_uris={kind: w.artifacts[role].uri for role, kind in _PLOT_KINDS.items() if role in w.artifacts},
                metadata_file=w.metadata_file,
                source_files=list(w.mrc_files),
                image_shape=list(w.image_shape),
                phys_dtype=w.phys_dtype,
                fourier_dtype=w.fourier_dtype,
                pixel_size_A=float(prepared.descriptors[source].pixel_size[0]),
                device=w.device,
                timings_s={k: round(v, 6) for k, v in w.timings.items()},
                gpu_memory_bytes=w.gpu_memory_bytes,
            )
            ctx.emit(event, dedup_key=f"{npz.key}:{npz.sha256}")

        written = convert(spec, params, store, prepared=prepared, on_stack=announce, put=put)
        n = sum(w.n_images for w in written)
        ctx.log.info("converted %d images into %d stacks under %s", n, len(written), layout_uri)
        return written


def _options(**values: object) -> ConvertOptions:
    try:
        return ConvertOptions(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError(f"invalid conversion option: {err['msg']}", field=".".join(map(str, err["loc"]))) from None


def request_options(req: ConvertRequested, *, prefix: str, overwrite: bool) -> ConvertOptions:
    """The pipeline options of a request (the service's and ``cryobus convert --local``'s).

    Raises:
        InputError: an option the pipeline refuses (``field`` names it).
    """
    return _options(
        batch_size=req.batch_size,
        n_stacks_max=req.n_stacks_max,
        downsample_factor=req.downsample_factor,
        downsample_type=req.downsample_type,
        pixel_size=req.pixel_size,
        override_pixel_size=req.override_pixel_size,
        precision=req.precision,
        flag_plots=req.flag_plots,
        cryolike_compatible=req.cryolike_compatible,
        overwrite=overwrite,
        prefix=prefix,
        device=req.device,
    )


def _params_from_settings(settings: Settings) -> ImageDescriptor | DefaultDescriptor | Path:
    return Path(settings.convert_params) if settings.convert_params else DefaultDescriptor()


@service.handler(JobDiscovered)
def on_job(event: Envelope[JobDiscovered], ctx: HandlerContext) -> None:
    """A particle job (RELION Extract, CryoSPARC particles) → its stacks in CryoLike's layout."""
    job = event.data
    found = job_conversion(job)
    if found is None:
        return
    spec, prefix = found
    # Keys are deterministic per job: a redelivery, or the job announced again with changed
    # files, rewrites the same keys (same inputs give the same bytes).
    options = _options(prefix=prefix, overwrite=True)
    inputs = [str(p) for p in job.files.values()]
    run_conversion(ctx, dataset=job.dataset, spec=spec, params=_params_from_settings(ctx.settings),
                   options=options, inputs=inputs)


@service.handler(ConvertRequested)
def on_request(event: Envelope[ConvertRequested], ctx: HandlerContext) -> None:
    """``cryobus convert ...``: convert what the request names, with its parameters."""
    req = event.data
    spec, named = request_spec(req)
    params, params_named = request_params(req)
    check_roots([*named, *params_named], ctx.settings)
    prefix = safe_key(req.prefix.strip("/")) if req.prefix else default_prefix(req.dataset, req)
    # A redelivery (the first attempt died mid-way) rewrites what that attempt wrote.
    options = request_options(req, prefix=prefix, overwrite=req.overwrite or ctx.deliveries > 1)
    inputs = [str(p) for p, _ in [*named, *params_named]]
    run_conversion(ctx, dataset=req.dataset, spec=spec, params=params, options=options, inputs=inputs)
