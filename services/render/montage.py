"""A labelled montage of 2D class averages: one tile per class, with its number, particle count and resolution."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 14  # px strip under each tile, fits Pillow's default font (11 px)
GAP = 2  # px between tiles
MAX_TILE = 160  # px; class averages larger than this are area-averaged down for the montage


@dataclass(frozen=True)
class ClassLabel:
    """What is written under one class average.

    Attributes:
        number: class number as the source numbers it (RELION 1-based, CryoSPARC 0-based).
        particles: particles assigned to the class (hard assignment), if known.
        resolution_A: estimated resolution, Å, if known (``inf`` is written as "–").
    """

    number: int
    particles: int | None = None
    resolution_A: float | None = None

    def text(self) -> str:
        parts = [f"#{self.number}"]
        if self.particles is not None:
            parts.append(f"{self.particles} ptcl")
        if self.resolution_A is not None:
            parts.append(f"{self.resolution_A:.1f} Å" if math.isfinite(self.resolution_A) else "– Å")
        return " · ".join(parts)


def _fit(tile: np.ndarray, edge: int) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(tile))
    if max(tile.shape) > edge:
        image = image.resize((edge, edge), Image.BOX)
    return image


def montage(images: list[np.ndarray], labels: list[ClassLabel], *, columns: int | None = None) -> np.ndarray:
    """Tile class-average images in a grid with a label strip under each.

    Args:
        images: n uint8 (ny, nx) display images (e.g. from :func:`class_averages.class_images`),
            all the same shape.
        labels: n labels, same order.
        columns: tiles per row; default ``ceil(sqrt(n))``.

    Returns:
        uint8 (H, W) greyscale image: white labels on black strips, tiles of at most
        :data:`MAX_TILE` px.

    Raises:
        ValueError: no images, different shapes, or ``len(labels) != len(images)``.
    """
    if not images:
        raise ValueError("no class averages to tile")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    shape = images[0].shape
    if any(img.shape != shape for img in images):
        raise ValueError("class averages differ in shape")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    edge = min(MAX_TILE, max(shape))
    # Labels are at least ~110 px wide; a tile narrower than that gets a wider cell.
    cell_w = max(edge, 112)
    cell_h = edge + LABEL_HEIGHT
    canvas = Image.new("L", (columns * cell_w + (columns - 1) * GAP, rows * cell_h + (rows - 1) * GAP), 0)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (img, label) in enumerate(zip(images, labels)):
        r, c = divmod(i, columns)
        x0, y0 = c * (cell_w + GAP), r * (cell_h + GAP)
        canvas.paste(_fit(img, edge), (x0 + (cell_w - edge) // 2, y0))
        draw.text((x0 + 2, y0 + edge + 1), label.text(), fill=255, font=font)
    return np.asarray(canvas)
