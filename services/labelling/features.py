"""The mass-deviation features of Magellon's 2D class-assessment model.

Source: Magellon ``Sandbox/2dclass_evaluator/ClassAvgLabeling/massest/mass_est_lib.py`` and
``extract_mrc.py`` (described in ``shared/reference/facility-services-and-labelling.md`` §2.8.1;
re-implemented here from that description, vectorised over the stack). For one class average
``img`` (float, as stored) with pixel size ``apix`` Å/px:

1. Edge statistics: mean ``μ_e`` and (population) standard deviation ``σ_e`` of the square ring
   ``EDGE_INSET`` = 3 px inside the border — rows/columns ``c`` and ``n − c`` (0-based) of an
   ``n``-pixel side, between ``c`` and ``n − c`` — away from the box edge's artefacts.
2. Particle mask: pixels ``> μ_e + 3 σ_e``; the background is every other pixel, ``μ_b`` its mean.
3. Mass: ``Σ_mask (img − μ_b) · apix² · 26.455`` (Magellon's scale factor, nominally Da).

Per job, over all its classes: ``dmean = |m − mean(m)|``, ``dmedian = |m − median(m)|``,
``dmode = |m − mode(m)|`` where the mode is the most frequent mass value, the smallest on a tie
(``scipy.stats.mode``'s rule, which Magellon calls). Masses are continuous, so in practice every
value is unique and the mode is the *smallest* mass of the job: ``dmode = m − min(m)``. The
features depend on the whole job, so they are computed once per imported job.

Model input order (Magellon ``MRCImageDataset``): ``[est_res Å, class_dist, pixel_size Å, dmean,
dmedian, dmode]``, the mass features scaled by 1e-8 at training time (not here: the export keeps
the raw values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EDGE_INSET = 3
MASK_NSIGMA = 3.0
MASS_SCALE = 26.455
FEATURE_ORDER = ("est_res_A", "class_dist", "pixel_size_A", "dmean_mass", "dmedian_mass", "dmode_mass")


@dataclass(frozen=True)
class MassFeatures:
    """Per-class arrays, float64 of shape (n_classes,): ``mass`` and its three deviations."""

    mass: np.ndarray
    dmean: np.ndarray
    dmedian: np.ndarray
    dmode: np.ndarray


def _edge_ring(stack: np.ndarray, inset: int) -> np.ndarray:
    """(n, ring_pixels) values of the square ring ``inset`` px inside the border of each image."""
    n, ny, nx = stack.shape
    if ny <= 2 * inset + 1 or nx <= 2 * inset + 1:
        raise ValueError(f"class averages of {ny}x{nx} px are too small for a ring {inset} px inside the border")
    top, bottom = inset, ny - inset
    left, right = inset, nx - inset
    return np.concatenate(
        [
            stack[:, top:bottom, left],
            stack[:, top:bottom, right],
            stack[:, top, left:right],
            stack[:, bottom, left:right],
        ],
        axis=1,
    )


def masses(stack: np.ndarray, pixel_size_A: np.ndarray | float) -> np.ndarray:
    """Estimated mass of each class average (Magellon's estimator, see the module docstring).

    Args:
        stack: float (n, ny, nx) class averages, values as stored in the file.
        pixel_size_A: Å/px, one value or one per class (shape (n,)).

    Returns:
        float64 (n,) masses (Magellon's units, nominally Da). A class with non-finite pixels
        (or no pixel size) gives NaN; an empty (constant) class gives 0.

    Raises:
        ValueError: ``stack`` is not 3-D or its images are smaller than 7 px.
    """
    stack = np.asarray(stack, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"expected a (n, ny, nx) stack, got shape {stack.shape}")
    ring = _edge_ring(stack, EDGE_INSET)
    mu_e = ring.mean(axis=1)
    sigma_e = ring.std(axis=1)
    mask = stack > (mu_e + MASK_NSIGMA * sigma_e)[:, None, None]
    background = ~mask
    n_bg = background.sum(axis=(1, 2))
    mu_b = np.where(n_bg > 0, (stack * background).sum(axis=(1, 2)) / np.maximum(n_bg, 1), 0.0)
    pixel_sum = ((stack - mu_b[:, None, None]) * mask).sum(axis=(1, 2))
    apix = np.broadcast_to(np.asarray(pixel_size_A, dtype=np.float64), mu_e.shape)
    with np.errstate(invalid="ignore"):
        return pixel_sum * apix**2 * MASS_SCALE


def _mode_smallest(values: np.ndarray) -> float:
    """Most frequent value, the smallest on a tie (``scipy.stats.mode``'s rule)."""
    uniq, counts = np.unique(values, return_counts=True)
    return float(uniq[np.argmax(counts)])  # argmax takes the first = smallest of the tied maxima


def mass_features(stack: np.ndarray, pixel_size_A: np.ndarray | float) -> MassFeatures:
    """Mass and the three mass-deviation features of every class of one job.

    Args:
        stack: float (n, ny, nx), all classes of the job (the statistics are over the job).
        pixel_size_A: Å/px, scalar or (n,).

    Returns:
        :class:`MassFeatures`; classes whose mass is NaN get NaN features and are left out of
        the job's mean/median/mode.

    Raises:
        ValueError: as :func:`masses`.
    """
    m = masses(stack, pixel_size_A)
    finite = m[np.isfinite(m)]
    if finite.size == 0:
        nan = np.full_like(m, np.nan)
        return MassFeatures(m, nan, nan.copy(), nan.copy())
    return MassFeatures(
        mass=m,
        dmean=np.abs(m - finite.mean()),
        dmedian=np.abs(m - np.median(finite)),
        dmode=np.abs(m - _mode_smallest(finite)),
    )
