"""Class-average montage: one labelled tile per class, in the source's numbering."""

from __future__ import annotations

import numpy as np
import pytest

from cryobus.services.render import class_averages, montage
from cryobus.shared.class_averages import read_class2d

JOB = "Class2D/job010"


def test_label_text():
    assert montage.ClassLabel(3, 120, 7.456).text() == "#3 · 120 ptcl · 7.5 Å"
    assert montage.ClassLabel(0, None, float("inf")).text() == "#0 · – Å"


def test_montage_of_the_real_class2d_job(relion_project):
    job = relion_project / JOB
    classes = read_class2d(dataset="d", project_dir=relion_project, job_dir=job, iteration=25,
                           model_star=job / "run_it025_model.star", classes_mrcs=job / "run_it025_classes.mrcs",
                           data_star=job / "run_it025_data.star").classes
    stack = np.stack([c.image for c in classes])
    images = class_averages.class_images(stack)
    labels = [montage.ClassLabel(c.number, c.particle_count, c.resolution_A) for c in classes]
    assert [label.number for label in labels] == list(range(1, 51))
    # hard-assignment counts add up to the particles in the data STAR
    assert sum(label.particles for label in labels) == 2374
    out = montage.montage(images, labels)
    cols = int(np.ceil(np.sqrt(50)))
    edge = min(montage.MAX_TILE, stack.shape[1])
    rows = int(np.ceil(50 / cols))
    assert out.dtype == np.uint8 and out.shape[0] == rows * (edge + montage.LABEL_HEIGHT) + (rows - 1) * montage.GAP
    assert out.shape[1] == cols * max(edge, 112) + (cols - 1) * montage.GAP
    # label strips carry white text
    strip = out[edge : edge + montage.LABEL_HEIGHT, : max(edge, 112)]
    assert (strip > 200).any()


def test_montage_refuses_mismatched_input():
    img = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="labels"):
        montage.montage([img, img], [montage.ClassLabel(1)])
    with pytest.raises(ValueError, match="no class averages"):
        montage.montage([], [])
