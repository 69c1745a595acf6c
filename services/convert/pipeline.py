"""Particle stacks → CryoLike layout, streamed in bounded batches: the one code path for service and CLI.

:func:`convert` = :func:`prepare` (read and check everything: metadata, CTF fields, stack
paths, MRC headers, image indices, pixel sizes, the params file, existing outputs — raising
:class:`~cryobus.shared.errors.InputError` *before anything is written*) + a stream over the
planned stacks:

    read stack i+1 (thread)  |  transform stack i (worker pool)  |  write stack i as it fills (thread)

so a few stacks at most are in memory at once, whatever the dataset size. Per stack (reference
§4.1): gather images from the MRC files → optional pooling → per-image mean/max scaling (what
``phys/`` stores) → batched polar NUFFT → quadrature normalisation (what ``fft/`` stores).
On the CPU the transform runs chunk by chunk on one single-threaded worker per core
(:mod:`~.cpu_pool`) and the writer streams the Fourier file while later chunks are computed
(:mod:`~.pt_stream`), so reading, transforming and writing overlap within a stack too. On a
CUDA device the images go to the device once, after reading, the stack is transformed whole
and the results come back once, for writing.

Departures from CryoLike, each in docs/convert.md: image order is the metadata row order
(``cryolike_compatible=True`` restores CryoLike's order, grouped by sorted stack path); the
saved ``pixel_size`` always gives the true box (``n_pixels · pixel_size``), also after
downsampling; existing outputs are refused up front unless ``overwrite``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from cryobus.services.convert.batching import StackPlan, plan_stacks
from cryobus.services.convert.buffers import TensorRecycler
from cryobus.services.convert.cpu_pool import ChunkProgress, CpuFourierPool
from cryobus.services.convert.inputs import ParticleSource, load_sources
from cryobus.services.convert.inputs.specs import CsJobDir, IndexedCs, IndexedStar, StarMrcPairs
from cryobus.services.convert.normalise import center_and_scale, downsample, storage_dtype
from cryobus.services.convert.params import DefaultDescriptor, ImageDescriptor, read_params
from cryobus.services.convert.plots import stack_plots
from cryobus.services.convert.polar import OUTPUT_DTYPE, PolarTransform, normalize_fourier
from cryobus.services.convert.polar_grid import PolarGrid
from cryobus.services.convert.stack_reader import StackReader
from cryobus.services.convert.writer import Put, stack_keys, write_stack
from cryobus.shared.errors import InputError
from cryobus.shared.store import ArtifactStore, StoredObject, open_store

log = logging.getLogger(__name__)

# Relative tolerance for "the same pixel size / box size" (0.01 %: 0.04 Å on a 400 Å box).
PIXEL_RTOL = 1e-4
MAX_PLOTTED = 16

InputsSpec = StarMrcPairs | IndexedStar | IndexedCs | CsJobDir


class ConvertOptions(BaseModel):
    """Conversion parameters, named as CryoLike names them where it has them.

    Attributes:
        batch_size: images per output stack (CryoLike default 1024); also the unit of memory.
        n_stacks_max: stop after this many stacks; -1 = all.
        downsample_factor: pool images by this integer factor before the transform (1 = off).
        downsample_type: 'mean' (average pooling) or 'max'.
        pixel_size: pixel size of the input images in Å; by default it comes from the metadata
            (rlnImagePixelSize, DetectorPixelSize/Magnification, blob/psize_A) or, for pairs and
            job folders, the MRC header.
        override_pixel_size: let ``pixel_size`` win over a different metadata value, and accept
            a params file whose box (n_pixels · pixel_size) differs from the images' box.
        precision: 'single' or 'double'; default: the params file's.
        flag_plots: write the three PNGs per stack.
        cryolike_compatible: indexed modes: CryoLike's image order (grouped by sorted stack
            path) instead of the metadata row order.
        overwrite: replace existing outputs; otherwise any existing output key is an error,
            raised before anything is written.
        prefix: key prefix inside the output store ("" = its root).
        device: 'auto' (a CUDA device when torch sees one and cufinufft imports, else the CPU),
            'cpu', 'cuda' or 'cuda:N'.
        nufft_compute: 'double' (NUFFT in complex128, CryoLike's CPU precision) or 'native'
            (complex64 for 'single': faster, ≈ 1e-5–4e-5 relative error, see docs/convert.md).
        nufft_threads: finufft threads on the CPU (default: all cores).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int = Field(default=1024, ge=1)
    n_stacks_max: int = Field(default=-1, ge=-1)
    downsample_factor: int = Field(default=1, ge=1)
    downsample_type: Literal["mean", "max"] = "mean"
    pixel_size: float | None = Field(default=None, gt=0)
    override_pixel_size: bool = False
    precision: Literal["single", "double"] | None = None
    flag_plots: bool = True
    cryolike_compatible: bool = False
    overwrite: bool = False
    prefix: str = ""
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    nufft_compute: Literal["double", "native"] = "double"
    nufft_threads: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class StackWritten:
    """One stack written to the store.

    Attributes:
        index: stack number (``NNNNNN``).
        n_images: images in it.
        metadata_file: the STAR/.cs its rows come from.
        mrc_files: the MRC stacks its images come from.
        artifacts: stored objects by role: ``phys``, ``fourier``, ``npz`` and, with plots,
            ``plot_phys``, ``plot_fourier``, ``plot_power``.
        image_shape: (N0, N1) of the stored physical images (after downsampling).
        phys_dtype, fourier_dtype: torch dtype names of the two tensors.
        device: where it was transformed (``cpu``, ``cuda:0``).
        timings: seconds spent reading, transforming (incl. host↔device copies) and writing it.
        gpu_memory_bytes: on a GPU, the device memory in use at its peak so far (torch's
            allocations plus cufinufft's, from ``cudaMemGetInfo``); None on the CPU.
    """

    index: int
    n_images: int
    metadata_file: str
    mrc_files: tuple[str, ...]
    artifacts: dict[str, StoredObject]
    image_shape: tuple[int, int]
    phys_dtype: str
    fourier_dtype: str
    device: str
    timings: dict[str, float]
    gpu_memory_bytes: int | None = None


@dataclass
class Prepared:
    """Everything :func:`prepare` checked and planned; nothing written yet.

    Attributes:
        sources: the checked inputs.
        descriptors: per source, the image descriptor written into its stacks' npz.
        grid: the polar grid (from the params file).
        stacks: the planned stacks.
        input_pixel_size: per source, the pixel size (Å) of the images as read.
        stored_shapes: per source, (N0, N1) after downsampling.
        keys: per stack, its output keys by role.
        notes: things worth telling the user (job-folder scan end, pixel-size decisions).
    """

    sources: list[ParticleSource]
    descriptors: list[ImageDescriptor]
    grid: PolarGrid
    stacks: list[StackPlan]
    input_pixel_size: list[float]
    stored_shapes: list[tuple[int, int]]
    keys: list[dict[str, str]]
    options: ConvertOptions
    notes: list[str] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return sum(s.n_images for s in self.stacks)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=PIXEL_RTOL)


