"""Normalised polar transforms of a CPU stack, chunk by chunk on one worker thread per core.

Why not one finufft call with all cores: its OpenMP threads meet at a barrier after every
execute, and the unpacking and normalisation between executes run on one core, so on a small
machine a core idles for much of a stack. Here each worker owns single-threaded plans and takes
a chunk through packing, NUFFT, unpacking and normalisation on its own
(:meth:`~cryobus.services.convert.polar.PolarTransform.normalised_into`); finufft (through
ctypes), numpy and torch release the GIL in all of them, so the workers run in parallel.

Chunks finish out of order; :class:`ChunkProgress` reports how many *leading* images are done,
which is what a writer streaming the stack to its file (:func:`~.pt_stream.pt_chunks`) needs.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import torch

from cryobus.services.convert.polar import OUTPUT_DTYPE, NufftCompute, PolarTransform
from cryobus.services.convert.polar_grid import PolarGrid

# Complex NUFFT output per chunk: small enough that a stack makes several chunks per worker
# (balance, early streaming), large enough that a plan's fixed cost per execute is noise.
_CHUNK_BYTES = 16 << 20


def default_workers() -> int:
    """Worker threads: ``OMP_NUM_THREADS`` when set (the knob finufft users know), else the usable cores."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class ChunkProgress:
    """Which chunks of a stack are done; reports the count of leading images that are final.

    Args:
        bounds: the chunks' (start, stop) image ranges, in order, covering [0, n).
    """

    def __init__(self, bounds: list[tuple[int, int]]):
        self.bounds = bounds
        self.n_images = bounds[-1][1] if bounds else 0
        self._done = [False] * len(bounds)
        self._leading = 0  # chunks done from the first on
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    def complete(self, index: int) -> None:
        with self._cond:
            self._done[index] = True
            while self._leading < len(self._done) and self._done[self._leading]:
                self._leading += 1
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """Record the first failure; waiters raise it."""
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    def _count(self) -> int:
        return self.bounds[self._leading - 1][1] if self._leading else 0

    def ready(self) -> Iterator[int]:
        """Yield increasing counts of leading images that are final, until all are.

        Raises:
            BaseException: the failure of a chunk, or one recorded by :meth:`fail`.
        """
        seen = 0
        while seen < self.n_images:
            with self._cond:
                while self._error is None and self._count() == seen:
                    self._cond.wait()
                if self._error is not None:
                    raise self._error
                seen = self._count()
            yield seen

    def wait(self) -> None:
        """Block until every chunk is done; raise the failure if one failed."""
        for _ in self.ready():
            pass


class CpuFourierPool:
    """Normalised polar Fourier transforms of CPU stacks on ``workers`` threads.

    Args:
        grid: the polar grid.
        precision: output precision, 'single' (complex64) or 'double' (complex128).
        compute: NUFFT precision (see :class:`~cryobus.services.convert.polar.PolarTransform`).
        workers: threads, one single-threaded finufft plan each; default :func:`default_workers`.
    """

    def __init__(
        self,
        grid: PolarGrid,
        *,
        precision: Literal["single", "double"],
        compute: NufftCompute = "double",
        workers: int | None = None,
    ):
        self.grid = grid
        self.precision = precision
        self.compute = compute
        self.workers = workers or default_workers()
        _ = grid.points  # computed (and cached) once here, not by every worker at its first chunk
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="convert-nufft")
        self._local = threading.local()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> CpuFourierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chunk_bounds(self, n_images: int, image_shape: tuple[int, int]) -> list[tuple[int, int]]:
        """Even-sized chunks (pairs stay together) of about 16 MiB of NUFFT output, ≥ 2 per worker."""
        per_image = self.grid.n_shells * self.grid.n_inplanes * 16 // 2  # complex128, two per transform
        size = max(2, _CHUNK_BYTES // max(1, per_image))
        size = min(size, max(2, math.ceil(n_images / (2 * self.workers))))
        size += size % 2
        return [(s, min(n_images, s + size)) for s in range(0, n_images, size)]

    def _transform(self, shape: tuple[int, int]) -> PolarTransform:
        cache = self._local.__dict__.setdefault("transforms", {})
        transform = cache.get(shape)
        if transform is None:
            transform = cache[shape] = PolarTransform(
                self.grid, shape, precision=self.precision, compute=self.compute, nthreads=1
            )
        return transform

    def warm(self, n_images: list[int], image_shape: tuple[int, int]) -> None:
        """Have every worker make its plans and scratch memory for stacks of these sizes now (in
        the background, e.g. while the first stack is read); returns at once."""
        sizes = sorted({stop - start for n in n_images for start, stop in self.chunk_bounds(n, image_shape)})
        barrier = threading.Barrier(self.workers)

        def warm_one() -> None:
            self._transform(image_shape).warm(sizes)
            try:  # one task per worker: each waits until all have started theirs
                barrier.wait(timeout=30)
            except threading.BrokenBarrierError:
                pass

        for _ in range(self.workers):
            self._pool.submit(warm_one)

    def start(self, phys: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, ChunkProgress]:
        """Start transforming a stack; return its output tensor and progress at once.

        Args:
            phys: real CPU tensor (B, N0, N1), the centred and scaled images; must stay unchanged
                until the progress is complete.
            out: optional contiguous tensor to fill, of the shape and dtype described below.

        Returns:
            ``fourier``: complex (B, n_shells, n_inplanes), filled chunk by chunk (complex64 for
            'single', complex128 for 'double'), and the :class:`ChunkProgress` telling which
            leading images are final.
        """
        n = phys.shape[0]
        shape = (int(phys.shape[1]), int(phys.shape[2]))
        shape_out = (n, self.grid.n_shells, self.grid.n_inplanes)
        fourier = out if out is not None else torch.empty(shape_out, dtype=OUTPUT_DTYPE[self.precision])
        if tuple(fourier.shape) != shape_out or fourier.dtype != OUTPUT_DTYPE[self.precision] or not fourier.is_contiguous():
            raise ValueError(f"out must be a contiguous {OUTPUT_DTYPE[self.precision]} tensor of shape {shape_out}")
        progress = ChunkProgress(self.chunk_bounds(n, shape))

        def run(index: int, start: int, stop: int) -> None:
            try:
                self._transform(shape).normalised_into(phys[start:stop], fourier[start:stop])
            except BaseException as exc:
                progress.fail(exc)
                raise
            progress.complete(index)

        for index, (start, stop) in enumerate(progress.bounds):
            self._pool.submit(run, index, start, stop)
        return fourier, progress
