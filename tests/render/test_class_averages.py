"""A RELION Class2D job finishes -> one image per class, numbered as RELION numbers them, with its table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryobus.services.render.class_averages import class_images, read_relion_class_table
from cryobus.shared.errors import InputError
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

    table = read_relion_class_table(class2d / "run_it025_model.star")
    assert len(table) == 50
    assert table["class_number"].tolist() == list(range(1, 51))
    assert abs(table["class_distribution"].sum() - 1.0) < 1e-4
    assert (table["estimated_resolution_A"] > 0).all()

    # Class k is section k-1: the classes RELION reports empty are the all-zero sections,
    # and those (only those) render as flat grey.
    empty = table.loc[table["class_distribution"] == 0, "class_number"].tolist()
    assert empty, "this run has empty classes"
    for number, img in zip(table["class_number"], images):
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


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_class_table_errors_name_file_and_field(tmp_path: Path):
    no_block = _write(tmp_path / "general.star", "data_model_general\n\n_rlnNrClasses 2\n")
    with pytest.raises(InputError) as err:
        read_relion_class_table(no_block)
    assert err.value.field == "data_model_classes" and str(no_block) in str(err.value)

    no_resolution = _write(
        tmp_path / "classes.star",
        "data_model_classes\n\nloop_\n_rlnReferenceImage #1\n_rlnClassDistribution #2\n"
        "000001@run_classes.mrcs 0.6\n000002@run_classes.mrcs 0.4\n",
    )
    with pytest.raises(InputError) as err:
        read_relion_class_table(no_resolution)
    assert err.value.field == "rlnEstimatedResolution"