def _input_pixel_size(source: ParticleSource, options: ConvertOptions, notes: list[str]) -> float:
    """The pixel size of the images as read, in Å (see :class:`ConvertOptions.pixel_size`).

    Raises:
        InputError: no pixel size anywhere; the MRC headers disagree; ``pixel_size`` differs
            from the metadata's and ``override_pixel_size`` is off.
    """
    known, where, origin_file = source.pixel_size_A, source.pixel_size_field, str(source.metadata_file)
    if known is None and source.header_pixel_size:
        found = [(f, h.voxel_size_A) for f, h in zip(source.mrc_files, source.headers) if h.voxel_size_A]
        if found:
            first_file, known = found[0]
            for f, value in found[1:]:
                if not _close(value, known):
                    raise InputError(
                        f"MRC headers disagree on the pixel size: {first_file.name} says {known} Å, {f.name} says {value} Å",
                        file=str(f), field="voxel size",
                    )
            where, origin_file = "MRC header voxel size", str(first_file)
    manual = options.pixel_size
    if manual is not None:
        if known is not None and not _close(manual, known):
            if not options.override_pixel_size:
                raise InputError(
                    f"pixel_size {manual} Å was given but {where} says {known} Å; "
                    f"set override_pixel_size to convert with {manual} Å",
                    file=origin_file, field="pixel_size",
                )
            notes.append(f"pixel size {manual} Å used instead of {known} Å ({where} of {origin_file})")
        return float(manual)
    if known is None:
        raise InputError(
            "no pixel size: the metadata has none (rlnImagePixelSize / blob/psize_A) and the MRC headers say 0; "
            "pass pixel_size",
            file=str(source.metadata_file), field="pixel_size",
        )
    return float(known)


