"""The contrast transfer function (CTF) of a transmission electron microscope, in 2D.

Formula: Rohou & Grigorieff (2015) "CTFFIND4: Fast and accurate defocus estimation from
electron micrographs", J. Struct. Biol. 192:216-221, equations 1-4 (the same convention as
RELION's ``CTF::getCTF`` and CTFFIND's ``_PS.txt`` / RELION's ``rlnDefocusU/V/Angle``):

    CTF(g, α)   = -sin(χ(g, α))
    χ(g, α)     = π λ g² Δf(α) - (π/2) Cs λ³ g⁴ + Δφ + arctan(w / sqrt(1 - w²))
    Δf(α)       = ½ [Δf₁ + Δf₂ + (Δf₁ - Δf₂) cos(2 (α - α_ast))]

with g the spatial frequency (1/Å), α its azimuth measured counter-clockwise from the +x
axis, Δf₁ = defocus U, Δf₂ = defocus V (Å, positive = underfocus), α_ast the angle from +x
to the defocus-U axis (``rlnDefocusAngle``), Cs the spherical aberration (Å), Δφ an
additional phase shift (rad, phase plates) and w the amplitude contrast fraction.

The electron wavelength is the relativistic de Broglie wavelength
λ = h / sqrt(2 m₀ e V (1 + e V / (2 m₀ c²))) (e.g. Williams & Carter, "Transmission Electron
Microscopy", eq. 1.6), with CODATA 2018 constants.
"""

from __future__ import annotations

import math

import numpy as np

from cryobus.shared.errors import InputError

# CODATA 2018 (exact SI values for h, e, c; m_e measured).
_PLANCK_J_S = 6.62607015e-34
_ELECTRON_MASS_KG = 9.1093837015e-31
_ELEMENTARY_CHARGE_C = 1.602176634e-19
_SPEED_OF_LIGHT_M_S = 299792458.0


def electron_wavelength_A(voltage_kV: float) -> float:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV.

    300 kV -> 0.019687 Å, 200 kV -> 0.025079 Å, 100 kV -> 0.037014 Å.

    Raises:
        InputError: the voltage is not a positive finite number (field ``voltage_kV``).
    """
    if not (math.isfinite(voltage_kV) and voltage_kV > 0):
        raise InputError(f"accelerating voltage must be > 0 kV, got {voltage_kV}", field="voltage_kV")
    volts = voltage_kV * 1e3
    energy_J = _ELEMENTARY_CHARGE_C * volts
    rest_J = _ELECTRON_MASS_KG * _SPEED_OF_LIGHT_M_S**2
    momentum = math.sqrt(2.0 * _ELECTRON_MASS_KG * energy_J * (1.0 + energy_J / (2.0 * rest_J)))
    return _PLANCK_J_S / momentum * 1e10


def spatial_frequency_grid(shape: tuple[int, int], pixel_size_A: float) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies (1/Å) of an unshifted ``np.fft.fft2`` of an image of ``shape``.

    Returns ``(gy, gx)``, float64 arrays broadcastable to ``shape`` = (ny, nx); axis 0 is y
    (MRC rows), axis 1 is x (MRC columns, the fast axis).
    """
    ny, nx = shape
    gy = np.fft.fftfreq(ny, d=pixel_size_A)[:, None]
    gx = np.fft.fftfreq(nx, d=pixel_size_A)[None, :]
    return gy, gx


