"""The polar transform against closed forms: a shifted delta gives a pure phase ramp, a Gaussian a Gaussian."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryobus.services.convert.normalise import center_and_scale, downsample
from cryobus.services.convert.polar import PolarTransform, normalize_fourier, unpack_pairs
from cryobus.services.convert.polar_grid import PolarGrid

TOL = {"single": 1e-5, "double": 1e-10}


def _k(grid: PolarGrid, n0: int, n1: int) -> tuple[np.ndarray, np.ndarray]:
    """Angular frequency (rad/pixel) along image axes 1 and 2 at every grid point, (n_shells, n_inplanes)."""
    x, y = grid.points
    shape = (grid.n_shells, grid.n_inplanes)
    return (4 * np.pi * x / n0).reshape(shape), (4 * np.pi * y / n1).reshape(shape)


def _rel(ours: torch.Tensor, expected: np.ndarray) -> float:
    exp = torch.from_numpy(expected)
    return float((ours.to(torch.complex128) - exp).abs().max() / exp.abs().max())


@pytest.mark.parametrize("precision", ["single", "double"])
@pytest.mark.parametrize("shape", [(64, 64), (48, 40), (33, 35)])
def test_shifted_delta_is_a_phase_ramp(precision, shape):
    n0, n1 = shape
    grid = PolarGrid(radius_max=min(shape) / 4, dist_radii=0.25, n_inplanes=2 * min(shape))
    deltas = [(n0 // 2, n1 // 2), (n0 // 2 + 5, n1 // 2 - 3), (2, n1 - 1)]
    images = torch.zeros((len(deltas), n0, n1), dtype=torch.float32)
    for i, (a, b) in enumerate(deltas):
        images[i, a, b] = 1.0
    fourier = PolarTransform(grid, shape, precision=precision)(images)
    assert fourier.shape == (len(deltas), grid.n_shells, grid.n_inplanes)
    assert fourier.dtype == (torch.complex64 if precision == "single" else torch.complex128)
    k0, k1 = _k(grid, n0, n1)
    for i, (a, b) in enumerate(deltas):
        # Mode index a ↔ a − ⌊N/2⌋, exp(−i k·(a − ⌊N/2⌋)); prefactor 4π/√(N0·N1).
        expected = 4 * np.pi / math.sqrt(n0 * n1) * np.exp(-1j * (k0 * (a - n0 // 2) + k1 * (b - n1 // 2)))
        assert _rel(fourier[i], expected) <= TOL[precision]
    # The centred delta has a constant transform.
    assert float(fourier[0].abs().std()) <= TOL[precision]


@pytest.mark.parametrize("precision", ["single", "double"])
def test_gaussian_becomes_a_gaussian(precision):
    n0 = n1 = 96
    sigma = 3.0
    centre = (n0 // 2 + 7.25, n1 // 2 - 4.5)
    a, b = np.mgrid[0:n0, 0:n1]
    image = np.exp(-((a - centre[0]) ** 2 + (b - centre[1]) ** 2) / (2 * sigma**2))
    grid = PolarGrid(radius_max=n0 / 4, dist_radii=0.25, n_inplanes=64)
    fourier = PolarTransform(grid, (n0, n1), precision=precision)(torch.from_numpy(image[None]))
    k0, k1 = _k(grid, n0, n1)
    # Σ over the pixel lattice = continuous Fourier transform of the Gaussian (its tails and
    # aliases are below 1e-40 here): 2πσ² exp(−σ²|k|²/2), shifted to its centre.
    expected = (
        4 * np.pi / math.sqrt(n0 * n1)
        * 2 * np.pi * sigma**2 * np.exp(-(sigma**2) * (k0**2 + k1**2) / 2)
        * np.exp(-1j * (k0 * (centre[0] - n0 // 2) + k1 * (centre[1] - n1 // 2)))
    )
    assert _rel(fourier[0], expected) <= TOL[precision]


def test_normalised_images_have_unit_quadrature_norm_and_zero_stays_zero():
    grid = PolarGrid(radius_max=16, dist_radii=0.25, n_inplanes=64)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.standard_normal((5, 64, 64)).astype(np.float32))
    images[3] = 2.5  # constant image: zero after centring
    phys = center_and_scale(images)
    assert torch.all(phys[3] == 0)
    fourier = normalize_fourier(PolarTransform(grid, (64, 64), precision="double")(phys), grid)
    w = torch.from_numpy(grid.shell_weights)
    norms = (fourier.abs() ** 2 * w[None, :, None]).sum(dim=(1, 2))
    assert torch.allclose(norms[[0, 1, 2, 4]], torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert float(norms[3]) == 0.0 and not torch.isnan(fourier).any()
    # Quadrature: the weights sum to the disc area πR².
    assert grid.shell_weights.sum() * grid.n_inplanes == pytest.approx(np.pi * 16**2, rel=1e-12)


def test_chunked_plans_give_the_same_result_as_one_plan():
    grid = PolarGrid(radius_max=8, dist_radii=0.25, n_inplanes=32)
    images = torch.from_numpy(np.random.default_rng(1).standard_normal((11, 32, 32)))
    whole = PolarTransform(grid, (32, 32), precision="double", chunk=11)(images)
    chunked = PolarTransform(grid, (32, 32), precision="double", chunk=4)(images)  # 4 + 4 + 3: two plans
    single = PolarTransform(grid, (32, 32), precision="double", chunk=1)(images)
    assert float((whole - chunked).abs().max()) < 1e-13 * float(whole.abs().max())
    assert float((whole - single).abs().max()) < 1e-13 * float(whole.abs().max())


@pytest.mark.parametrize("n", [7, 8])
def test_pair_unpacking_torch_branch_equals_numpy_branch(n):
    """The torch arithmetic the GPU path uses, run on CPU tensors, against the CPU (numpy) path."""
    rng = np.random.default_rng(4)
    fz = torch.from_numpy(rng.standard_normal((4, 9, 16)) + 1j * rng.standard_normal((4, 9, 16)))
    outs = []
    for use_numpy in (True, False):
        out = torch.empty((n, 9, 16), dtype=torch.complex64)
        unpack_pairs(fz.clone(), out, 0.5, use_numpy=use_numpy)
        outs.append(out)
    assert torch.allclose(outs[0], outs[1], rtol=0, atol=1e-6)
    # And both agree with the definition: F1(p) = (Fz(p) + conj Fz(-p)) / 2, -p = angle j + 8.
    mirrored = torch.roll(fz, shifts=8, dims=2).conj()
    assert torch.allclose(outs[1][0::2], ((fz + mirrored) / 2).to(torch.complex64), atol=1e-6)
    assert torch.allclose(outs[1][1::2], ((fz - mirrored) / 2j).to(torch.complex64)[: n // 2], atol=1e-6)


def test_odd_angle_counts_are_transformed_unpacked():
    grid = PolarGrid(radius_max=8, dist_radii=0.25, n_inplanes=33)
    images = torch.from_numpy(np.random.default_rng(5).standard_normal((3, 32, 32)))
    transform = PolarTransform(grid, (32, 32), precision="double")
    assert not transform.packs_pairs
    even = PolarTransform(PolarGrid(radius_max=8, dist_radii=0.25, n_inplanes=66), (32, 32), precision="double")
    # Every other angle of the 66-angle grid is an angle of the 33-angle grid.
    assert float((transform(images) - even(images)[:, :, 0::2]).abs().max()) < 1e-12 * float(transform(images).abs().max())


def test_native_single_precision_is_close_but_not_cryolike_close():
    grid = PolarGrid(radius_max=16, dist_radii=0.25, n_inplanes=64)
    images = center_and_scale(torch.from_numpy(np.random.default_rng(2).standard_normal((4, 64, 64)).astype(np.float32)))
    ref = PolarTransform(grid, (64, 64), precision="double")(images)
    fast = PolarTransform(grid, (64, 64), precision="single", compute="native")(images)
    assert fast.dtype == torch.complex64
    assert _rel(fast, ref.numpy()) < 1e-4


def test_downsampling_mean_and_max():
    x = torch.arange(2 * 6 * 7, dtype=torch.float32).reshape(2, 6, 7)
    mean = downsample(x, 2, "mean")
    assert mean.shape == (2, 3, 3)  # trailing column dropped
    assert torch.equal(mean, x[:, :6, :6].reshape(2, 3, 2, 3, 2).mean(dim=(2, 4)))
    assert torch.equal(downsample(x, 3, "max"), x[:, :6, :6].reshape(2, 2, 3, 2, 3).amax(dim=(2, 4)))
    half = x.half()
    assert downsample(half, 2).dtype == torch.float16
    with pytest.raises(ValueError):
        downsample(x, 2, "median")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("precision", ["single", "double"])
def test_gpu_matches_cpu(precision):
    pytest.importorskip("cufinufft")
    grid = PolarGrid(radius_max=32, dist_radii=0.25, n_inplanes=256)
    images = center_and_scale(torch.from_numpy(np.random.default_rng(3).standard_normal((300, 128, 128)).astype(np.float32)))
    cpu = normalize_fourier(PolarTransform(grid, (128, 128), precision=precision)(images), grid)
    gpu_transform = PolarTransform(grid, (128, 128), precision=precision, device="cuda", chunk=128)
    gpu = normalize_fourier(gpu_transform(images.cuda()), grid)
    assert gpu.device.type == "cuda" and gpu.dtype == cpu.dtype
    err = ((gpu.cpu() - cpu).abs().flatten(1).amax(1) / cpu.abs().flatten(1).amax(1)).max()
    assert float(err) <= TOL[precision]
    fast = normalize_fourier(PolarTransform(grid, (128, 128), precision="single", device="cuda", compute="native")(images.cuda()), grid)
    assert float(((fast.cpu() - cpu).abs().flatten(1).amax(1) / cpu.abs().flatten(1).amax(1)).max()) < 1e-4
