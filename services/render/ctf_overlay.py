"""The CTF fit from the metadata, drawn on a computed power spectrum (rings or split view).

The CTF model is :mod:`cryobus.shared.ctf` (Rohou & Grigorieff 2015, CTFFIND4's convention,
which RELION's ``rlnDefocusU/V/Angle`` follow); the Thon rings are its zeros,
``χ(g, α) = nπ``.

Geometry matches :func:`power_spectrum.spectrum_preview` with ``flip_y=True``: an ``n × n``
display image with zero frequency at ``(n // 2, n // 2)``, gx = (column − c) / (n · pixel size)
and gy = (c − row) / (n · pixel size) Å⁻¹, i.e. y up as in the flipped micrograph preview, so
the astigmatism angle (from the x axis, counter-clockwise) reads as in RELION and CTFFIND.

Rings are drawn on the right half only (gx > 0) and only where neighbouring rings are at least
``min_ring_spacing_px`` apart, so the data stay visible on the left and aliased rings are not
drawn; with a fit resolution they stop there, as CTFFIND's fit range does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cryobus.shared import ctf as ctf_model

RING_RGB = (255, 176, 0)  # amber: visible on grey, and for the common colour-vision deficiencies


@dataclass(frozen=True)
class CtfParams:
    """A CTF fit of one micrograph.

    Attributes:
        defocus_u_A, defocus_v_A: defocus along the major/minor axes, Å (underfocus positive).
        astigmatism_angle_deg: angle of the U axis from the image x axis, degrees.
        voltage_kV: acceleration voltage, kV.
        cs_mm: spherical aberration, mm.
        amplitude_contrast: fraction, 0 ≤ w₂ < 1.
        pixel_size_A: pixel size of the micrograph the spectrum was computed from, Å/px.
        phase_shift_deg: phase-plate shift, degrees.
        fit_resolution_A: resolution to which the fit holds, Å (rings stop there), if known.
    """

    defocus_u_A: float
    defocus_v_A: float
    astigmatism_angle_deg: float
    voltage_kV: float
    cs_mm: float
    amplitude_contrast: float
    pixel_size_A: float
    phase_shift_deg: float = 0.0
    fit_resolution_A: float | None = None

    def __post_init__(self) -> None:
        for name in ("defocus_u_A", "defocus_v_A", "voltage_kV", "pixel_size_A"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not 0.0 <= self.amplitude_contrast < 1.0:
            raise ValueError(f"amplitude_contrast must be in [0, 1), got {self.amplitude_contrast}")


def _frequency_grid(size: int, pixel_size_A: float) -> tuple[np.ndarray, np.ndarray]:
    c = size // 2
    cols = (np.arange(size, dtype=np.float64) - c) / (size * pixel_size_A)
    rows = (c - np.arange(size, dtype=np.float64)) / (size * pixel_size_A)
    return np.meshgrid(cols, rows)  # kx, ky (Å⁻¹), shape (size, size)


def ctf_phase(ctf: CtfParams, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Total CTF phase (rad) of ``ctf`` at frequencies (gx, gy) in 1/Å (see :func:`cryobus.shared.ctf.ctf_phase`)."""
    return ctf_model.ctf_phase(
        gx, gy,
        defocus_u_A=ctf.defocus_u_A, defocus_v_A=ctf.defocus_v_A, defocus_angle_deg=ctf.astigmatism_angle_deg,
        voltage_kV=ctf.voltage_kV, cs_mm=ctf.cs_mm, amplitude_contrast=ctf.amplitude_contrast,
        phase_shift_rad=math.radians(ctf.phase_shift_deg),
    )


def ctf_squared(ctf: CtfParams, size: int) -> np.ndarray:
    """CTF² on the display grid, float32 (size, size), values in [0, 1]."""
    kx, ky = _frequency_grid(size, ctf.pixel_size_A)
    return (np.sin(ctf_phase(ctf, kx, ky)) ** 2).astype(np.float32)


def ring_mask(ctf: CtfParams, size: int, *, min_ring_spacing_px: float = 3.0, right_half_only: bool = True) -> np.ndarray:
    """Pixels on a CTF zero (Thon ring) of the display grid: bool (size, size).

    A pixel is on ring n when ``(χ + atan(w₂/w₁)) / π`` crosses the integer n between it and its
    right or lower neighbour. Rings closer than ``min_ring_spacing_px`` (phase changing by more
    than π per that many pixels) and rings beyond ``fit_resolution_A`` are left out.
    """
    kx, ky = _frequency_grid(size, ctf.pixel_size_A)
    n = ctf_phase(ctf, kx, ky) / math.pi
    order = np.floor(n)
    mask = np.zeros((size, size), dtype=bool)
    mask[:, :-1] |= order[:, :-1] != order[:, 1:]
    mask[:-1, :] |= order[:-1, :] != order[1:, :]
    gy, gx = np.gradient(n)
    mask &= np.hypot(gx, gy) * min_ring_spacing_px < 1.0
    if ctf.fit_resolution_A is not None and math.isfinite(ctf.fit_resolution_A) and ctf.fit_resolution_A > 0:
        mask &= kx * kx + ky * ky <= (1.0 / ctf.fit_resolution_A) ** 2
    if right_half_only:
        mask &= kx > 0
    return mask


def draw_rings(spectrum: np.ndarray, ctf: CtfParams, *, colour: tuple[int, int, int] = RING_RGB) -> np.ndarray:
    """The spectrum image with the fitted CTF's zeros drawn on its right half.

    Args:
        spectrum: uint8 (n, n) display image from :func:`power_spectrum.spectrum_preview` (y up).
        ctf: the fit; ``pixel_size_A`` must be the micrograph's.
        colour: RGB of the rings.

    Returns:
        uint8 (n, n, 3) RGB image.
    """
    rgb = np.repeat(np.asarray(spectrum, dtype=np.uint8)[:, :, None], 3, axis=2)
    rgb[ring_mask(ctf, spectrum.shape[0])] = colour
    return rgb


def split_view(spectrum: np.ndarray, ctf: CtfParams) -> np.ndarray:
    """CTFFIND-style split view: data on the left half, the fitted CTF² (0 → black, 1 → white) on the right.

    Args:
        spectrum: uint8 (n, n) display image (y up).
        ctf: the fit; the model is drawn out to ``fit_resolution_A`` when given.

    Returns:
        uint8 (n, n) greyscale image.
    """
    size = spectrum.shape[0]
    out = np.array(spectrum, dtype=np.uint8, copy=True)
    model = np.rint(ctf_squared(ctf, size) * 255.0).astype(np.uint8)
    kx, ky = _frequency_grid(size, ctf.pixel_size_A)
    right = kx > 0
    if ctf.fit_resolution_A is not None and math.isfinite(ctf.fit_resolution_A) and ctf.fit_resolution_A > 0:
        right &= kx * kx + ky * ky <= (1.0 / ctf.fit_resolution_A) ** 2
    out[right] = model[right]
    return out