def _saved_descriptor(
    params: ImageDescriptor, params_file: str | None, stored_shape: tuple[int, int], stored_px: float,
    options: ConvertOptions, notes: list[str],
) -> ImageDescriptor:
    """The descriptor written into the npz: the params file's, unless its box disagrees with the images'.

    CryoLike's likelihood requires the stacks' ``n_pixels``/``pixel_size`` to equal the templates'
    (array equality), so the params values are kept verbatim whenever they describe the same
    box; the images may be downsampled (fewer, larger pixels in the same box).

    Raises:
        InputError: the boxes differ and ``override_pixel_size`` is off (``field="pixel_size"``).
    """
    box_images = (stored_shape[0] * stored_px, stored_shape[1] * stored_px)
    box_params = params.box_size_A
    precision = options.precision or params.precision
    if _close(box_images[0], box_params[0]) and _close(box_images[1], box_params[1]):
        return params.with_changes(precision=precision)
    message = (
        f"the params describe a {box_params[0]:.4g}x{box_params[1]:.4g} Å box ({params.n_pixels[0]}x{params.n_pixels[1]} px "
        f"of {params.pixel_size[0]:.6g} Å) but the images are {stored_shape[0]}x{stored_shape[1]} px of {stored_px:.6g} Å "
        f"= {box_images[0]:.4g}x{box_images[1]:.4g} Å"
    )
    if not options.override_pixel_size:
        raise InputError(message + "; use a params file made for these particles or set override_pixel_size",
                         file=params_file, field="pixel_size")
    notes.append(message + "; override_pixel_size: saved pixel_size set to box / n_pixels")
    return params.with_changes(
        precision=precision,
        pixel_size=(box_images[0] / params.n_pixels[0], box_images[1] / params.n_pixels[1]),
    )


