"""A small, physically plausible synthetic single-particle acquisition laid out as a RELION 5 project.

``make demo`` runs the whole system on it. What is written (paths relative to ``root``; file
layout, STAR block names, column names and ``# version 50001`` headers mirror the real RELION 5
project in ``shared/data/Conecsion__sppractice``):

- ``MotionCorr/job002/Movies/<name>.mrc``       micrograph, float32 (mode 2), voxel size = pixel size
- ``MotionCorr/job002/Movies/<name>.star``      data_general + data_global_shift (smooth drift, px)
- ``MotionCorr/job002/Movies/<name>_PS.mrc``    amplitude spectrum (centred), what RELION hands CTFFIND
- ``MotionCorr/job002/corrected_micrographs.star``  data_optics + data_micrographs (rlnAccumMotion*)
- ``CtfFind/job005/micrographs_ctf.star``       data_optics + data_micrographs, the TRUE CTF values
- ``CtfFind/job005/Movies/<name>_PS.txt``       CTFFIND 4.1 result text (header + one result line)
- ``CtfFind/job005/Movies/<name>_PS.ctf``       CTFFIND-style diagnostic MRC (spectrum + CTF² fit)
- ``Extract/job009/particles.star`` + ``Extract/job009/Movies/<name>.mrcs``  picks and their images
- ``Class2D/job010/run_it025_{classes.mrcs,model.star,data.star}``  class averages of the same molecule

Image formation (see docs/demo-data.md): one 3D "molecule" of overlapping Gaussian blobs is
projected in a few views with random in-plane rotations; the projected potential plus an
amorphous-ice background (white potential noise) is multiplied in Fourier space by the CTF
(:func:`cryobus.demo.ctf.ctf_2d`) and a B-factor envelope; white detector noise is added so
that var(particle signal) / var(ice + detector noise) equals the stated SNR.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
from scipy.spatial.transform import Rotation

from cryobus.shared.ctf import ctf_2d, electron_wavelength_A, spatial_frequency_grid
from cryobus.shared.errors import InputError

__all__ = [
    "SyntheticAcquisition",
    "SyntheticMicrograph",
    "SyntheticParticle",
    "ctf_2d",
    "electron_wavelength_A",
    "generate_acquisition",
    "main",
]

RELION_STAR_VERSION = "# version 50001"
MOTION_JOB = "MotionCorr/job002"
CTF_JOB = "CtfFind/job005"
EXTRACT_JOB = "Extract/job009"
CLASS2D_JOB = "Class2D/job010"
CLASS2D_ITERATION = 25
OPTICS_GROUP_NAME = "opticsGroup1"
MTF_FILE_NAME = "mtf_k3_standard_300kV.star"  # named like RELION's; the file itself is not written

# Microscope and exposure (a typical 300 kV / K3-style session).
VOLTAGE_KV = 300.0
CS_MM = 2.7
AMPLITUDE_CONTRAST = 0.1
N_FRAMES = 40
DOSE_PER_FRAME = 1.0  # e/Å² per frame
EARLY_MOTION_DOSE = 4.0  # e/Å²; RELION's default dose_motionstats_cutoff for rlnAccumMotionEarly
DEFOCUS_RANGE_A = (10000.0, 25000.0)
ASTIGMATISM_RANGE_A = (200.0, 1200.0)
BFACTOR_A2 = 60.0  # envelope exp(-B g² / 4) on the CTF-modulated signal
DEFAULT_SNR = 0.1
ICE_TO_DETECTOR = 3.0  # spectral power of the CTF-modulated ice at a Thon-ring maximum / detector noise

# Molecule and picking.
MOLECULE_BLOBS = 16
MOLECULE_SEMI_AXES_A = (52.0, 40.0, 30.0)  # blob centres inside this ellipsoid -> ~110-150 Å across
BLOB_SIGMA_RANGE_A = (6.0, 11.0)
PARTICLE_MIN_DISTANCE_A = 160.0
FALSE_PICK_FRACTION = 0.08  # picks on empty ice, classified into the junk class

# Extraction and 2D classes (RELION Extract with rescaling, "invert contrast", "normalize").
EXTRACT_BOX_A = 256.0
EXTRACT_BIN = 2
CTFFIND_MIN_RES_A = 30.0
CTFFIND_MAX_RES_A = 5.0
CTFFIND_MIN_DEFOCUS_A = 5000.0
CTFFIND_MAX_DEFOCUS_A = 50000.0
CTFFIND_RUN_STAMP = "2024-01-01 00:00:00"  # fixed so the same seed writes the same bytes
CTFFIND_VERSION = "4.1.14"  # the version whose _PS.txt format is imitated


@dataclass(frozen=True)
class SyntheticParticle:
    """One pick: where it is and what it truly is.

    Attributes:
        x_px, y_px: centre in micrograph pixels (x = MRC column, y = MRC row), as in
            ``rlnCoordinateX/Y``.
        class_number: 1-based 2D class (= molecule view); ``n_classes`` is the junk class of
            false picks on empty ice.
        psi_deg: in-plane rotation, degrees counter-clockwise, that turns the class image into
            this particle (0 for false picks).
    """

    x_px: float
    y_px: float
    class_number: int
    psi_deg: float


@dataclass(frozen=True)
class SyntheticMicrograph:
    """The true parameters of one generated micrograph (the STAR files hold exactly these).

    Attributes:
        name: file stem, e.g. ``synthetic_00001``.
        micrograph_path: ``MotionCorr/job002/Movies/<name>.mrc``, relative to the project root.
        defocus_u_A, defocus_v_A: Å, U >= V (positive = underfocus).
        defocus_angle_deg: angle from +x to the U axis, degrees (``rlnDefocusAngle``).
        phase_shift_rad: additional phase shift, rad (0: no phase plate).
        ctf_figure_of_merit: ``rlnCtfFigureOfMerit`` / CTFFIND cross correlation (synthetic).
        ctf_max_resolution_A: ``rlnCtfMaxResolution`` / CTFFIND fit spacing, Å (synthetic).
        ice_ring_density: ``rlnCtfIceRingDensity`` (synthetic; there is no ice ring).
        n_particles: number of picks (real molecules and false picks).
        avg_motion_A: mean frame-to-frame drift, Å per frame (total path / (frames - 1) × Å/px).
        accum_motion_total, accum_motion_early, accum_motion_late: ``rlnAccumMotion*``, the
            drift path length summed as RELION does (units of the global shifts: pixels).
        shifts_px: per-frame global shift (x, y), pixels, frame 1 = (0, 0).
        particles: the picks.
        snr: var(particle signal) / var(ice + detector noise) over the micrograph.
    """

    name: str
    micrograph_path: str
    defocus_u_A: float
    defocus_v_A: float
    defocus_angle_deg: float
    phase_shift_rad: float
    ctf_figure_of_merit: float
    ctf_max_resolution_A: float
    ice_ring_density: float
    n_particles: int
    avg_motion_A: float
    accum_motion_total: float
    accum_motion_early: float
    accum_motion_late: float
    shifts_px: tuple[tuple[float, float], ...]
    particles: tuple[SyntheticParticle, ...]
    snr: float


@dataclass(frozen=True)
class SyntheticAcquisition:
    """What :func:`generate_acquisition` wrote and the truth behind it.

    Attributes:
        root: the project folder.
        pixel_size_A: micrograph pixel size, Å/px.
        voltage_kV, cs_mm, amplitude_contrast: the microscope.
        micrographs: one entry per micrograph, in file order.
        n_classes: number of 2D classes written (0 when ``with_classes`` was False); the last
            class is the junk class of false picks.
        size: micrographs are ``size`` × ``size`` pixels.
        seed: the seed everything was drawn from.
        particle_pixel_size_A, particle_box: extracted particle images (Å/px, px).
        class_distribution: ``rlnClassDistribution`` per class (sums to 1).
        class_resolution_A: ``rlnEstimatedResolution`` per class, Å.
    """

    root: Path
    pixel_size_A: float
    voltage_kV: float
    cs_mm: float
    amplitude_contrast: float
    micrographs: list[SyntheticMicrograph]
    n_classes: int
    size: int
    seed: int
    particle_pixel_size_A: float
    particle_box: int
    class_distribution: tuple[float, ...]
    class_resolution_A: tuple[float, ...]


# --------------------------------------------------------------------------------------------
# The molecule and its projections


@dataclass(frozen=True)
class _Molecule:
    centres_A: np.ndarray  # (n_blobs, 3) float64, Å
    sigmas_A: np.ndarray  # (n_blobs,) float64, Å
    weights: np.ndarray  # (n_blobs,) float64


def _make_molecule(rng: np.random.Generator) -> _Molecule:
    # Rejection-sample blob centres uniformly inside the ellipsoid.
    axes = np.asarray(MOLECULE_SEMI_AXES_A)
    centres = []
    while len(centres) < MOLECULE_BLOBS:
        p = rng.uniform(-1.0, 1.0, size=3)
        if p @ p <= 1.0:
            centres.append(p * axes)
    centres_arr = np.asarray(centres)
    centres_arr -= centres_arr.mean(axis=0)
    sigmas = rng.uniform(*BLOB_SIGMA_RANGE_A, size=MOLECULE_BLOBS)
    weights = rng.uniform(0.6, 1.0, size=MOLECULE_BLOBS)
    return _Molecule(centres_arr, sigmas, weights)


def _projected_blobs(molecule: _Molecule, view: Rotation, psi_deg: float) -> np.ndarray:
    """(n_blobs, 2) x/y positions in Å of the molecule rotated by ``view`` then ``psi``, projected on z."""
    xyz = view.apply(molecule.centres_A)
    psi = math.radians(psi_deg)
    c, s = math.cos(psi), math.sin(psi)
    x = c * xyz[:, 0] - s * xyz[:, 1]
    y = s * xyz[:, 0] + c * xyz[:, 1]
    return np.stack([x, y], axis=1)


def _render_projection(
    image: np.ndarray, molecule: _Molecule, xy_A: np.ndarray, centre_px: tuple[float, float], pixel_size_A: float
) -> None:
    """Add the projected potential (sum of 2D Gaussians) into ``image`` (ny, nx) in place.

    The z-projection of a 3D Gaussian of width σ is a 2D Gaussian of the same σ whose
    integral scales with σ³; each blob is rendered in a ±4σ window only.
    """
    ny, nx = image.shape
    cx, cy = centre_px
    for (bx, by), sigma_A, weight in zip(xy_A, molecule.sigmas_A, molecule.weights, strict=True):
        sigma = sigma_A / pixel_size_A
        px, py = cx + bx / pixel_size_A, cy + by / pixel_size_A
        half = int(math.ceil(4.0 * sigma))
        x0, x1 = max(int(px) - half, 0), min(int(px) + half + 1, nx)
        y0, y1 = max(int(py) - half, 0), min(int(py) + half + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        gx = np.exp(-0.5 * ((np.arange(x0, x1) - px) / sigma) ** 2)
        gy = np.exp(-0.5 * ((np.arange(y0, y1) - py) / sigma) ** 2)
        image[y0:y1, x0:x1] += (weight * sigma_A) * np.outer(gy, gx)


# --------------------------------------------------------------------------------------------
# Micrograph formation


def _bfactor_envelope(shape: tuple[int, int], pixel_size_A: float) -> np.ndarray:
    gy, gx = spatial_frequency_grid(shape, pixel_size_A)
    return np.exp(-BFACTOR_A2 * (gx * gx + gy * gy) / 4.0)


def _pick_positions(
    rng: np.random.Generator, size: int, pixel_size_A: float, n_wanted: int
) -> list[tuple[float, float]]:
    """Non-overlapping pick centres (px, rounded to 0.01) at least half an extraction box from the edges."""
    margin = EXTRACT_BOX_A / 2.0 / pixel_size_A + 1.0
    min_dist = PARTICLE_MIN_DISTANCE_A / pixel_size_A
    picks: list[tuple[float, float]] = []
    for _ in range(n_wanted * 40):
        if len(picks) == n_wanted:
            break
        x, y = (round(float(v), 2) for v in rng.uniform(margin, size - 1 - margin, size=2))
        if all((x - px) ** 2 + (y - py) ** 2 >= min_dist**2 for px, py in picks):
            picks.append((x, y))
    return picks


def _drift_track(rng: np.random.Generator) -> np.ndarray:
    """(N_FRAMES, 2) smooth global shifts, px, frame 1 at (0, 0): fast early (beam-induced) motion, then drift."""
    t = np.arange(N_FRAMES - 1, dtype=np.float64)
    tau = rng.uniform(3.0, 8.0)
    speed = np.exp(-t / tau) + rng.uniform(0.15, 0.35)
    theta = rng.uniform(0, 2 * math.pi) + rng.uniform(-0.8, 0.8) * t / (N_FRAMES - 1)
    steps = np.stack([speed * np.cos(theta), speed * np.sin(theta)], axis=1)
    total_px = rng.uniform(8.0, 24.0)
    steps *= total_px / np.hypot(steps[:, 0], steps[:, 1]).sum()
    track = np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    return np.round(track, 6)


def _accumulated_motion(track: np.ndarray, pre_exposure: float = 0.0) -> tuple[float, float, float]:
    """RELION's rlnAccumMotionTotal/Early/Late from a global shift track (MotioncorrRunner).

    The path length between consecutive frames counts as "early" for frames
    f <= (4 e/Å² - pre-exposure) / dose per frame (1-based f >= 2), "late" otherwise.
    """
    cutoff_frame = (EARLY_MOTION_DOSE - pre_exposure) / DOSE_PER_FRAME
    d = np.hypot(np.diff(track[:, 0]), np.diff(track[:, 1]))
    frames = np.arange(2, len(track) + 1)
    early = float(d[frames <= cutoff_frame].sum())
    late = float(d[frames > cutoff_frame].sum())
    return round(early + late, 6), round(early, 6), round(late, 6)


def _power_spectrum(image: np.ndarray, box: int) -> np.ndarray:
    """Centred periodogram (float64, box × box): mean |FFT|² over half-overlapping, mean-subtracted tiles."""
    ny, nx = image.shape
    step = box // 2
    acc = np.zeros((box, box))
    n = 0
    for y0 in range(0, ny - box + 1, step):
        for x0 in range(0, nx - box + 1, step):
            tile = image[y0 : y0 + box, x0 : x0 + box]
            acc += np.abs(np.fft.fft2(tile - tile.mean())) ** 2
            n += 1
    return np.fft.fftshift(acc / max(n, 1))


def _ctffind_diagnostic(
    power: np.ndarray, model_ctf: np.ndarray, pixel_size_A: float, max_res_A: float
) -> np.ndarray:
    """A CTFFIND 4.1-style diagnostic image (float32, box × box, centred).

    Imitates the real ``_PS.ctf``: the whole image is the background-subtracted, normalised,
    clipped amplitude spectrum; in the half with y below the centre (MRC rows < box/2) the
    fitted CTF² replaces it, to Nyquist in the +x quadrant and inside the fit-resolution
    circle in the -x quadrant; frequencies below 1/30 Å are blanked to 0.
    """
    from scipy.ndimage import uniform_filter

    box = power.shape[0]
    amplitude = np.sqrt(power)
    background = uniform_filter(amplitude, size=max(box // 16, 3), mode="wrap")
    spectrum = amplitude - background
    yy, xx = np.indices(power.shape)
    r = np.hypot(yy - box // 2, xx - box // 2)
    r_min = box * pixel_size_A / CTFFIND_MIN_RES_A
    r_fit = box * pixel_size_A / max_res_A
    ring = (r >= r_min) & (r <= min(r_fit, box / 2))
    spectrum = (spectrum - spectrum[ring].mean()) / (spectrum[ring].std() + 1e-12)
    spectrum = np.clip(spectrum, -0.8, 2.0)
    ctf2 = model_ctf.astype(np.float64) ** 2
    model = (ctf2 - 0.5) * 1.6  # CTF² in [0, 1] shown in [-0.8, 0.8], the real file's model range
    out = spectrum
    lower = yy < box // 2
    out = np.where(lower & (xx >= box // 2), model, out)
    out = np.where(lower & (xx < box // 2) & (r <= r_fit), model, out)
    out = np.where(r < r_min, 0.0, out)
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# File writing (atomic: temp file in the same folder, then rename, so a watcher never sees half a file)


def _atomic_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _write_mrc(
    path: Path,
    data: np.ndarray,
    voxel_size: float | tuple[float, float, float],
    *,
    stack: bool = False,
    label: str = "",
) -> None:
    tmp = _atomic_path(path)
    try:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(data, dtype=np.float32))
            if stack:
                mrc.set_image_stack()
            mrc.voxel_size = voxel_size
            if label:
                mrc.header.label[0] = label[:80].encode("ascii")
                mrc.header.nlabl = 1
            mrc.update_header_stats()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_star(path: Path, blocks: dict[str, pd.DataFrame | dict]) -> None:
    """Write STAR blocks with ``starfile`` in RELION 5's layout: ``# version 50001`` before every ``data_``.

    starfile writes its own provenance comment and no version line; RELION writes
    ``\\n# version 50001\\n\\ndata_<name>`` for each block, which is reproduced here.
    """
    tmp = _atomic_path(path)
    try:
        starfile.write(blocks, tmp, float_format="%.6f", sep=" ")
        lines = tmp.read_text().splitlines()
        out: list[str] = []
        for line in lines:
            if line.startswith("# Created by the starfile"):
                continue
            if line.startswith("data_"):
                out += ["", RELION_STAR_VERSION, ""]
            out.append(line)
        tmp.write_text("\n".join(out).lstrip("\n").join(["\n", "\n"]))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    tmp = _atomic_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _ctffind_txt(name: str, mic: SyntheticMicrograph, pixel_size_A: float, box: int) -> str:
    """CTFFIND 4.1 ``_PS.txt``: five ``#`` header lines and one result line (format of the real file)."""
    return (
        f"# Output from CTFFind version {CTFFIND_VERSION}, run on {CTFFIND_RUN_STAMP}\n"
        f"# Input file: {CTF_JOB}/Movies/{name}_PS.mrc ; Number of micrographs: 1\n"
        f"# Pixel size: {pixel_size_A:.3f} Angstroms ; acceleration voltage: {VOLTAGE_KV:.1f} keV ; "
        f"spherical aberration: {CS_MM:.2f} mm ; amplitude contrast: {AMPLITUDE_CONTRAST:.2f}\n"
        f"# Box size: {box} pixels ; min. res.: {CTFFIND_MIN_RES_A:.1f} Angstroms ; max. res.: {CTFFIND_MAX_RES_A:.1f} "
        f"Angstroms ; min. def.: {CTFFIND_MIN_DEFOCUS_A:.1f} um; max. def. {CTFFIND_MAX_DEFOCUS_A:.1f} um\n"
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - azimuth of astigmatism; "
        "#5 - additional phase shift [radians]; #6 - cross correlation; #7 - spacing (in Angstroms) up to which CTF "
        "rings were fit successfully\n"
        f"{1.0:f} {mic.defocus_u_A:f} {mic.defocus_v_A:f} {mic.defocus_angle_deg:f} {mic.phase_shift_rad:f} "
        f"{mic.ctf_figure_of_merit:f} {mic.ctf_max_resolution_A:f}\n"
    )


