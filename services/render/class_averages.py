"""2D class averages: one display image per class, and RELION's per-class table.

Numbering follows RELION: class k (``rlnClassNumber`` k, ``rlnReferenceImage``
``00000k@run_itNNN_classes.mrcs``) is section k-1 of the classes stack, so element i of
:func:`class_images` is class i+1. The table's ``class_number`` is read from the
``rlnReferenceImage`` index itself, so the two line up by construction.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryobus.services.render.micrograph import finite_or_median, flip_rows, robust_limits, to_uint8
from cryobus.shared.errors import InputError

_COLUMNS = {
    "rlnClassDistribution": "class_distribution",
    "rlnEstimatedResolution": "estimated_resolution_A",
}


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
        n uint8 arrays (ny, nx); element i is RELION class i+1. An empty class (RELION writes
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


def read_relion_class_table(model_star: str | os.PathLike) -> pd.DataFrame:
    """Per-class statistics from a RELION ``run_itNNN_model.star`` (block ``data_model_classes``).

    Args:
        model_star: a Class2D (or Class3D) ``_model.star`` file.

    Returns:
        DataFrame, one row per class in file order, columns ``class_number`` (int, 1-based,
        the index of ``rlnReferenceImage``), ``class_distribution`` (fraction of particles,
        ``rlnClassDistribution``; sums to ~1), ``estimated_resolution_A`` (Å,
        ``rlnEstimatedResolution``; RELION writes ``inf`` for classes it could not estimate,
        e.g. empty ones, kept as written) and ``reference_image`` (``rlnReferenceImage``).

    Raises:
        InputError: the file cannot be parsed (field ``data_model_classes``), the block or a
            column is missing (field = the missing name), or a reference image has no ``k@``
            index (field ``rlnReferenceImage``).
    """
    path = Path(model_star)
    try:
        blocks = starfile.read(path, always_dict=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # starfile raises assorted parser errors on corrupt input
        raise InputError(f"cannot parse STAR file: {err}", file=str(path), field="data_model_classes") from err
    table = blocks.get("model_classes")
    if not isinstance(table, pd.DataFrame):
        raise InputError("no data_model_classes loop in this STAR file", file=str(path), field="data_model_classes")
    for column in ("rlnReferenceImage", *_COLUMNS):
        if column not in table.columns:
            raise InputError(f"column {column} missing from data_model_classes", file=str(path), field=column)
    reference = table["rlnReferenceImage"].astype(str)
    index = reference.str.extract(r"^\s*(\d+)@", expand=False)
    if index.isna().any():
        bad = reference[index.isna()].iloc[0]
        raise InputError(f"reference image {bad!r} has no 'k@' index", file=str(path), field="rlnReferenceImage")
    values = {}
    for column, name in _COLUMNS.items():
        try:
            values[name] = pd.to_numeric(table[column], errors="raise").astype(float)
        except (ValueError, TypeError) as err:
            raise InputError(f"non-numeric value in {column}: {err}", file=str(path), field=column) from err
    return pd.DataFrame(
        {
            "class_number": index.astype(int).to_numpy(),
            **{k: v.to_numpy() for k, v in values.items()},
            "reference_image": reference.to_numpy(),
        }
    )