def prepare(
    inputs: InputsSpec,
    params: ImageDescriptor | DefaultDescriptor | str | os.PathLike | None,
    options: ConvertOptions | None = None,
    *,
    store: ArtifactStore | None = None,
) -> Prepared:
    """Read and check everything a conversion needs; write nothing.

    Args:
        inputs: one of the four input specs.
        params: the image descriptor, or the path of CryoLike's params ``.npz``, or a
            :class:`DefaultDescriptor` (None: ``DefaultDescriptor()``) to build one from the
            particles with CryoLike's defaults (stored size and pixel size of the first source).
        options: conversion parameters (defaults: :class:`ConvertOptions`).
        store: when given, also check that no output key exists yet (unless ``overwrite``).

    Returns:
        The :class:`Prepared` plan.

    Raises:
        InputError: anything wrong with the inputs, the params file, the pixel size or existing
            outputs, naming file, field and (where there is one) the metadata row.
    """
    options = options or ConvertOptions()
    if params is None:
        params = DefaultDescriptor()
    params_file = None if isinstance(params, (ImageDescriptor, DefaultDescriptor)) else str(params)
    desc = read_params(params) if params_file is not None else params
    notes: list[str] = []
    sources = load_sources(inputs, cryolike_order=options.cryolike_compatible)
    f = options.downsample_factor
    descriptors, pixel_sizes, shapes = [], [], []
    for source in sources:
        notes.extend(source.notes)
        n0, n1 = source.image_shape
        if n0 // f < 2 or n1 // f < 2:
            raise InputError(
                f"{n0}x{n1} px images cannot be downsampled by {f}", file=str(source.mrc_files[0]), field="downsample_factor"
            )
        stored = (n0 // f, n1 // f)
        p_in = _input_pixel_size(source, options, notes)
        if isinstance(desc, DefaultDescriptor):
            desc = desc.resolve(stored, p_in * f)
            notes.append(
                f"image descriptor from the particles (CryoLike defaults): {desc.n_pixels[0]}x{desc.n_pixels[1]} px of "
                f"{desc.pixel_size[0]:.6g} Å, radius_max {desc.radius_max:g}, {desc.n_inplanes} in-plane angles"
            )
        descriptors.append(_saved_descriptor(desc, params_file, stored, p_in * f, options, notes))
        pixel_sizes.append(p_in)
        shapes.append(stored)
        if desc.radius_max > min(stored) / 4 * (1 + 1e-9):
            notes.append(
                f"radius_max {desc.radius_max:g} lies beyond the Nyquist radius {min(stored) / 4:g} of the "
                f"{stored[0]}x{stored[1]} px images: the outer shells alias"
            )
    stacks = plan_stacks([s.n_images for s in sources], options.batch_size, options.n_stacks_max)
    keys = [stack_keys(s.index, prefix=options.prefix, plots=options.flag_plots) for s in stacks]
    if store is not None and not options.overwrite:
        for stack_keys_ in keys:
            for key in stack_keys_.values():
                if store.exists(key):
                    raise InputError(
                        "output already exists; set overwrite to replace it (nothing was written)",
                        file=store.uri_for(key), field="overwrite",
                    )
    for note in notes:
        log.info("%s", note)
    return Prepared(
        sources=sources,
        descriptors=descriptors,
        grid=PolarGrid.from_descriptor(desc),
        stacks=stacks,
        input_pixel_size=pixel_sizes,
        stored_shapes=shapes,
        keys=keys,
        options=options,
        notes=notes,
    )


def select_device(requested: str = "auto") -> torch.device:
    """The device to transform on.

    'auto': the current CUDA device when torch sees one *and* cufinufft imports, else the CPU.

    Raises:
        RuntimeError: 'cuda' asked for but torch sees no GPU or cufinufft cannot be imported.
    """
    if requested == "cpu":
        return torch.device("cpu")
    usable = torch.cuda.is_available()
    reason = "torch sees no CUDA device"
    if usable:
        try:
            import cufinufft  # noqa: F401
        except Exception as exc:  # ImportError, or OSError from the CUDA runtime
            usable, reason = False, f"cufinufft cannot be imported ({exc})"
    if requested == "auto":
        if not usable and torch.cuda.is_available():
            log.warning("a GPU is visible but %s: converting on the CPU", reason)
        return torch.device("cuda", torch.cuda.current_device()) if usable else torch.device("cpu")
    if not usable:
        raise RuntimeError(f"device {requested!r} requested but {reason}")
    return torch.device(requested)


@dataclass
class _Job:
    """One stack between the transform and the writer: the writer streams ``fourier`` as it fills."""

    phys: torch.Tensor
    fourier: torch.Tensor
    progress: ChunkProgress
    started: float
    finished: float | None = None  # set by the caller's thread once every chunk is done


class _Runner:
    """The stream stages over one :class:`Prepared` plan."""

    def __init__(self, prepared: Prepared, store: ArtifactStore, device: torch.device, put: Put | None = None):
        self.p = prepared
        self.o = prepared.options
        self.store = store
        self.put = put
        self.device = device
        self.readers = [StackReader(s.mrc_files, s.headers) for s in prepared.sources]
        self.transforms: dict[tuple[int, int], PolarTransform] = {}
        self.pools: dict[str, CpuFourierPool] = {}
        self.buffers = TensorRecycler()
        self.write_failed = threading.Event()
        self.gpu_peak = 0

    def read(self, plan: StackPlan) -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        source, reader = self.p.sources[plan.source], self.readers[plan.source]
        n0, n1 = source.image_shape
        # Page-locked on a GPU machine, so the host→device copy is a single asynchronous DMA.
        dtype = torch.from_numpy(np.empty(0, dtype=reader.dtype)).dtype
        if self.device.type == "cuda":
            host = torch.empty((plan.n_images, n0, n1), dtype=dtype, pin_memory=True)
        else:
            host = self.buffers.take((plan.n_images, n0, n1), dtype)
        reader.read_into(source.file_index[plan.start : plan.stop], source.section[plan.start : plan.stop], host.numpy())
        if self.device.type == "cpu":  # prepared here too, overlapping the previous stack's transform
            images = downsample(host, self.o.downsample_factor, self.o.downsample_type)
            phys = self.buffers.take(tuple(images.shape), storage_dtype(images.dtype))
            host, raw = self.physical(images, out=phys), host
            self.buffers.give(raw)
        return host, time.perf_counter() - t0

    def physical(self, images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image centring and scaling of a whole (pooled) stack on its device.

        Whole stacks, not chunks: torch's reduction order depends on the batch shape, and
        CryoLike's physical images are matched bit for bit.
        """
        return center_and_scale(images, out=out)

    def pool(self, precision: Literal["single", "double"]) -> CpuFourierPool:
        pool = self.pools.get(precision)
        if pool is None:
            pool = self.pools[precision] = CpuFourierPool(
                self.p.grid, precision=precision, compute=self.o.nufft_compute, workers=self.o.nufft_threads
            )
        return pool

    def warm(self) -> None:
        """Start making the CPU workers' plans for every (precision, image shape) of the plan."""
        kinds: dict[tuple[str, tuple[int, int]], list[int]] = {}
        f = self.o.downsample_factor
        for plan in self.p.stacks:
            n0, n1 = self.p.sources[plan.source].image_shape
            key = (self.p.descriptors[plan.source].precision, (n0 // f, n1 // f))
            kinds.setdefault(key, []).append(plan.n_images)
        for (precision, shape), sizes in kinds.items():
            self.pool(precision).warm(sorted(set(sizes)), shape)  # type: ignore[arg-type]

    def start(self, plan: StackPlan, host: torch.Tensor) -> _Job:
        """Start the transform of a stack (``host``: on the CPU, already its physical images): on
        the CPU it runs on the worker pool while this returns; on a GPU the stack is prepared and
        transformed here, whole, and copied back."""
        t0 = time.perf_counter()
        precision = self.p.descriptors[plan.source].precision
        if self.device.type == "cpu":
            phys = host
            grid = self.p.grid
            out = self.buffers.take((plan.n_images, grid.n_shells, grid.n_inplanes), OUTPUT_DTYPE[precision])
            fourier, progress = self.pool(precision).start(phys, out=out)
            return _Job(phys, fourier, progress, t0)
        images = host.to(self.device, non_blocking=True)
        phys = self.physical(downsample(images, self.o.downsample_factor, self.o.downsample_type))
        shape = (int(phys.shape[1]), int(phys.shape[2]))
        transform = self.transforms.get(shape)
        if transform is None:
            transform = self.transforms[shape] = PolarTransform(
                self.p.grid, shape, precision=precision, device=self.device, compute=self.o.nufft_compute,
            )
        fourier = normalize_fourier(transform(phys), self.p.grid, inplace=True)
        free, total = torch.cuda.mem_get_info(self.device)
        self.gpu_peak = max(self.gpu_peak, total - free)
        progress = ChunkProgress([(0, plan.n_images)])
        progress.complete(0)
        return _Job(phys.cpu(), fourier.cpu(), progress, t0)

    def write(self, plan: StackPlan, job: _Job, read_s: float) -> StackWritten:
        if self.write_failed.is_set():  # queued behind a stack whose write failed: write nothing
            raise RuntimeError(f"stack {plan.index} not written: an earlier stack's write failed")
        try:
            return self._write(plan, job, read_s)
        except BaseException:
            self.write_failed.set()
            raise

    def _write(self, plan: StackPlan, job: _Job, read_s: float) -> StackWritten:
        t0 = time.perf_counter()
        source = self.p.sources[plan.source]
        desc = self.p.descriptors[plan.source]
        npz: dict[str, Any] = desc.to_npz_dict()
        npz |= source.lens.npz_entries(source.rows[plan.start : plan.stop])
        npz["n_images"] = np.int64(plan.n_images)
        if source.write_stack_range:
            npz["stack_start"], npz["stack_end"] = np.int64(plan.start), np.int64(plan.stop)
        plots = None
        if self.o.flag_plots:
            def plots() -> dict[str, bytes]:
                f = job.fourier
                power = (f.real.double().square() + f.imag.double().square()).mean(dim=(0, 2)).numpy()
                shown = slice(0, MAX_PLOTTED)
                return stack_plots(job.phys[shown].float().numpy(), f[shown].numpy(), power, self.p.grid, max(desc.box_size_A))
        artifacts = write_stack(
            self.store, self.p.keys[plan.index], phys=job.phys, fourier=job.fourier, npz=npz,
            fourier_ready=job.progress.ready(), plots=plots, put=self.put,
        )  # fmt: skip
        files = np.unique(source.file_index[plan.start : plan.stop])
        # The Fourier stack is complete once written; the caller's thread stamps the time soon after.
        job.progress.wait()
        finished = job.finished or time.perf_counter()
        timings = {"read_s": read_s, "transform_s": finished - job.started, "write_s": time.perf_counter() - t0}
        written = StackWritten(
            index=plan.index,
            n_images=plan.n_images,
            metadata_file=str(source.metadata_file),
            mrc_files=tuple(str(source.mrc_files[i]) for i in files),
            artifacts=artifacts,
            image_shape=(int(job.phys.shape[1]), int(job.phys.shape[2])),
            phys_dtype=str(job.phys.dtype).removeprefix("torch."),
            fourier_dtype=str(job.fourier.dtype).removeprefix("torch."),
            device=str(self.device),
            timings=timings,
            gpu_memory_bytes=self.gpu_peak if self.device.type == "cuda" else None,
        )
        if self.device.type == "cpu":
            self.buffers.give(job.phys, job.fourier)  # written: the next stacks may reuse them
        return written

    def run(self, on_stack: Callable[[StackWritten], None] | None) -> list[StackWritten]:
        """read stack i+1 | transform stack i | write stack i as it is transformed (and the tail of i−1).

        At most one stack is read ahead and two are being written, so memory stays bounded by a
        few stacks whatever the dataset size.
        """
        stacks = self.p.stacks
        done: list[StackWritten] = []
        if not stacks:
            return done
        pending: list[Future] = []

        def collect() -> None:
            done.append(pending.pop(0).result())
            if on_stack:
                on_stack(done[-1])

        job: _Job | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="convert-read") as reads, ThreadPoolExecutor(
            1, thread_name_prefix="convert-write"
        ) as writes:
            next_read: Future = reads.submit(self.read, stacks[0])
            if self.device.type == "cpu":
                self.warm()
            try:
                for i, plan in enumerate(stacks):
                    host, read_s = next_read.result()
                    if i + 1 < len(stacks):
                        next_read = reads.submit(self.read, stacks[i + 1])
                    while len(pending) >= 2 or (pending and pending[0].done()):
                        collect()  # raises a failed write's error before more work starts
                    job = self.start(plan, host)
                    del host
                    pending.append(writes.submit(self.write, plan, job, read_s))
                    job.progress.wait()
                    job.finished = time.perf_counter()
                    job = None
                while pending:
                    collect()
            except BaseException as exc:
                next_read.cancel()
                if job is not None:
                    job.progress.fail(exc)  # the writer abandons the stack's staged file
                raise
            finally:
                for reader in self.readers:
                    reader.close()
                for pool in self.pools.values():
                    pool.close()
        return done


def convert(
    inputs: InputsSpec,
    params: ImageDescriptor | DefaultDescriptor | str | os.PathLike | None,
    out: ArtifactStore | str | os.PathLike,
    options: ConvertOptions | None = None,
    *,
    on_stack: Callable[[StackWritten], None] | None = None,
    put: Put | None = None,
    prepared: Prepared | None = None,
) -> list[StackWritten]:
    """Convert particle stacks into CryoLike's layout.

    Args:
        inputs: :class:`StarMrcPairs`, :class:`IndexedStar`, :class:`IndexedCs` or :class:`CsJobDir`.
        params: CryoLike params ``.npz`` path, an :class:`ImageDescriptor`, or a
            :class:`DefaultDescriptor` / None (CryoLike's defaults for the particles, see :func:`prepare`).
        out: an artifact store, or a ``file://``/``s3://`` URL or folder path to open as one;
            the layout goes under ``options.prefix`` in it.
        options: :class:`ConvertOptions`.
        on_stack: called (in the caller's thread, in stack order) as soon as each stack is
            completely written — e.g. to announce it.
        put: writes each object instead of ``store.put`` (see :func:`~.writer.write_stack`); it
            must write into ``out``.
        prepared: the result of an earlier :func:`prepare` of these inputs into this store
            (saves reading the metadata twice); its options are used, ``options`` is ignored.

    Returns:
        One :class:`StackWritten` per stack, in order.

    Raises:
        InputError: bad input of any kind, raised by :func:`prepare` before anything is written
            (an image file changed under a running conversion can still fail later).
        TransientError: the store failed.
        RuntimeError: ``device='cuda'`` without a usable GPU.
    """
    options = prepared.options if prepared is not None else (options or ConvertOptions())
    store = out if isinstance(out, ArtifactStore) else open_store(str(out))
    if prepared is None:
        prepared = prepare(inputs, params, options, store=store)
    device = select_device(options.device)
    t0 = time.perf_counter()
    written = _Runner(prepared, store, device, put).run(on_stack)
    elapsed = time.perf_counter() - t0
    n = sum(w.n_images for w in written)
    log.info(
        "converted %d images into %d stacks on %s in %.2f s (%.0f images/s) into %s (prefix %r)",
        n, len(written), device, elapsed, n / elapsed if elapsed > 0 else float("nan"), store.url, options.prefix,
    )
    return written


__all__ = [
    "ConvertOptions",
    "CsJobDir",
    "IndexedCs",
    "IndexedStar",
    "Prepared",
    "StackWritten",
    "StarMrcPairs",
    "convert",
    "prepare",
    "select_device",
]
