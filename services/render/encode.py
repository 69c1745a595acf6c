"""Encode uint8 greyscale images as WebP or PNG bytes (Pillow), deterministically.

Artifacts are content-addressed and a redelivered job must rewrite the same bytes (DESIGN.md,
"Artifacts"), so every encoder setting that could change the output is pinned here rather
than left to Pillow defaults: libwebp is deterministic for fixed settings and a single
thread (Pillow does not enable libwebp's threading), and neither encoder writes a timestamp
or metadata unless asked. Same input and same Pillow/libwebp/zlib versions -> same bytes.

WebP has no greyscale mode: Pillow stores an ``L`` image as RGB with R = G = B, so a
lossless WebP decodes back to exactly the input values (after ``convert("L")``).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

WEBP_METHOD = 4  # libwebp effort 0 (fast) .. 6 (small) for lossy; 4 is libwebp's default, pinned here.
# Lossless: `quality` is compression effort and `method` the encoder's speed/size trade-off.
# Measured on 1024² previews on one core (bench/render_preview.py image): quality 90 → 0.51 s
# (real Leginon image), quality 25 method 4 → 68 ms, method 0 → 29 ms, files 1.3 % larger.
# Previews are on the latency path, so lossless uses quality 25, method 0.
LOSSLESS_EFFORT = 25
LOSSLESS_METHOD = 0
LOSSY_QUALITY = 90
PNG_COMPRESS_LEVEL = 6


def _as_image(img: np.ndarray) -> Image.Image:
    img = np.asarray(img)
    rgb = img.ndim == 3 and img.shape[2] == 3
    if img.dtype != np.uint8 or not (img.ndim == 2 or rgb) or img.size == 0:
        raise ValueError(f"expected a non-empty uint8 (h, w) or (h, w, 3) image, got {img.dtype} {img.shape}")
    return Image.fromarray(np.ascontiguousarray(img))


def webp_bytes(img: np.ndarray, *, lossless: bool = True, quality: int | None = None) -> bytes:
    """Encode a uint8 (h, w) greyscale or (h, w, 3) RGB image as WebP.

    Args:
        img: uint8 (h, w) greyscale or (h, w, 3) RGB image (overlays).
        lossless: lossless WebP (default; exact pixels). ``False`` gives lossy VP8.
        quality: 0..100; lossy: visual quality (default 90); lossless: compression effort
            (default :data:`LOSSLESS_EFFORT`).

    Returns:
        WebP file bytes (media type ``image/webp``).

    Raises:
        ValueError: not a uint8 greyscale/RGB image, or quality outside 0..100.
    """
    if quality is None:
        quality = LOSSLESS_EFFORT if lossless else LOSSY_QUALITY
    if not 0 <= quality <= 100:
        raise ValueError(f"quality must be in 0..100, got {quality}")
    buffer = io.BytesIO()
    method = LOSSLESS_METHOD if lossless else WEBP_METHOD
    _as_image(img).save(buffer, format="WEBP", lossless=lossless, quality=quality, method=method, exact=False)
    return buffer.getvalue()


def png_bytes(img: np.ndarray) -> bytes:
    """Encode a uint8 (h, w) image as 8-bit greyscale PNG, or (h, w, 3) as RGB PNG (``image/png``).

    Raises:
        ValueError: not a uint8 greyscale/RGB image.
    """
    buffer = io.BytesIO()
    _as_image(img).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buffer.getvalue()
