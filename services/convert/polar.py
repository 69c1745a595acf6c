"""Polar Fourier transform of an image stack: one batched type-2 NUFFT per chunk of images.

What is computed (CryoLike ``microscopy/nufft.py``, reference §4.2): for an image ``I`` of
N0 × N1 pixels (a = row, b = column), shell s and angle j of a :class:`PolarGrid`,

    F_raw[s, j] = (4π / √(N0·N1)) · Σ_a Σ_b I[a, b] ·
                  exp(−i [ (4π/N0)·x_p·(a − ⌊N0/2⌋) + (4π/N1)·y_p·(b − ⌊N1/2⌋) ])

with ``(x_p, y_p) = (r_s cos θ_j, r_s sin θ_j)``. That is FINUFFT's type-2 transform
(``isign = −1``, default mode ordering: array index a ↔ mode a − ⌊N0/2⌋; FINUFFT docs,
"Mathematical definitions") at the points ``(4π x_p / N0, 4π y_p / N1)``, the first array axis
pairing with the first coordinate. :func:`normalize_fourier` then divides each image by its
quadrature norm ``√(Σ_s Σ_j W_s |F[s, j]|²)``, so the prefactor cancels in the output.

Unlike CryoLike (one NUFFT call and one plan per image) a plan here serves many transforms
(``n_trans`` images per execute), is built once per image size and chunk size and reused for
every stack, and two real images share one complex transform (see
:meth:`PolarTransform._transform_chunk`): half the NUFFTs. Packing couples the rounding
errors of the two images of a pair, relative to the larger of the two: harmless for images
scaled alike, as the pipeline's are (max |I| = 1). The CPU path uses ``finufft``; when the
images live on a CUDA device the same :meth:`PolarTransform.__call__` runs ``cufinufft`` on
torch tensors and the data never leave the device. Tolerances: eps 1e-6 ('single') and 1e-12 ('double'), as CryoLike.

Compute precision: by default ('double') the NUFFT runs in complex128 whatever the output
precision, like CryoLike's CPU path; the result is then cast. 'native' runs a 'single'
transform in complex64 (CryoLike's GPU path): faster, but the float32 point coordinates cost
≈ 1e-5–4e-5 of max|F| at 320 px (see docs/convert.md).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import Any, Literal

import numpy as np
import torch

from cryobus.services.convert.polar_grid import PolarGrid

log = logging.getLogger(__name__)

# finufft's own OpenMP runtime reads this when it loads (at the first plan). Idle threads that
# spin steal the core a straggler needs on small shared machines (a 2-core CI box ran the same
# conversion 0.3 s or 2.7 s); sleeping costs nothing with a whole batch per parallel region.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

NufftCompute = Literal["double", "native"]
EPS = {"single": 1e-6, "double": 1e-12}
# finufft's upsampling factor σ on the CPU, by precision: for these polar grids σ = 1.5 (eps 1e-6)
# and 1.75 (eps 1e-12) ran 8–15 % faster than finufft's own choice at the same error against an
# eps-1e-14 transform (64–320 px; docs/performance.md). cufinufft keeps its default.
_CPU_UPSAMPFAC = {"single": 1.5, "double": 1.75}
OUTPUT_DTYPE = {"single": torch.complex64, "double": torch.complex128}
_TORCH_DTYPE = {np.dtype(np.complex64): torch.complex64, np.dtype(np.complex128): torch.complex128}
# Bytes of complex NUFFT input per chunk: bounds the host/device working set of one execute.
_CHUNK_BYTES = {"cpu": 64 << 20, "cuda": 1 << 30}
# FFTW's planner is not thread-safe; CPU plans are made one at a time (worker threads make their own).
_PLAN_LOCK = threading.Lock()


class PolarTransform:
    """Batched polar NUFFT for images of one size on one device.

    Args:
        grid: the polar grid (from the params file).
        image_shape: (N0, N1) of the images transformed (after any downsampling).
        precision: output precision, 'single' (complex64) or 'double' (complex128).
        device: where images come from and results stay: ``cpu`` (finufft) or ``cuda[:i]``
            (cufinufft, needs the ``convert-gpu`` extra).
        compute: 'double' (default; NUFFT in complex128) or 'native' (complex64 for 'single').
        nthreads: finufft threads (CPU only); default: OpenMP's (``OMP_NUM_THREADS``, else all cores).
        chunk: complex transforms per NUFFT execute (``n_trans``; each carries two images when
            pairs are packed); default: as many as fit in 64 MiB of complex input on the CPU,
            1 GiB on a GPU.

    Raises:
        RuntimeError: a CUDA device is asked for but ``cufinufft`` cannot be imported.
    """

    def __init__(
        self,
        grid: PolarGrid,
        image_shape: tuple[int, int],
        *,
        precision: Literal["single", "double"],
        device: torch.device | str = "cpu",
        compute: NufftCompute = "double",
        nthreads: int | None = None,
        chunk: int | None = None,
    ):
        self.grid = grid
        self.shape = (int(image_shape[0]), int(image_shape[1]))
        self.precision = precision
        self.device = torch.device(device)
        self.out_dtype = OUTPUT_DTYPE[precision]
        use_double = compute == "double" or precision == "double"
        self.compute_dtype = torch.complex128 if use_double else torch.complex64
        self._np_real = np.float64 if use_double else np.float32
        self.eps = EPS[precision]
        self.nthreads = nthreads  # None: finufft's default, OpenMP's (honours OMP_NUM_THREADS)
        n0, n1 = self.shape
        itemsize = 16 if use_double else 8
        budget = _CHUNK_BYTES["cuda" if self.is_cuda else "cpu"]
        self.chunk = int(chunk) if chunk else max(1, budget // (n0 * n1 * itemsize))
        x, y = grid.points
        # Points in FINUFFT's [-π, π) periodic coordinates: k = 4π · x / N (reference §4.2).
        self._kx = np.ascontiguousarray(x * (4.0 * np.pi / n0), dtype=self._np_real)
        self._ky = np.ascontiguousarray(y * (4.0 * np.pi / n1), dtype=self._np_real)
        self.prefactor = 4.0 * np.pi / math.sqrt(n0 * n1)
        self._plans: dict[int, Any] = {}
        self._scratch: dict[str, np.ndarray] = {}
        if self.is_cuda:
            try:
                import cufinufft  # noqa: F401
            except Exception as exc:  # ImportError, or OSError from a missing CUDA runtime
                raise RuntimeError(
                    "a CUDA device was asked for but cufinufft cannot be imported "
                    "(install the convert-gpu extra, or run on the CPU)"
                ) from exc
            self._kx_dev = torch.from_numpy(self._kx).to(self.device)
            self._ky_dev = torch.from_numpy(self._ky).to(self.device)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def n_points(self) -> int:
        return self._kx.size

    def _plan(self, n_trans: int) -> Any:
        """The plan for ``n_trans`` images (points set once); cached for the transform's life."""
        plan = self._plans.get(n_trans)
        if plan is not None:
            return plan
        dtype = "complex128" if self.compute_dtype == torch.complex128 else "complex64"
        if self.is_cuda:
            import cufinufft

            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            stream = torch.cuda.current_stream(self.device).cuda_stream
            # cufinufft.Plan(nufft_type, n_modes, n_trans, eps, isign, dtype, **opts) (cufinufft
            # 2.2+ python API). The plan runs on torch's current stream so torch kernels before and
            # after it are ordered with it; setpts keeps references to the device point arrays.
            plan = cufinufft.Plan(
                2, self.shape, n_trans=n_trans, eps=self.eps, isign=-1, dtype=dtype,
                gpu_device_id=index, gpu_stream=stream,
            )
            plan.setpts(self._kx_dev, self._ky_dev)
        else:
            import finufft

            opts: dict[str, Any] = {"nthreads": self.nthreads} if self.nthreads else {}
            if self.compute_dtype == torch.complex128:
                opts["upsampfac"] = _CPU_UPSAMPFAC[self.precision]
            with _PLAN_LOCK:
                plan = finufft.Plan(2, self.shape, n_trans=n_trans, eps=self.eps, isign=-1, dtype=dtype, **opts)
                plan.setpts(self._kx, self._ky)
        self._plans[n_trans] = plan
        return plan

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Transform a stack.

        Args:
            images: real tensor (B, N0, N1) on this transform's device, any float dtype (it is
                cast to the compute precision: float16 stacks are transformed as stored).

        Returns:
            complex tensor (B, n_shells, n_inplanes), ``F_raw`` of the module docstring, in the
            output dtype (complex64 for 'single', complex128 for 'double'), on the same device.

        Raises:
            ValueError: wrong shape or device, or complex images.
        """
        if images.ndim != 3 or tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"expected images of shape (B, {self.shape[0]}, {self.shape[1]}), got {tuple(images.shape)}")
        if images.device.type != self.device.type:
            raise ValueError(f"images are on {images.device}, the transform on {self.device}")
        if images.is_complex():
            raise ValueError("images must be real")
        n = images.shape[0]
        out = torch.empty((n, self.grid.n_shells, self.grid.n_inplanes), dtype=self.out_dtype, device=images.device)
        step = 2 * self.chunk if self.packs_pairs else self.chunk
        for start in range(0, n, step):
            stop = min(n, start + step)
            self._transform_chunk(images[start:stop], out[start:stop])
        return out

    @property
    def packs_pairs(self) -> bool:
        """Whether two real images share one complex transform (needs the grid to be point-symmetric)."""
        return self.grid.n_inplanes % 2 == 0

    def _transform_chunk(self, images: torch.Tensor, out: torch.Tensor) -> None:
        """F_raw of a chunk of n images, written into ``out`` (n, n_shells, n_inplanes), output dtype.

        Real images have Hermitian transforms, F(−p) = conj F(p), and with an even number of
        angles the grid holds −p next to every p (angle j + n_inplanes/2). So two images
        travel as one complex image Z = I₁ + i·I₂ and are separated afterwards:
        F₁(p) = (F_Z(p) + conj F_Z(−p)) / 2, F₂(p) = (F_Z(p) − conj F_Z(−p)) / 2i — half the
        NUFFTs, exactly (up to rounding). Only the first half of the angles is separated; the
        second half is its conjugate.
        """
        n = images.shape[0]
        shells, angles = self.grid.n_shells, self.grid.n_inplanes
        if not self.packs_pairs:
            flat = torch.empty((n, self.n_points), dtype=self.compute_dtype, device=images.device)
            self._nufft2(images.to(self.compute_dtype), flat)
            out.copy_(flat.view(n, shells, angles)).mul_(self.prefactor)
            return
        pairs = (n + 1) // 2
        real_dtype = torch.float64 if self.compute_dtype == torch.complex128 else torch.float32
        packed = torch.empty((pairs, *self.shape, 2), dtype=real_dtype, device=images.device)
        packed[:, :, :, 0] = images[0::2]
        packed[: n // 2, :, :, 1] = images[1::2]
        if n % 2:
            packed[-1, :, :, 1] = 0  # the last image has no partner (zeroing all of it costs ~10 % of a 64² stack)
        flat = torch.empty((pairs, self.n_points), dtype=self.compute_dtype, device=images.device)
        self._nufft2(torch.view_as_complex(packed), flat)
        del packed
        unpack_pairs(flat.view(pairs, shells, angles), out, 0.5 * self.prefactor, use_numpy=not self.is_cuda)
        # A partner's rounding error would otherwise leak into an all-zero image's transform.
        blank = images.flatten(1).abs().amax(dim=1) == 0
        if bool(blank.any()):
            out[blank] = 0

    def normalised_into(self, images: torch.Tensor, out: torch.Tensor) -> None:
        """Normalised transforms of a chunk of CPU images, written into ``out``: the fused CPU path.

        The same values as ``normalize_fourier(self(images), grid)`` (to rounding), in fewer passes
        over memory: pairs are packed straight into the NUFFT input, and each separated half-circle
        is divided by its image's quadrature norm while it is written to ``out``
        (:func:`unpack_normalised`); the prefactor cancels in the normalisation and is skipped.
        One call is meant to run on one core (a worker thread with a single-threaded plan).

        Args:
            images: real CPU tensor (n, N0, N1), any float dtype.
            out: CPU complex tensor (n, n_shells, n_inplanes), contiguous, the output dtype.

        Raises:
            ValueError: wrong shape, dtype or device.
        """
        if self.is_cuda or images.device.type != "cpu":
            raise ValueError("normalised_into is the CPU path; on a GPU use __call__ and normalize_fourier")
        n = images.shape[0]
        if images.ndim != 3 or tuple(images.shape[1:]) != self.shape or images.is_complex():
            raise ValueError(f"expected real images of shape (n, {self.shape[0]}, {self.shape[1]}), got {tuple(images.shape)}")
        if tuple(out.shape) != (n, self.grid.n_shells, self.grid.n_inplanes) or out.dtype != self.out_dtype:
            raise ValueError(f"out must be {self.out_dtype} of shape ({n}, {self.grid.n_shells}, {self.grid.n_inplanes})")
        shells, angles = self.grid.n_shells, self.grid.n_inplanes
        src = images.numpy()
        cdtype = np.complex128 if self.compute_dtype == torch.complex128 else np.complex64
        weights = self.grid.shell_weights
        blank = ~src.reshape(n, -1).any(axis=1)
        if not self.packs_pairs:
            data = self._buffer("data", (n, *self.shape), cdtype)
            data[...] = src
            fz = self._buffer("fz", (n, self.n_points), cdtype)
            self._nufft2(torch.from_numpy(data), torch.from_numpy(fz))
            fz = fz.reshape(n, shells, angles)
            norms = np.sqrt(_shell_power(fz) @ weights)
            _divide_into(fz, norms, blank, out.numpy())
            return
        pairs = (n + 1) // 2
        packed = self._buffer("data", (pairs, *self.shape), cdtype)
        packed.real = src[0::2]
        packed.imag[: n // 2] = src[1::2]
        if n % 2:
            packed.imag[-1] = 0
        fz = self._buffer("fz", (pairs, self.n_points), cdtype)
        self._nufft2(torch.from_numpy(packed), torch.from_numpy(fz))
        h = angles // 2
        scratch = (self._buffer("conj", (pairs, shells, h), cdtype), self._buffer("half", (pairs, shells, h), cdtype))
        unpack_normalised(fz.reshape(pairs, shells, angles), out.numpy(), weights, blank, scratch=scratch)

    def warm(self, chunk_sizes: list[int]) -> None:
        """Make the plans and scratch memory :meth:`normalised_into` will use for chunks of these
        sizes (n images each), so a conversion's first chunk does not wait for them."""
        if self.is_cuda or not chunk_sizes:
            return
        cdtype = np.complex128 if self.compute_dtype == torch.complex128 else np.complex64
        for n in sorted(set(chunk_sizes)):
            self._plan((n + 1) // 2 if self.packs_pairs else n)
        n = max(chunk_sizes)
        t = (n + 1) // 2 if self.packs_pairs else n
        for name, shape in (("data", (t, *self.shape)), ("fz", (t, self.n_points))):
            self._buffer(name, shape, cdtype).fill(0)  # first touch: the page faults happen here
        if self.packs_pairs:
            for name in ("conj", "half"):
                self._buffer(name, (t, self.grid.n_shells, self.grid.n_inplanes // 2), cdtype).fill(0)

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """A scratch array kept between calls: fresh multi-MB arrays cost more in page faults than
        the arithmetic done in them. Not thread-safe: one transform per worker thread."""
        size = math.prod(shape)
        buf = self._scratch.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            # torch.empty: numpy would ask for transparent huge pages (see buffers.py for why not)
            buf = self._scratch[name] = torch.empty(size, dtype=_TORCH_DTYPE[np.dtype(dtype)]).numpy()
        return buf[:size].reshape(shape)

    def _nufft2(self, data: torch.Tensor, out: torch.Tensor) -> None:
        """One execute of the plan for ``len(data)`` complex images, written into ``out`` (n, M)."""
        plan = self._plan(data.shape[0])
        data = data.contiguous()
        if self.is_cuda:
            with torch.cuda.device(self.device):
                plan.execute(data, out=out)
        else:
            plan.execute(data.numpy(), out=out.numpy())


def unpack_pairs(fz: torch.Tensor, out: torch.Tensor, scale: float, *, use_numpy: bool) -> None:
    """Separate the transforms of packed image pairs (see :meth:`PolarTransform._transform_chunk`).

    Args:
        fz: complex (P, n_shells, n_inplanes) transforms of Z = I₁ + i·I₂, n_inplanes even.
        out: complex (n, n_shells, n_inplanes), n = 2P or 2P − 1: image 2k gets F₁ of pair k,
            image 2k+1 its F₂; any complex dtype (values are cast).
        scale: factor applied on the way (½ · prefactor).
        use_numpy: compute with numpy (CPU tensors; its complex kernels are several times
            faster than torch's there) or with torch (any device).
    """
    h, odd = fz.shape[2] // 2, out.shape[0] // 2
    if use_numpy:
        z, o = fz.numpy(), out.numpy()
        a, b_conj = z[..., :h], np.conj(z[..., h:])
        first = np.add(a, b_conj)
        first *= scale
        second = np.subtract(a[:odd], b_conj[:odd])
        second *= complex(0.0, -scale)
        o[0::2, :, :h], o[1::2, :, :h] = first, second
        o[0::2, :, h:], o[1::2, :, h:] = np.conj(first, out=first), np.conj(second, out=second)
        return
    a, b_conj = fz[..., :h], fz[..., h:].conj()
    first = (a + b_conj).mul_(scale)
    second = (a[:odd] - b_conj[:odd]).mul_(complex(0.0, -scale))
    out[0::2, :, :h], out[0::2, :, h:] = first, first.conj()
    out[1::2, :, :h], out[1::2, :, h:] = second, second.conj()


def _shell_power(f: np.ndarray) -> np.ndarray:
    """float64 (B, n_shells): Σ_j |f[b, s, j]|² of a complex (B, n_shells, m) array."""
    v = f.view(f.real.dtype).reshape(f.shape[0], f.shape[1], 2 * f.shape[2])
    return np.einsum("bsk,bsk->bs", v, v, dtype=np.float64)


def _divide_into(f: np.ndarray, norms: np.ndarray, blank: np.ndarray, out: np.ndarray, factor: complex = 1.0) -> None:
    """``out = factor · f / norm`` per image, cast to ``out``'s dtype; blank images (and zero norms) → 0."""
    keep = ~blank & (norms > 0)
    inv = np.where(keep, factor / np.where(keep, norms, 1.0), 0.0)
    np.multiply(f, inv[:, None, None], out=out, casting="same_kind")


def unpack_normalised(
    fz: np.ndarray,
    out: np.ndarray,
    weights: np.ndarray,
    blank: np.ndarray,
    *,
    scratch: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Separate packed pairs (see :meth:`PolarTransform._transform_chunk`) and normalise them, in one pass.

    Each image's full-circle quadrature norm is twice that of its first half-circle (the second
    half is the complex conjugate), so the norm is taken on the half-circle values and applied as
    they are written: out[2k] = F₁/‖F₁‖ and out[2k+1] = F₂/‖F₂‖ on angles < n_inplanes/2, their
    conjugates on the rest. The ½ and the NUFFT prefactor cancel in the division.

    Args:
        fz: complex (P, n_shells, n_inplanes) transforms of Z = I₁ + i·I₂, n_inplanes even.
        out: complex (n, n_shells, n_inplanes), n = 2P or 2P − 1, any complex dtype.
        weights: float64 (n_shells,) quadrature weights ``W_s``.
        blank: bool (n,): all-zero images, whose output is set to 0 (a partner's rounding error
            would otherwise be normalised into noise).
        scratch: two arrays of fz's dtype and shape (P, n_shells, n_inplanes/2) to work in
            (default: new ones).
    """
    pairs, shells, angles = fz.shape
    h, n = angles // 2, out.shape[0]
    b_conj, f = scratch if scratch is not None else (np.empty_like(fz[..., :h]), np.empty_like(fz[..., :h]))
    # A few pairs at a time (≈ 1 MiB of half-circles): the ten array passes below then run in
    # cache instead of memory, 1.4–1.6× faster at 128²–256² than whole chunks.
    block = max(1, round((1 << 20) / (shells * h * fz.itemsize)))
    for p0 in range(0, pairs, block):
        p1 = min(pairs, p0 + block)
        a = fz[p0:p1, :, :h]
        np.conjugate(fz[p0:p1, :, h:], out=b_conj[: p1 - p0])
        for parity, combine, factor in ((0, np.add, 1.0), (1, np.subtract, -1j)):
            count = (min(n, 2 * p1) - 2 * p0 - parity + 1) // 2  # images of this parity in the block
            if count <= 0:
                continue
            half = f[:count]
            combine(a[:count], b_conj[:count], out=half)  # F₁ ∝ a + conj b;  F₂ ∝ (a − conj b) / i
            norms = np.sqrt(2.0 * (_shell_power(half) @ weights))
            dst = out[2 * p0 + parity : 2 * p1 : 2]
            _divide_into(half, norms, blank[2 * p0 + parity : 2 * p1 : 2], dst[:, :, :h], factor)
            np.conjugate(dst[:, :, :h], out=dst[:, :, h:])


def normalize_fourier(fourier: torch.Tensor, grid: PolarGrid, *, inplace: bool = False) -> torch.Tensor:
    """Divide each image by its polar-quadrature L2 norm (CryoLike ``normalize_images_fourier(ord=2)``).

    Args:
        fourier: complex (B, n_shells, n_inplanes), any device.
        grid: the grid the values live on (weights ``W_s``, see :mod:`polar_grid`).
        inplace: divide ``fourier`` itself instead of returning a new tensor.

    Returns:
        Same shape, dtype and device; every image has ``Σ_s Σ_j W_s |F|² = 1``. An all-zero
        image (a constant input image) stays zero instead of becoming NaN.
    """
    real_dtype = torch.float64 if fourier.dtype == torch.complex128 else torch.float32
    weights = torch.as_tensor(grid.shell_weights, dtype=real_dtype, device=fourier.device)
    b, shells, angles = fourier.shape
    # Per-shell sums of |F|² (a 2-norm over the shell's real and imaginary parts), then weighted.
    per_shell = torch.linalg.vector_norm(torch.view_as_real(fourier).reshape(b, shells, 2 * angles), dim=2).square()
    norm = torch.sqrt(per_shell @ weights)
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))[:, None, None]
    return fourier.div_(norm) if inplace else fourier / norm
