"""The Magellon mass-deviation features: a disc of known area and contrast has the mass the
estimator's definition gives, the features are deviations over the job, and the real job's
empty class weighs nothing."""

from __future__ import annotations

import numpy as np
import pytest

from cryobus.services.labelling.features import MASS_SCALE, mass_features, masses
from cryobus.services.labelling.service import read_job


def _disc(n: int, radius: float, value: float, background: float) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    img = np.full((n, n), background, dtype=np.float32)
    img[xx**2 + yy**2 <= radius**2] = value
    return img


def test_disc_mass_is_area_times_contrast_times_pixel_area():
    img = _disc(64, 10, value=3.0, background=1.0)
    area = int((img > 1.0).sum())
    for apix in (1.0, 2.5):
        (m,) = masses(img[None], apix)
        assert m == pytest.approx(area * (3.0 - 1.0) * apix**2 * MASS_SCALE)


def test_noisy_background_sets_the_threshold():
    rng = np.random.default_rng(0)
    img = _disc(64, 12, value=10.0, background=0.0) + rng.normal(0, 1, (64, 64)).astype(np.float32)
    faint = _disc(64, 12, value=1.0, background=0.0) + rng.normal(0, 1, (64, 64)).astype(np.float32)
    m_bright, m_faint = masses(np.stack([img, faint]), 1.0)
    # The bright disc clears mean + 3 sigma of the edge ring; the faint one (1 sigma) mostly does not.
    assert m_bright > 20 * abs(m_faint)


def test_features_are_deviations_over_the_job():
    stack = np.stack([_disc(48, r, 2.0, 0.0) for r in (4, 6, 6, 9)])
    f = mass_features(stack, 1.5)
    m = f.mass
    np.testing.assert_allclose(f.dmean, np.abs(m - m.mean()))
    np.testing.assert_allclose(f.dmedian, np.abs(m - np.median(m)))
    np.testing.assert_allclose(f.dmode, np.abs(m - m[1]))  # two discs of radius 6 share the most frequent mass


def test_unique_masses_make_the_mode_the_smallest_mass():
    stack = np.stack([_disc(48, r, 2.0, 0.0) for r in (5, 3, 8)])
    f = mass_features(stack, 1.0)
    np.testing.assert_allclose(f.dmode, f.mass - f.mass.min())


def test_real_job_features(relion_event):
    cs = read_job(relion_event)
    stack = np.stack([c.image for c in cs.classes])
    f = mass_features(stack, cs.classes[0].pixel_size_A)
    empty = [i for i, c in enumerate(cs.classes) if not c.image.any()]
    assert empty and all(f.mass[i] == 0 for i in empty)  # RELION writes zeros for an empty class
    assert np.isfinite(f.mass).all() and (f.dmean >= 0).all() and (f.dmedian >= 0).all()
    assert f.dmode.min() == 0  # the smallest mass is the mode (all masses distinct otherwise)


def test_tiny_images_are_refused():
    with pytest.raises(ValueError):
        masses(np.zeros((1, 6, 6), np.float32), 1.0)
