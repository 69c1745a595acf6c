"""CryoLike's uniform polar Fourier grid: Gauss–Jacobi shells × equispaced in-plane angles.

Source: CryoLike ``grids/polar_grid.py`` (reference §4.3–4.4). With ``R = radius_max``:

* ``n_shells = 1 + ceil(R / dist_radii)``;
* ``t_s, w_s = roots_jacobi(n_shells, α=0, β=1)``, radii ``r_s = (t_s + 1) · R / 2`` (ascending,
  never exactly 0 or R); the β=1 weight is the ``r dr`` of the disc area;
* angles ``θ_j = 2π j / n_inplanes``;
* points are shell-major: point ``p = s · n_inplanes + j`` sits at ``(r_s cos θ_j, r_s sin θ_j)``;
* quadrature weight of a point on shell s: ``W_s = w_s · π R² / (2 n_inplanes)``, so that
  ``Σ_p W_p = π R²`` (the disc area) and ``‖F‖² = Σ_s Σ_j W_s |F[s, j]|²``.

Units: a radius r is a spatial frequency of ``r · 2 / box_size`` Å⁻¹ (box in Å).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg  # noqa: F401  roots_jacobi imports it on first use (≈ 30 ms): pay that at import, not per conversion
from scipy.special import roots_jacobi

from cryobus.services.convert.params import ImageDescriptor


@dataclass(frozen=True)
class PolarGrid:
    """The polar grid of an image descriptor.

    Attributes:
        radius_max: R, in CryoLike's polar units.
        dist_radii: shell spacing used to count shells.
        n_inplanes: angles per shell.
    """

    radius_max: float
    dist_radii: float
    n_inplanes: int

    @classmethod
    def from_descriptor(cls, desc: ImageDescriptor) -> PolarGrid:
        return cls(float(desc.radius_max), float(desc.dist_radii), int(desc.n_inplanes))

    @cached_property
    def n_shells(self) -> int:
        return 1 + int(math.ceil(self.radius_max / self.dist_radii))

    @cached_property
    def _nodes(self) -> tuple[np.ndarray, np.ndarray]:
        t, w = roots_jacobi(self.n_shells, 0.0, 1.0)
        return t, w

    @property
    def radii(self) -> np.ndarray:
        """float64 (n_shells,): shell radii ``r_s``, ascending."""
        t, _ = self._nodes
        return (t + 1.0) * self.radius_max / 2.0

    @property
    def angles(self) -> np.ndarray:
        """float64 (n_inplanes,): in-plane angles ``θ_j`` in radians, from 0, counter-clockwise."""
        return np.linspace(0.0, 2.0 * np.pi, self.n_inplanes, endpoint=False)

    @property
    def shell_weights(self) -> np.ndarray:
        """float64 (n_shells,): quadrature weight ``W_s`` of each point on shell s (sum over the grid = πR²)."""
        _, w = self._nodes
        return w * np.pi * self.radius_max**2 / (2.0 * self.n_inplanes)

    @property
    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """float64 (n_shells·n_inplanes,) each: ``x = r cos θ`` and ``y = r sin θ``, shell-major.

        ``x`` pairs with image axis 1 (MRC rows) and ``y`` with axis 2 (columns): CryoLike's
        ``indexing='ij'`` convention (reference §4.1).
        """
        r, th = self.radii, self.angles
        return (np.outer(r, np.cos(th)).ravel(), np.outer(r, np.sin(th)).ravel())

    def resolution_A(self, box_size_A: float) -> np.ndarray:
        """float64 (n_shells,): resolution of each shell in Å, ``box_size / (2 r_s)``."""
        return box_size_A / (2.0 * self.radii)