def ctf_phase(
    gx: np.ndarray,
    gy: np.ndarray,
    *,
    defocus_u_A: float,
    defocus_v_A: float,
    defocus_angle_deg: float,
    voltage_kV: float,
    cs_mm: float,
    amplitude_contrast: float,
    phase_shift_rad: float = 0.0,
) -> np.ndarray:
    """The total phase ``χ(g, α)`` (rad, including the amplitude-contrast term) at frequencies (gx, gy).

    ``CTF = -sin(ctf_phase(...))``; the CTF's zeros (Thon rings) are where it equals nπ.

    Args:
        gx, gy: spatial frequencies along x (MRC columns) and y (MRC rows), 1/Å; any
            broadcastable float arrays. The azimuth α is ``atan2(gy, gx)``.
        defocus_u_A, defocus_v_A, defocus_angle_deg, voltage_kV, cs_mm, amplitude_contrast,
        phase_shift_rad: as for :func:`ctf_2d`.

    Returns:
        float64 array of the broadcast shape.

    Raises:
        InputError: non-positive voltage, negative Cs, or w outside [0, 1) (field named).
    """
    if not cs_mm >= 0:
        raise InputError(f"spherical aberration must be >= 0 mm, got {cs_mm}", field="cs_mm")
    if not 0.0 <= amplitude_contrast < 1.0:
        raise InputError(f"amplitude contrast must be in [0, 1), got {amplitude_contrast}", field="amplitude_contrast")
    wavelength = electron_wavelength_A(voltage_kV)
    cs_A = cs_mm * 1e7
    g2 = gx * gx + gy * gy
    azimuth = np.arctan2(gy, gx)
    angle = math.radians(defocus_angle_deg)
    defocus = 0.5 * (defocus_u_A + defocus_v_A + (defocus_u_A - defocus_v_A) * np.cos(2.0 * (azimuth - angle)))
    amplitude_phase = math.atan(amplitude_contrast / math.sqrt(1.0 - amplitude_contrast**2))
    return (
        math.pi * wavelength * defocus * g2
        - 0.5 * math.pi * cs_A * wavelength**3 * g2 * g2
        + phase_shift_rad
        + amplitude_phase
    )


def ctf_2d(
    shape: tuple[int, int],
    pixel_size_A: float,
    defocus_u_A: float,
    defocus_v_A: float,
    defocus_angle_deg: float,
    voltage_kV: float,
    cs_mm: float,
    amplitude_contrast: float,
    phase_shift_rad: float = 0.0,
    *,
    centered: bool = False,
) -> np.ndarray:
    """The 2D CTF (Rohou & Grigorieff 2015, eq. 1-4; see the module docstring).

    Args:
        shape: (ny, nx) of the real-space image whose Fourier transform it multiplies.
        pixel_size_A: Å/px of that image.
        defocus_u_A, defocus_v_A: defocus along the U and V axes, Å, positive = underfocus.
        defocus_angle_deg: angle from +x to the U axis, degrees, counter-clockwise (RELION
            ``rlnDefocusAngle``, CTFFIND "azimuth of astigmatism").
        voltage_kV: accelerating voltage, kV.
        cs_mm: spherical aberration, mm.
        amplitude_contrast: fraction of amplitude contrast w, 0 <= w < 1.
        phase_shift_rad: additional phase shift Δφ, rad.
        centered: False (default) gives the unshifted ``np.fft.fft2`` layout (zero frequency
            at [0, 0]), ready to multiply ``np.fft.fft2(image)``; True gives the
            ``np.fft.fftshift``-ed layout (zero frequency at [ny//2, nx//2]).

    Returns:
        float32 array of ``shape`` with values in [-1, 1]; CTF(0) = -w.

    Raises:
        InputError: non-positive pixel size or voltage, negative Cs, or w outside [0, 1).
    """
    if not pixel_size_A > 0:
        raise InputError(f"pixel size must be > 0 Å/px, got {pixel_size_A}", field="pixel_size_A")
    gy, gx = spatial_frequency_grid(shape, pixel_size_A)
    chi = ctf_phase(
        gx, gy,
        defocus_u_A=defocus_u_A, defocus_v_A=defocus_v_A, defocus_angle_deg=defocus_angle_deg,
        voltage_kV=voltage_kV, cs_mm=cs_mm, amplitude_contrast=amplitude_contrast, phase_shift_rad=phase_shift_rad,
    )
    ctf = -np.sin(chi)
    if centered:
        ctf = np.fft.fftshift(ctf)
    return ctf.astype(np.float32)
