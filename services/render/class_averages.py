"""2D class averages: one display image per class.

The classes themselves (numbers as the source numbers them, counts, resolutions) are read by
:mod:`cryobus.shared.class_averages`, the same reader the labelling service uses.
"""

from __future__ import annotations

import numpy as np

from cryobus.services.render.micrograph import finite_or_median, flip_rows, robust_limits, to_uint8


def class_images(
    stack: np.ndarray,
    *,
    clip_percentiles: tuple[float, float] = (0.5, 99.5),
    flip_y: bool = True,
) -> list[np.ndarray]:
    """Render each class average on its own contrast range.

    Args:
        stack: float32 (n, ny, nx) class averages (``read_stack`` of ``run_itNNN_classes.mrcs``).
        clip_percentiles: per-class percentiles mapped to 0 and 255 (min/max fallback when
            they coincide, e.g. a small particle in a large flat mask).
        flip_y: MRC row 0 at the bottom, like the micrograph previews (see micrograph.py).

    Returns:
        n uint8 arrays (ny, nx), in stack order. An empty class (RELION writes
        zeros) or any constant image is uniform grey (128); NaN/inf pixels take the class's
        finite median.

    Raises:
        ValueError: ``stack`` is not 3-D.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise ValueError(f"expected a (n, ny, nx) stack, got shape {stack.shape}")
    images = []
    for section in stack:
        img = finite_or_median(section)
        out = to_uint8(img, *robust_limits(img, clip_percentiles))
        images.append(flip_rows(out) if flip_y else out)
    return images
