"""A RELION Class2D job finishes -> one image per class, numbered as RELION numbers them, with its table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryobus.services.render.class_averages import class_images
from cryobus.shared.class_averages import read_class2d
from cryobus.shared.formats.mrc import read_stack


@pytest.fixture(scope="module")
def class2d(relion_project: Path) -> Path:
    return relion_project / "Class2D/job010"


def test_fifty_class_images_match_the_table(class2d: Path):
    stack, header = read_stack(class2d / "run_it025_classes.mrcs")
    assert stack.shape == (50, 64, 64)
    images = class_images(stack)
    assert len(images) == 50
    assert all(img.dtype == np.uint8 and img.shape == (header.ny, header.nx) for img in images)

    classes = read_class2d(dataset="d", project_dir=class2d.parent.parent, job_dir=class2d,
                           model_star=class2d / "run_it025_model.star",
                           classes_mrcs=class2d / "run_it025_classes.mrcs").classes
    assert [c.number for c in classes] == list(range(1, 51))
    assert abs(sum(c.soft_distribution for c in classes) - 1.0) < 1e-4

    # Class k is section k-1: the classes RELION reports empty are the all-zero sections,
    # and those (only those) render as flat grey.
    empty = [c.number for c in classes if c.soft_distribution == 0]
    assert empty, "this run has empty classes"
    for number, img in zip([c.number for c in classes], images):
        if number in empty:
            assert not stack[number - 1].any() and np.all(img == 128)
        else:
            assert img.min() == 0 and img.max() == 255


def test_each_class_gets_its_own_contrast_and_keeps_its_place():
    rng = np.random.default_rng(4)
    stack = np.stack(
        [
            rng.standard_normal((32, 32)) * 1000.0,  # bright, wide range
            rng.standard_normal((32, 32)) * 0.001,  # faint, tiny range
            np.full((32, 32), 5.0),  # constant
            np.full((32, 32), np.nan),  # all NaN
        ]
    ).astype(np.float32)
    stack[1, 0, 0] = np.inf
    images = class_images(stack)
    assert [img.max() for img in images[:2]] == [255, 255]
    assert [img.min() for img in images[:2]] == [0, 0]
    assert np.all(images[2] == 128) and np.all(images[3] == 128)
    # the order is the stack's: class 1's picture is section 0's, flipped to display orientation
    np.testing.assert_array_equal(images[0], class_images(stack[:1], flip_y=False)[0][::-1])
