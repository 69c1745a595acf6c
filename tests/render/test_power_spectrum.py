"""Power spectra: the FFT geometry is right, the estimate is normalised, and CTFFIND's diagnostic renders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryobus.services.render.power_spectrum import (
    ctffind_diagnostic_preview,
    flip_spectrum_rows,
    periodogram,
    spectrum_preview,
)
from cryobus.shared.formats.mrc import read_image

CTF_DIAGNOSTIC = "Conecsion__sppractice/CtfFind/job005/Movies/20170629_00021_frameImage_PS.ctf"
RELION_PS = "Conecsion__sppractice/MotionCorr/job002/Movies/20170629_00021_frameImage_PS.mrc"
TOPAZ = "sstagg__Magellon/CoreService/sandbox/particle_picking_demo/output/24dec03a_00034gr_00005sq_v01_00003hl_00018ex_topaz_ds8.mrc"


def _cosine(shape: tuple[int, int], ky: int, kx: int, tile: int) -> np.ndarray:
    """cos(2π (ky y + kx x) / tile): ky, kx cycles per tile along rows (y) and columns (x)."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    return np.cos(2 * np.pi * (ky * y + kx * x) / tile).astype(np.float32)


@pytest.mark.parametrize(
    ("shape", "ky", "kx", "window"),
    [
        ((1024, 1024), -7, 20, "hann"),
        ((1000, 900), 31, 5, None),  # image not a multiple of the tile, no window
        ((700, 1300), 0, -40, "hann"),
    ],
)
def test_a_cosine_peaks_at_its_frequency_offset_from_the_centre(shape, ky, kx, window):
    tile = 256
    noise = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.1
    ps = periodogram(_cosine(shape, ky, kx, tile) + noise, tile=tile, window=window)
    assert ps.shape == (tile, tile) and ps.dtype == np.float32
    c = tile // 2
    two_largest = {tuple(int(v) for v in np.unravel_index(i, ps.shape)) for i in np.argsort(ps, axis=None)[-2:]}
    assert two_largest == {(c + ky, c + kx), (c - ky, c - kx)}


def test_white_noise_has_unit_mean_power_spectral_density():
    noise = np.random.default_rng(5).standard_normal((1024, 1024)).astype(np.float32)
    for window in ("hann", None):
        power = 10.0 ** periodogram(noise, tile=128, window=window).astype(np.float64)
        assert abs(power.mean() - 1.0) < 0.03


def test_constant_and_small_images():
    flat = periodogram(np.full((600, 600), 3.0, dtype=np.float32), tile=256)
    assert np.isfinite(flat).all() and np.ptp(flat) == 0
    assert np.all(spectrum_preview(flat, size=256) == 128)
    small = periodogram(np.random.default_rng(2).standard_normal((100, 300)).astype(np.float32), tile=128)
    assert small.shape == (128, 128) and np.isfinite(small).all()


def test_display_flip_mirrors_ky_and_keeps_the_centre():
    ps = periodogram(_cosine((512, 512), 9, 13, 128), tile=128)
    flipped = flip_spectrum_rows(ps)
    c = 64
    assert flipped[c, c] == ps[c, c]
    assert flipped[c - 9, c + 13] == ps[c + 9, c + 13]
    np.testing.assert_array_equal(
        spectrum_preview(ps, size=128), flip_spectrum_rows(spectrum_preview(ps, size=128, flip_y=False))
    )


def test_real_micrograph_spectrum_and_relion_power_spectrum_render(shared_data: Path):
    topaz, _ = read_image(shared_data / TOPAZ)
    out = spectrum_preview(periodogram(topaz, tile=256), size=512)
    assert out.shape == (512, 512) and out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    relion_ps, _ = read_image(shared_data / RELION_PS)
    out = spectrum_preview(relion_ps, size=256)
    assert out.shape == (256, 256) and out.min() == 0 and out.max() == 255


def test_ctffind_diagnostic_renders_with_the_data_on_top(shared_data: Path):
    diagnostic, _ = read_image(shared_data / CTF_DIAGNOSTIC)
    out = ctffind_diagnostic_preview(diagnostic)
    assert out.shape == (512, 512) and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    np.testing.assert_array_equal(out, ctffind_diagnostic_preview(diagnostic, flip_y=False)[::-1])
    # Documented layout after the flip: noisy experimental spectrum on top, the smooth 1-D
    # average in the bottom-right quadrant.
    roughness = lambda q: float(np.abs(np.diff(q.astype(np.int16), axis=1)).mean())  # noqa: E731
    assert roughness(out[:256, 256:]) > 5 * roughness(out[256:, 256:])
    # Frequencies below CTFFIND's fitting range are written as 0: a flat disc at the centre.
    assert len(np.unique(out[250:262, 250:262])) == 1
