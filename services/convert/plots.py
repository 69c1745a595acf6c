"""The three quick-look PNGs CryoLike draws per stack, drawn with Pillow (no matplotlib).

Content follows CryoLike ``plot.py`` (reference §6, "Plots"); the look is simpler:

* image grid: the first ≤ 16 physical images, ``ceil(√n)`` rows, each grey-scaled to its own
  min..max, row 0 at the *bottom* (``imshow(origin='lower')``);
* polar grid: the real part of the same images' Fourier values drawn on discs (angle 0 along
  +x, counter-clockwise; radius to scale), each grey-scaled to its own range;
* power spectrum: mean over images and angles of |F|² per shell against resolution
  ``box / (2 r_s)`` Å, log–log, with CryoLike's inverted x axis (coarse, large Å, on the left).

Labels are ASCII so that Pillow's built-in font can draw them.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cryobus.services.convert.polar_grid import PolarGrid

MAX_IMAGES = 16
_GAP = 4


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # Fast zlib level: these are quick-look images written for every stack.
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _grey(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        return np.zeros(v.shape, dtype=np.uint8)
    lo, hi = float(v[finite].min()), float(v[finite].max())
    scaled = (np.where(finite, v, lo) - lo) / (hi - lo) if hi > lo else np.zeros(v.shape)
    return np.round(scaled * 255.0).astype(np.uint8)


def _layout(n: int) -> tuple[int, int]:
    rows = math.ceil(math.sqrt(n))
    return rows, math.ceil(n / rows)


def _grid(tiles: list[np.ndarray], tile: int) -> Image.Image:
    rows, cols = _layout(len(tiles))
    canvas = Image.new("L", (cols * tile + (cols + 1) * _GAP, rows * tile + (rows + 1) * _GAP), 255)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        im = Image.fromarray(t, mode="L")
        if im.size != (tile, tile):
            im = im.resize((tile, tile), Image.Resampling.BILINEAR)
        canvas.paste(im, (_GAP + c * (tile + _GAP), _GAP + r * (tile + _GAP)))
    return canvas


def image_grid_png(phys: np.ndarray, *, width: int = 1200) -> bytes:
    """PNG of the first ≤ 16 images of a (B, N0, N1) stack, origin at the bottom-left."""
    images = np.asarray(phys[:MAX_IMAGES], dtype=np.float32)
    _, cols = _layout(len(images))
    tile = max(32, (width - (cols + 1) * _GAP) // cols)
    return _png(_grid([_grey(im[::-1]) for im in images], tile))


def polar_grid_png(fourier: np.ndarray, grid: PolarGrid, *, width: int = 1200) -> bytes:
    """PNG of Re F of the first ≤ 16 images of a (B, n_shells, n_inplanes) stack, drawn on discs."""
    values = np.asarray(fourier[:MAX_IMAGES])
    _, cols = _layout(len(values))
    tile = max(32, (width - (cols + 1) * _GAP) // cols)
    # Nearest grid point for every pixel of a tile (computed once for all images).
    c = (tile - 1) / 2.0
    v, u = np.mgrid[0:tile, 0:tile]
    x, y = (u - c) / c * grid.radius_max, (c - v) / c * grid.radius_max
    r = np.hypot(x, y)
    inside = r <= grid.radius_max
    radii = grid.radii
    shell = np.clip(np.searchsorted(radii, r), 0, len(radii) - 1)
    lower = np.clip(shell - 1, 0, len(radii) - 1)
    shell = np.where(np.abs(radii[lower] - r) < np.abs(radii[shell] - r), lower, shell)
    angle = np.mod(np.round(np.mod(np.arctan2(y, x), 2 * np.pi) / (2 * np.pi) * grid.n_inplanes), grid.n_inplanes).astype(int)
    tiles = []
    for f in values:
        real = np.real(f).astype(np.float64)
        g = _grey(real)[shell, angle]
        tiles.append(np.where(inside, g, 255).astype(np.uint8))
    return _png(_grid(tiles, tile))


def _nice_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten and their 2× and 5× multiples within [lo, hi] (log axis labels)."""
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            t = m * 10.0**e
            if lo <= t <= hi:
                ticks.append(t)
    return ticks


def shell_power(fourier: np.ndarray) -> np.ndarray:
    """float64 (n_shells,): mean over images and angles of |F|² of a (B, n_shells, n_inplanes) stack."""
    f = np.asarray(fourier)
    return (f.real.astype(np.float64) ** 2 + f.imag.astype(np.float64) ** 2).mean(axis=(0, 2))


def power_spectrum_png(power: np.ndarray, grid: PolarGrid, box_size_A: float, *, size: tuple[int, int] = (800, 600)) -> bytes:
    """PNG of a stack's mean power per shell, log |F|² against log resolution (Å), coarse on the left.

    Args:
        power: (n_shells,) mean |F|² per shell (:func:`shell_power`, or the same computed on a GPU).
        grid: the polar grid.
        box_size_A: box edge in Å (params ``max(n_pixels · pixel_size)``).
    """
    power = np.asarray(power, dtype=np.float64)
    res = grid.resolution_A(box_size_A)
    w, h = size
    left, right, top, bottom = 90, 30, 50, 70
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((w // 2 - 60, 15), "power spectrum", fill="black", font=font)
    keep = np.isfinite(power) & (power > 0) & np.isfinite(res) & (res > 0)
    draw.rectangle((left, top, w - right, h - bottom), outline="black")
    if keep.sum() >= 2:
        lx, ly = np.log10(res[keep]), np.log10(power[keep])
        x_hi, x_lo = lx.max(), lx.min()  # large Å on the left (CryoLike inverts the axis)
        y_lo, y_hi = ly.min(), ly.max()
        if y_hi == y_lo:
            y_lo, y_hi = y_lo - 1, y_hi + 1
        span_x = (x_hi - x_lo) or 1.0

        def px(a: float, b: float) -> tuple[float, float]:
            return (
                left + (x_hi - a) / span_x * (w - left - right),
                h - bottom - (b - y_lo) / (y_hi - y_lo) * (h - top - bottom),
            )

        draw.line([px(a, b) for a, b in zip(lx, ly)], fill=(31, 119, 180), width=2)
        for t in _nice_ticks(10**x_lo, 10**x_hi):
            x, _ = px(math.log10(t), y_lo)
            draw.line((x, h - bottom, x, h - bottom + 5), fill="black")
            draw.text((x - 10, h - bottom + 8), f"{t:g}", fill="black", font=font)
        for e in range(math.ceil(y_lo), math.floor(y_hi) + 1):
            _, y = px(x_hi, e)
            draw.line((left - 5, y, left, y), fill="black")
            draw.text((left - 55, y - 6), f"1e{e}", fill="black", font=font)
    draw.text((w // 2 - 50, h - 30), "resolution (A)", fill="black", font=font)
    draw.text((10, top - 20), "mean |F|^2", fill="black", font=font)
    return _png(img)


def stack_plots(
    phys: np.ndarray, fourier: np.ndarray, power: np.ndarray, grid: PolarGrid, box_size_A: float
) -> dict[str, bytes]:
    """The three PNGs of one stack, by writer role (``plot_phys``, ``plot_fourier``, ``plot_power``).

    Args:
        phys, fourier: the stack's first images (at least the first 16), physical and polar.
        power: (n_shells,) mean power per shell over the *whole* stack.
        grid, box_size_A: see :func:`power_spectrum_png`.
    """
    return {
        "plot_phys": image_grid_png(phys),
        "plot_fourier": polar_grid_png(fourier, grid),
        "plot_power": power_spectrum_png(power, grid, box_size_A),
    }
