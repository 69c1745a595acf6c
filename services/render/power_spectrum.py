"""Power spectra of micrographs, and display images of spectra and CTFFIND diagnostics.

``periodogram`` is Welch's averaged periodogram (Welch 1967, IEEE Trans. Audio
Electroacoust. 15:70) in 2-D, the estimate CTF programs fit (CTFFIND4, Rohou & Grigorieff
2015, J. Struct. Biol. 192:216; IMOD ctfplotter: 50 % overlapping tiles): each tile is
made zero-mean, multiplied by a separable Hann window (default; ``window=None`` turns it off,
at the price of a bright cross along the axes from tile-edge discontinuities), Fourier
transformed (scipy.fft, single thread), and |F|^2 is averaged over tiles.

Geometry (array convention, before any display flip): ``ps[c + ky, c + kx]`` with
``c = tile // 2`` is the power at ky/tile cycles per pixel along rows (y) and kx/tile along
columns (x); a frequency of k/tile cycles/px corresponds to (pixel size * tile / k) Å.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from PIL import Image

from cryobus.services.render.micrograph import finite_or_median, flip_rows, robust_limits, to_uint8


def _tile_starts(n: int, tile: int, step: int) -> list[int]:
    """Tile start offsets covering [0, n): regular steps plus one tile flush with the end."""
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile + 1, step))
    if starts[-1] != n - tile:
        starts.append(n - tile)
    return starts


def periodogram(
    image: np.ndarray,
    *,
    tile: int = 512,
    overlap: float = 0.5,
    window: str | None = "hann",
) -> np.ndarray:
    """Welch-averaged, centred, log10 power spectrum of a micrograph.

    Args:
        image: float32 (ny, nx) micrograph; NaN/inf become the finite median.
        tile: tile edge in pixels (even, >= 8); the output is (tile, tile). An image smaller
            than ``tile`` along an axis is used whole and zero-padded to ``tile``.
        overlap: fraction of a tile shared by neighbours, in [0, 1).
        window: ``"hann"`` or ``None`` (rectangular).

    Returns:
        float32 (tile, tile): log10 of the mean power per tile, normalised by the sum of the
        squared window (a power spectral density in image-units^2), fftshift-ed so zero
        frequency is at (tile // 2, tile // 2). Tiles are zero-mean, so the DC bin carries no
        information; it is replaced by the mean of its four neighbours to keep display
        contrast sane. A constant image gives a constant spectrum.

    Raises:
        ValueError: bad ``tile``/``overlap``/``window`` or a non-2-D image.
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {image.shape}")
    if tile < 8 or tile % 2:
        raise ValueError(f"tile must be even and >= 8, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if window not in ("hann", None):
        raise ValueError(f"window must be 'hann' or None, got {window!r}")
    image = finite_or_median(image)
    ty, tx = min(tile, image.shape[0]), min(tile, image.shape[1])
    step = max(1, int(round(tile * (1.0 - overlap))))
    if window == "hann":
        # Symmetric Hann (numpy.hanning) of the tile's actual size.
        win = np.outer(np.hanning(ty), np.hanning(tx)).astype(np.float32)
    else:
        win = np.ones((ty, tx), dtype=np.float32)
    xs = _tile_starts(image.shape[1], tile, step)
    half = np.zeros((tile, tile // 2 + 1), dtype=np.float64)
    n_tiles = 0
    for y in _tile_starts(image.shape[0], tile, step):
        # One row of tiles at a time: memory stays at len(xs) tiles.
        tiles = np.stack([image[y : y + ty, x : x + tx] for x in xs])
        tiles -= tiles.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(np.float32)
        tiles *= win
        spectra = scipy.fft.rfft2(tiles, s=(tile, tile), workers=1)
        half += (spectra.real**2 + spectra.imag**2).sum(axis=0, dtype=np.float64)
        n_tiles += len(xs)
    half /= n_tiles * float(np.sum(win.astype(np.float64) ** 2))

    # Rebuild the full plane from the real-FFT half by Hermitian symmetry: P(-k) = P(k).
    power = np.empty((tile, tile), dtype=np.float64)
    power[:, : tile // 2 + 1] = half
    negated_rows = (-np.arange(tile)) % tile
    power[:, tile // 2 + 1 :] = half[negated_rows][:, tile // 2 - 1 : 0 : -1]
    power[0, 0] = (power[0, 1] + power[1, 0] + power[0, -1] + power[-1, 0]) / 4.0

    floor = max(float(power.max()) * 1e-12, np.finfo(np.float64).tiny)
    return np.fft.fftshift(np.log10(np.maximum(power, floor))).astype(np.float32)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Area-average (Pillow BOX filter) resize of a float32 image to (size, size)."""
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize((size, size), Image.BOX))


def flip_spectrum_rows(ps: np.ndarray) -> np.ndarray:
    """Mirror a centred spectrum ky -> -ky, keeping zero frequency on its pixel.

    For an even edge the centre is row n//2, and a plain ``[::-1]`` would move it to n//2 - 1;
    rolling by one row restores it (row 0, the Nyquist row, maps onto itself).
    """
    flipped = flip_rows(ps)
    return np.roll(flipped, 1, axis=0) if ps.shape[0] % 2 == 0 else flipped


def spectrum_preview(
    ps: np.ndarray,
    *,
    size: int = 512,
    clip_percentiles: tuple[float, float] = (1.0, 99.5),
    dc_radius: float = 0.02,
    flip_y: bool = True,
) -> np.ndarray:
    """Display image of a centred (log) power spectrum, e.g. from :func:`periodogram`.

    Args:
        ps: float32 (n, n) centred spectrum, zero frequency at (n // 2, n // 2).
        size: output edge in pixels (area-average resize when ``n != size``).
        clip_percentiles: percentiles mapped to 0 and 255, computed *outside* the central
            disc, so the low-frequency peak saturates instead of setting the contrast.
        dc_radius: radius of that disc as a fraction of ``size`` (at least 2 px).
        flip_y: mirror ky -> -ky so the spectrum matches the flipped micrograph preview.

    Returns:
        uint8 (size, size); a constant spectrum gives all 128.
    """
    ps = np.asarray(ps)
    if ps.ndim != 2 or ps.size == 0:
        raise ValueError(f"expected a non-empty 2-D spectrum, got shape {ps.shape}")
    img = _resize(finite_or_median(ps), size)
    c = size // 2
    yy, xx = np.ogrid[:size, :size]
    outside = (yy - c) ** 2 + (xx - c) ** 2 > max(2.0, dc_radius * size) ** 2
    out = to_uint8(img, *robust_limits(img[outside] if outside.any() else img, clip_percentiles))
    return flip_spectrum_rows(out) if flip_y else out


def ctffind_diagnostic_preview(
    image: np.ndarray,
    *,
    clip_percentiles: tuple[float, float] = (0.1, 99.9),
    flip_y: bool = True,
) -> np.ndarray:
    """Display image of a CTFFIND4 diagnostic (``.ctf`` / ``_ctffind.mrc``), at its own size.

    Layout, read from CTFFIND 4.1's ``SpectrumImage::OverlayCTF`` and confirmed on
    ``CtfFind/job005/Movies/20170629_00021_frameImage_PS.ctf`` (CTFFIND 4.1.14): in file
    order, rows below ny/2 hold the fitted |CTF| model (columns < nx/2, only within the fitting
    range) and the experimental rotational/equi-phase average spread back into 2-D (columns
    >= nx/2); rows from ny/2 up hold the experimental amplitude spectrum; frequencies below
    the fitting range are 0. So it is *not* "fit left, data right": after the vertical flip
    (y up, as NextPYP renders ``_ctffit.webp``) the model is bottom-left, the 1-D average
    bottom-right and the data on top.

    Contrast: CTFFIND already clips the experimental values (its Fortran version at
    mean - 1σ .. mean + 2σ; the 4.1.14 file has 2 % of its pixels at the upper clip value) and
    puts the model on the same scale; NextPYP shows the image min-max. The 0.1/99.9 percentiles
    land on CTFFIND's clip values on that file, ignore a lone outlier of the 1-D average, and
    guard against writers that do not clip.

    Args:
        image: float32 (ny, nx) diagnostic, section 0 of the file.
        clip_percentiles: percentiles mapped to 0 and 255.
        flip_y: row 0 to the bottom (NextPYP's orientation).

    Returns:
        uint8 (ny, nx).
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a non-empty 2-D image, got shape {image.shape}")
    img = finite_or_median(image)
    out = to_uint8(img, *robust_limits(img, clip_percentiles))
    return flip_rows(out) if flip_y else out
