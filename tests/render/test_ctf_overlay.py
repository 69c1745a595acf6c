"""CTF rings drawn on a computed spectrum land on the spectrum's real zeros, the right way up."""

from __future__ import annotations

import numpy as np
import pytest

from cryobus.services.render import ctf_overlay, power_spectrum
from cryobus.shared.ctf import ctf_2d

PIXEL = 1.5


def _ctf_micrograph(defocus_u: float, defocus_v: float, angle: float, size: int = 1024, seed: int = 3) -> np.ndarray:
    """White noise filtered by a known CTF: its power spectrum is CTF² (Thon rings)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((size, size))
    ctf = ctf_2d((size, size), PIXEL, defocus_u, defocus_v, angle, 300.0, 2.7, 0.07)
    return np.fft.ifft2(np.fft.fft2(noise) * ctf).real.astype(np.float32)


def _fit(u: float, v: float, angle: float) -> ctf_overlay.CtfParams:
    return ctf_overlay.CtfParams(u, v, angle, 300.0, 2.7, 0.07, PIXEL)


def test_rings_sit_on_dark_zeros_of_the_computed_spectrum():
    image = _ctf_micrograph(15000, 15000, 0)
    display = power_spectrum.spectrum_preview(power_spectrum.periodogram(image))
    rings = ctf_overlay.ring_mask(_fit(15000, 15000, 0), display.shape[0])
    peaks = np.zeros_like(rings)
    gx, gy = ctf_overlay._frequency_grid(display.shape[0], PIXEL)
    chi = ctf_overlay.ctf_phase(_fit(15000, 15000, 0), gx, gy)
    peaks = (np.sin(chi) ** 2 > 0.95) & (gx > 0) & (np.hypot(gx, gy) > 0.02)
    assert rings.sum() > 200
    on_rings, on_peaks = display[rings].mean(), display[peaks].mean()
    assert on_rings < on_peaks - 40, (on_rings, on_peaks)


@pytest.mark.parametrize("angle", [30.0, 120.0])
def test_astigmatism_angle_reads_the_right_way_up(angle):
    """With strong astigmatism, the model at the true angle matches the display, its mirror does not."""
    image = _ctf_micrograph(20000, 12000, angle)
    display = power_spectrum.spectrum_preview(power_spectrum.periodogram(image)).astype(np.float64)
    size = display.shape[0]
    gx, gy = ctf_overlay._frequency_grid(size, PIXEL)
    band = (np.hypot(gx, gy) > 0.03) & (np.hypot(gx, gy) < 0.2)

    def score(a: float) -> float:
        model = ctf_overlay.ctf_squared(_fit(20000, 12000, a), size).astype(np.float64)
        return float(np.corrcoef(display[band], model[band])[0, 1])

    assert score(angle) > 0.5
    assert score(angle) > score(-angle) + 0.2


def test_draw_rings_and_split_view_shapes_and_halves():
    display = np.full((256, 256), 100, dtype=np.uint8)
    fit = _fit(10000, 9000, 45)
    rgb = ctf_overlay.draw_rings(display, fit)
    assert rgb.shape == (256, 256, 3) and rgb.dtype == np.uint8
    coloured = np.any(rgb != 100, axis=2)
    assert coloured[:, 129:].any() and not coloured[:, :128].any()  # rings on the right half only
    split = ctf_overlay.split_view(display, fit)
    assert split.shape == (256, 256)
    assert (split[:, :128] == 100).all() and (split[:, 129:] != 100).any()


def test_fit_resolution_bounds_the_rings():
    fit = ctf_overlay.CtfParams(10000, 10000, 0, 300.0, 2.7, 0.07, PIXEL, fit_resolution_A=8.0)
    mask = ctf_overlay.ring_mask(fit, 512)
    gx, gy = ctf_overlay._frequency_grid(512, PIXEL)
    assert mask.any() and np.hypot(gx, gy)[mask].max() <= 1 / 8.0 + 1e-9


def test_bad_fit_values_are_refused():
    with pytest.raises(ValueError, match="defocus_u_A"):
        ctf_overlay.CtfParams(float("nan"), 1.0, 0, 300, 2.7, 0.1, 1.0)
    with pytest.raises(ValueError, match="amplitude_contrast"):
        ctf_overlay.CtfParams(1e4, 1e4, 0, 300, 2.7, 1.5, 1.0)
