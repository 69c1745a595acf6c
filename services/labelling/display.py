"""The 8-bit PNG a labeler looks at. For display only: the float image stays the record.

One rule for every class, so grades are comparable: per-class 0.5–99.5 percentile clip to
0..255 (min/max when the percentiles coincide, uniform grey for a constant image), NaN/inf
pixels take the class's finite median, and rows flipped so that MRC row 0 (y = 0) is at the
bottom, as RELION and IMOD display it (and as the render service's class PNGs are).
"""

from __future__ import annotations

import io

import numpy as np

CLIP_PERCENTILES = (0.5, 99.5)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float (ny, nx) → uint8 (ny, nx) for display, rows flipped (see module docstring)."""
    img = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(img)
    if not finite.all():
        img = np.where(finite, img, np.median(img[finite]) if finite.any() else 0.0)
    lo, hi = np.percentile(img, CLIP_PERCENTILES)
    if hi <= lo:
        lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        out = np.full(img.shape, 128, dtype=np.uint8)
    else:
        out = (np.clip((img - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(out[::-1])


def png_bytes(image: np.ndarray) -> bytes:
    """The display PNG of one class average (greyscale, 8-bit, lossless encoding of :func:`to_uint8`)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()