def _optics_row(pixel_size_A: float) -> dict:
    return {
        "rlnOpticsGroupName": OPTICS_GROUP_NAME,
        "rlnOpticsGroup": 1,
        "rlnMtfFileName": MTF_FILE_NAME,
        "rlnMicrographOriginalPixelSize": pixel_size_A,
        "rlnVoltage": VOLTAGE_KV,
        "rlnSphericalAberration": CS_MM,
        "rlnAmplitudeContrast": AMPLITUDE_CONTRAST,
    }


# --------------------------------------------------------------------------------------------
# Extraction and classes


def _fourier_bin(image: np.ndarray, factor: int) -> np.ndarray:
    """Downsample by Fourier cropping (as RELION Extract's rescaling does); float64 (ny/f, nx/f)."""
    ny, nx = image.shape
    my, mx = ny // factor, nx // factor
    f = np.fft.fftshift(np.fft.fft2(image))
    cy, cx = ny // 2, nx // 2
    crop = f[cy - my // 2 : cy - my // 2 + my, cx - mx // 2 : cx - mx // 2 + mx]
    return np.fft.ifft2(np.fft.ifftshift(crop)).real / (factor * factor)


def _normalise_particle(box: np.ndarray) -> np.ndarray:
    """RELION Extract "normalize": background (outside 75 % of the radius) mean 0, std 1; contrast inverted."""
    n = box.shape[0]
    yy, xx = np.indices(box.shape)
    outside = np.hypot(yy - n // 2, xx - n // 2) > 0.75 * n / 2
    bg = box[outside]
    return -(box - bg.mean()) / (bg.std() + 1e-12)


def _class_average(
    rng: np.random.Generator,
    molecule: _Molecule | None,
    view: Rotation | None,
    box: int,
    pixel_size_A: float,
    resolution_A: float,
    noise: float,
) -> np.ndarray:
    """A 2D class average (box × box, float32): the CTF-corrected projection (white density) low-passed to
    ``resolution_A`` with residual noise, soft-masked like RELION's particle-diameter mask."""
    image = np.zeros((box, box))
    if molecule is not None and view is not None:
        _render_projection(image, molecule, _projected_blobs(molecule, view, 0.0), (box / 2, box / 2), pixel_size_A)
        image /= image.max()
    image += noise * rng.standard_normal(image.shape)
    gy, gx = spatial_frequency_grid(image.shape, pixel_size_A)
    lowpass = 1.0 / (1.0 + (np.hypot(gx, gy) * resolution_A) ** 8)  # Butterworth, half at 1/resolution
    image = np.fft.ifft2(np.fft.fft2(image) * lowpass).real
    yy, xx = np.indices(image.shape)
    r = np.hypot(yy - box / 2, xx - box / 2)
    r_mask = 0.8 * box / 2
    mask = np.clip((r_mask + 5.0 - r) / 5.0, 0.0, 1.0)
    return (image * mask).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The generator


def generate_acquisition(
    root: Path,
    *,
    n_micrographs: int = 6,
    size: int = 1024,
    pixel_size_A: float = 1.0,
    seed: int = 0,
    with_classes: bool = True,
    snr: float = DEFAULT_SNR,
    n_classes: int = 8,
) -> SyntheticAcquisition:
    """Write a synthetic RELION 5 project under ``root`` and return its true parameters.

    Args:
        root: project folder (created; files of a previous run with the same names are replaced).
        n_micrographs: number of micrographs.
        size: micrographs are ``size`` × ``size`` px (even, >= 384).
        pixel_size_A: Å/px (0.5-3).
        seed: everything is drawn from ``numpy.random.default_rng(seed)`` (and spawned
            children per micrograph), so a seed always gives the same files.
        with_classes: also write the Class2D job (class averages, model and data STAR).
        snr: var(particle signal) / var(ice + detector noise), over the whole micrograph.
        n_classes: 2D classes (>= 2); classes 1..n-1 are views of the molecule, n is junk.

    Returns:
        The :class:`SyntheticAcquisition`; every STAR value written equals its field.

    Raises:
        InputError: a parameter outside the ranges above (field = the parameter name).
    """
    if n_micrographs < 1:
        raise InputError(f"need at least one micrograph, got {n_micrographs}", field="n_micrographs")
    if size < 384 or size % 2:
        raise InputError(f"micrograph size must be even and >= 384 px, got {size}", field="size")
    if not 0.5 <= pixel_size_A <= 3.0:
        raise InputError(f"pixel size must be within 0.5-3 Å/px, got {pixel_size_A}", field="pixel_size_A")
    if not snr > 0:
        raise InputError(f"SNR must be > 0, got {snr}", field="snr")
    if n_classes < 2:
        raise InputError(f"need at least 2 classes (one view and the junk class), got {n_classes}", field="n_classes")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    seq = np.random.SeedSequence(seed)
    model_seq, class_seq, *mic_seqs = seq.spawn(2 + n_micrographs)
    model_rng = np.random.default_rng(model_seq)
    molecule = _make_molecule(model_rng)
    n_views = n_classes - 1
    views = Rotation.random(n_views, random_state=model_rng)
    view_weights = model_rng.dirichlet(np.full(n_views, 3.0))

    shape = (size, size)
    envelope = _bfactor_envelope(shape, pixel_size_A)
    ps_box = min(512, size // 2 * 2)
    ext_px = pixel_size_A * EXTRACT_BIN
    ext_box = int(round(EXTRACT_BOX_A / ext_px / 2)) * 2

    micrographs: list[SyntheticMicrograph] = []
    particle_rows: list[dict] = []
    optics = _optics_row(pixel_size_A)
    for index, mic_seq in enumerate(mic_seqs):
        rng = np.random.default_rng(mic_seq)
        name = f"synthetic_{index + 1:05d}"
        mic_rel = f"{MOTION_JOB}/Movies/{name}.mrc"

        # CTF parameters (U >= V, RELION/CTFFIND convention) and the synthetic fit scores.
        mean_df = rng.uniform(*DEFOCUS_RANGE_A)
        astig = rng.uniform(*ASTIGMATISM_RANGE_A)
        df_u = round(mean_df + astig / 2, 2)
        df_v = round(mean_df - astig / 2, 2)
        angle = round(float(rng.uniform(-90.0, 90.0)), 3)
        fom = round(float(rng.uniform(0.08, 0.25)), 6)
        max_res = round(float(rng.uniform(3.5, 6.5)), 6)
        ice_ring = round(float(rng.uniform(0.3, 1.2)), 6)

        # Picks: molecules in views 1..n-1, a few false picks on empty ice in the junk class.
        n_wanted = int(rng.integers(14, 26))
        positions = _pick_positions(rng, size, pixel_size_A, n_wanted)
        particles: list[SyntheticParticle] = []
        potential = np.zeros(shape)
        for x, y in positions:
            if rng.random() < FALSE_PICK_FRACTION:
                particles.append(SyntheticParticle(x, y, n_classes, 0.0))
                continue
            view_index = int(rng.choice(n_views, p=view_weights))
            psi = round(float(rng.uniform(0.0, 360.0)), 3)
            blobs = _projected_blobs(molecule, views[view_index], psi)
            _render_projection(potential, molecule, blobs, (x, y), pixel_size_A)
            particles.append(SyntheticParticle(x, y, view_index + 1, psi))

        # Image formation: (particles + ice) ⊗ CTF·envelope, plus detector noise, at the stated SNR.
        ctf = ctf_2d(shape, pixel_size_A, df_u, df_v, angle, VOLTAGE_KV, CS_MM, AMPLITUDE_CONTRAST).astype(np.float64)
        transfer = ctf * envelope
        signal = np.fft.ifft2(np.fft.fft2(potential) * transfer).real
        ice = np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * transfer).real * math.sqrt(ICE_TO_DETECTOR)
        noise = ice + rng.standard_normal(shape)
        signal_var = signal.var()
        if signal_var > 0:
            signal *= math.sqrt(snr * noise.var() / signal_var)
        image = signal + noise

        track = _drift_track(rng)
        total, early, late = _accumulated_motion(track)
        mic = SyntheticMicrograph(
            name=name,
            micrograph_path=mic_rel,
            defocus_u_A=df_u,
            defocus_v_A=df_v,
            defocus_angle_deg=angle,
            phase_shift_rad=0.0,
            ctf_figure_of_merit=fom,
            ctf_max_resolution_A=max_res,
            ice_ring_density=ice_ring,
            n_particles=len(particles),
            avg_motion_A=round(total * pixel_size_A / (N_FRAMES - 1), 6),
            accum_motion_total=total,
            accum_motion_early=early,
            accum_motion_late=late,
            shifts_px=tuple((float(sx), float(sy)) for sx, sy in track),
            particles=tuple(particles),
            snr=snr,
        )
        micrographs.append(mic)

        # MotionCorr: micrograph, its motion STAR, the power spectrum RELION hands to CTFFIND.
        movies = root / MOTION_JOB / "Movies"
        _write_mrc(movies / f"{name}.mrc", image, pixel_size_A)
        _write_star(
            movies / f"{name}.star",
            {
                "general": {
                    "rlnImageSizeX": size,
                    "rlnImageSizeY": size,
                    "rlnImageSizeZ": N_FRAMES,
                    "rlnMicrographMovieName": f"Movies/{name}.tiff",
                    "rlnMicrographGainName": "Movies/gain.mrc",
                    "rlnMicrographBinning": 1.0,
                    "rlnMicrographOriginalPixelSize": pixel_size_A,
                    "rlnMicrographDoseRate": DOSE_PER_FRAME,
                    "rlnMicrographPreExposure": 0.0,
                    "rlnVoltage": VOLTAGE_KV,
                    "rlnMicrographStartFrame": 1,
                    "rlnMotionModelVersion": 0,  # no local motion model blocks are written
                },
                "global_shift": pd.DataFrame(
                    {
                        "rlnMicrographFrameNumber": np.arange(1, N_FRAMES + 1),
                        "rlnMicrographShiftX": track[:, 0],
                        "rlnMicrographShiftY": track[:, 1],
                    }
                ),
            },
        )
        power = _power_spectrum(image, ps_box)
        _write_mrc(movies / f"{name}_PS.mrc", np.sqrt(power), pixel_size_A, label="cryobus synthetic: amplitude")

        # CtfFind: CTFFIND result text and diagnostic image.
        ctf_movies = root / CTF_JOB / "Movies"
        _write_text(ctf_movies / f"{name}_PS.txt", _ctffind_txt(name, mic, pixel_size_A, ps_box))
        model = ctf_2d(
            (ps_box, ps_box), pixel_size_A, df_u, df_v, angle, VOLTAGE_KV, CS_MM, AMPLITUDE_CONTRAST, centered=True
        )
        _write_mrc(
            ctf_movies / f"{name}_PS.ctf",
            _ctffind_diagnostic(power, model, pixel_size_A, max_res),
            (1.0 / ps_box, 1.0 / ps_box, 1.0),  # what CTFFIND 4.1.14 writes in the header
            label="cryobus synthetic: CTFFIND-style diagnostic",
        )

        # Extract: binned, normalised, contrast-inverted boxes around every pick.
        binned = _fourier_bin(image, EXTRACT_BIN)
        half = ext_box // 2
        stack = []
        for p in particles:
            bx, by = int(round(p.x_px / EXTRACT_BIN)), int(round(p.y_px / EXTRACT_BIN))
            stack.append(_normalise_particle(binned[by - half : by + half, bx - half : bx + half]))
        stack_rel = f"{EXTRACT_JOB}/Movies/{name}.mrcs"
        _write_mrc(root / stack_rel, np.asarray(stack).reshape(-1, ext_box, ext_box), ext_px, stack=True)
        for i, p in enumerate(particles, start=1):
            particle_rows.append(
                {
                    "rlnCoordinateX": p.x_px,
                    "rlnCoordinateY": p.y_px,
                    "rlnAutopickFigureOfMerit": round(float(rng.uniform(0.1, 0.3)), 6),
                    "rlnClassNumber": 0,
                    "rlnAnglePsi": 0.0,
                    "rlnImageName": f"{i:06d}@{stack_rel}",
                    "rlnMicrographName": mic_rel,
                    "rlnOpticsGroup": 1,
                    "rlnCtfMaxResolution": max_res,
                    "rlnCtfFigureOfMerit": fom,
                    "rlnDefocusU": df_u,
                    "rlnDefocusV": df_v,
                    "rlnDefocusAngle": angle,
                    "rlnCtfBfactor": 0.0,
                    "rlnCtfScalefactor": 1.0,
                    "rlnPhaseShift": 0.0,
                }
            )

    motion_optics = {**optics, "rlnMicrographPixelSize": pixel_size_A}
    _write_star(
        root / MOTION_JOB / "corrected_micrographs.star",
        {
            "optics": pd.DataFrame([motion_optics]),
            "micrographs": pd.DataFrame(
                [
                    {
                        "rlnCtfPowerSpectrum": f"{MOTION_JOB}/Movies/{m.name}_PS.mrc",
                        "rlnMicrographName": m.micrograph_path,
                        "rlnMicrographMetadata": f"{MOTION_JOB}/Movies/{m.name}.star",
                        "rlnOpticsGroup": 1,
                        "rlnAccumMotionTotal": m.accum_motion_total,
                        "rlnAccumMotionEarly": m.accum_motion_early,
                        "rlnAccumMotionLate": m.accum_motion_late,
                    }
                    for m in micrographs
                ]
            ),
        },
    )
    _write_star(
        root / CTF_JOB / "micrographs_ctf.star",
        {
            "optics": pd.DataFrame([motion_optics]),
            "micrographs": pd.DataFrame(
                [
                    {
                        "rlnMicrographName": m.micrograph_path,
                        "rlnOpticsGroup": 1,
                        "rlnCtfImage": f"{CTF_JOB}/Movies/{m.name}_PS.ctf:mrc",
                        "rlnDefocusU": m.defocus_u_A,
                        "rlnDefocusV": m.defocus_v_A,
                        "rlnCtfAstigmatism": round(m.defocus_u_A - m.defocus_v_A, 2),
                        "rlnDefocusAngle": m.defocus_angle_deg,
                        "rlnCtfFigureOfMerit": m.ctf_figure_of_merit,
                        "rlnCtfMaxResolution": m.ctf_max_resolution_A,
                        "rlnCtfIceRingDensity": m.ice_ring_density,
                    }
                    for m in micrographs
                ]
            ),
        },
    )
    particle_optics = {
        **optics,
        "rlnImagePixelSize": ext_px,
        "rlnImageSize": ext_box,
        "rlnImageDimensionality": 2,
        "rlnCtfDataAreCtfPremultiplied": 0,
    }
    _write_star(
        root / EXTRACT_JOB / "particles.star",
        {"optics": pd.DataFrame([particle_optics]), "particles": pd.DataFrame(particle_rows)},
    )

    distribution: tuple[float, ...] = ()
    resolution: tuple[float, ...] = ()
    if with_classes:
        distribution, resolution = _write_classes(
            root,
            np.random.default_rng(class_seq),
            molecule,
            views,
            micrographs,
            particle_rows,
            particle_optics,
            n_classes,
        )

    return SyntheticAcquisition(
        root=root,
        pixel_size_A=pixel_size_A,
        voltage_kV=VOLTAGE_KV,
        cs_mm=CS_MM,
        amplitude_contrast=AMPLITUDE_CONTRAST,
        micrographs=micrographs,
        n_classes=n_classes if with_classes else 0,
        size=size,
        seed=seed,
        particle_pixel_size_A=ext_px,
        particle_box=ext_box,
        class_distribution=distribution,
        class_resolution_A=resolution,
    )


def _write_classes(
    root: Path,
    rng: np.random.Generator,
    molecule: _Molecule,
    views: Rotation,
    micrographs: list[SyntheticMicrograph],
    particle_rows: list[dict],
    particle_optics: dict,
    n_classes: int,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Write Class2D/job010/run_it025_{classes.mrcs,model.star,data.star}; return (distribution, resolution)."""
    box = int(particle_optics["rlnImageSize"])
    px = float(particle_optics["rlnImagePixelSize"])
    truth = [p for m in micrographs for p in m.particles]
    counts = np.bincount([p.class_number for p in truth], minlength=n_classes + 1)[1:]
    total = max(int(counts.sum()), 1)
    distribution = tuple(round(float(c) / total, 6) for c in counts)
    nyquist = 2.0 * px
    resolution: list[float] = []
    images = []
    for k in range(n_classes):
        junk = k == n_classes - 1
        # Fewer particles -> noisier, blurrier average (a rough stand-in for RELION's SSNR).
        res = 45.312 if junk else round(max(nyquist * 2.0, 6.0 + 30.0 / math.sqrt(max(counts[k], 1))), 6)
        noise = 0.6 / math.sqrt(max(counts[k], 1))
        if junk:  # false picks on empty ice average to faint, featureless noise
            images.append(_class_average(rng, None, None, box, px, res, 0.3))
        else:
            images.append(_class_average(rng, molecule, views[k], box, px, res, noise))
        resolution.append(res)
    classes_rel = f"{CLASS2D_JOB}/run_it{CLASS2D_ITERATION:03d}_classes.mrcs"
    _write_mrc(root / classes_rel, np.asarray(images), px, stack=True, label="cryobus synthetic: 2D class averages")

    model_general = {
        "rlnReferenceDimensionality": 2,
        "rlnDataDimensionality": 2,
        "rlnOriginalImageSize": box,
        "rlnCurrentResolution": min(resolution),
        "rlnCurrentImageSize": box,
        "rlnPaddingFactor": 2.0,
        "rlnIsHelix": 0,
        "rlnFourierSpaceInterpolator": 1,
        "rlnMinRadiusNnInterpolation": 10,
        "rlnPixelSize": px,
        "rlnNrClasses": n_classes,
        "rlnNrBodies": 1,
        "rlnNrGroups": len(micrographs),
        "rlnNrOpticsGroups": 1,
        "rlnTau2FudgeFactor": 2.0,
        "rlnNormCorrectionAverage": 1.0,
        "rlnSigmaOffsetsAngst": 3.0,
        "rlnOrientationalPriorMode": 0,
        "rlnSigmaPriorRotAngle": 0.0,
        "rlnSigmaPriorTiltAngle": 0.0,
        "rlnSigmaPriorPsiAngle": 0.0,
        "rlnLogLikelihood": 0.0,
        "rlnAveragePmax": 0.9,
    }
    model_classes = pd.DataFrame(
        {
            "rlnReferenceImage": [f"{k:06d}@{classes_rel}" for k in range(1, n_classes + 1)],
            "rlnClassDistribution": distribution,
            "rlnAccuracyRotations": [999.0 if k == n_classes - 1 else 2.0 for k in range(n_classes)],
            "rlnAccuracyTranslationsAngst": [999.0 if k == n_classes - 1 else 1.5 for k in range(n_classes)],
            "rlnEstimatedResolution": resolution,
            "rlnOverallFourierCompleteness": [1.0] * n_classes,
            "rlnClassPriorOffsetX": [0.0] * n_classes,
            "rlnClassPriorOffsetY": [0.0] * n_classes,
        }
    )
    model_groups = pd.DataFrame(
        {
            "rlnGroupNumber": range(1, len(micrographs) + 1),
            "rlnGroupName": [f"Movies/{m.name}.mrc" for m in micrographs],
            "rlnGroupNrParticles": [m.n_particles for m in micrographs],
            "rlnGroupScaleCorrection": [1.0] * len(micrographs),
        }
    )
    _write_star(
        root / CLASS2D_JOB / f"run_it{CLASS2D_ITERATION:03d}_model.star",
        {"model_general": model_general, "model_classes": model_classes, "model_groups": model_groups},
    )

    data_rows = []
    for row, p in zip(particle_rows, truth, strict=True):
        group = next(i for i, m in enumerate(micrographs, start=1) if m.micrograph_path == row["rlnMicrographName"])
        data_rows.append(
            {
                **row,
                "rlnClassNumber": p.class_number,
                "rlnAnglePsi": p.psi_deg,
                "rlnGroupNumber": group,
                "rlnAngleRot": 0.0,
                "rlnAngleTilt": 0.0,
                "rlnOriginXAngst": 0.0,
                "rlnOriginYAngst": 0.0,
                "rlnNormCorrection": 1.0,
                "rlnLogLikeliContribution": 0.0,
                "rlnMaxValueProbDistribution": 1.0,
                "rlnNrOfSignificantSamples": 1,
            }
        )
    _write_star(
        root / CLASS2D_JOB / f"run_it{CLASS2D_ITERATION:03d}_data.star",
        {"optics": pd.DataFrame([particle_optics]), "particles": pd.DataFrame(data_rows)},
    )
    return distribution, tuple(resolution)


# --------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    """``python -m cryobus.demo.synthetic OUT_DIR [--n N --size S --seed K ...]``; prints one summary line."""
    parser = argparse.ArgumentParser(prog="python -m cryobus.demo.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="project folder to write")
    parser.add_argument("--n", type=int, default=6, help="number of micrographs (default 6)")
    parser.add_argument("--size", type=int, default=1024, help="micrograph edge in px (default 1024)")
    parser.add_argument("--pixel-size", type=float, default=1.0, help="Å/px (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--snr", type=float, default=DEFAULT_SNR, help=f"signal-to-noise ratio (default {DEFAULT_SNR})")
    parser.add_argument("--no-classes", action="store_true", help="skip the Class2D job")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        acq = generate_acquisition(
            args.out_dir,
            n_micrographs=args.n,
            size=args.size,
            pixel_size_A=args.pixel_size,
            seed=args.seed,
            with_classes=not args.no_classes,
            snr=args.snr,
        )
    except InputError as exc:
        print(f"synthetic: {exc}", file=sys.stderr)
        return 2
    n_particles = sum(m.n_particles for m in acq.micrographs)
    defoci = [0.5 * (m.defocus_u_A + m.defocus_v_A) / 1e4 for m in acq.micrographs]
    print(
        f"wrote {len(acq.micrographs)} micrographs ({acq.size}x{acq.size} px, {acq.pixel_size_A} Å/px, "
        f"defocus {min(defoci):.2f}-{max(defoci):.2f} µm), {n_particles} particles, {acq.n_classes} classes "
        f"to {acq.root} (seed {acq.seed}, {time.perf_counter() - start:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
