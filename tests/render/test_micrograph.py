"""A micrograph lands -> its preview: binned, robustly contrasted, flipped like NextPYP, encoded reproducibly."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cryobus.services.render.encode import png_bytes, webp_bytes
from cryobus.services.render.micrograph import bin_image, binning_factor, preview
from cryobus.shared.formats.mrc import read_image

TOPAZ = "sstagg__Magellon/CoreService/sandbox/particle_picking_demo/output/24dec03a_00034gr_00005sq_v01_00003hl_00018ex_topaz_ds8.mrc"
LEGINON = "sstagg__Magellon/Sandbox/hole_square_detection_ptolemy/example_images/low_mag/20may08a_16760340.mrc"


@pytest.fixture(scope="module")
def topaz(shared_data: Path) -> np.ndarray:
    return read_image(shared_data / TOPAZ)[0]


@pytest.mark.parametrize(
    ("shape", "max_size", "expected"),
    [
        ((2048, 4096), 1024, (512, 1024)),  # 4096 wide x 2048 high -> 1024 x 512
        ((4096, 2048), 1024, (1024, 512)),
        ((1000, 1100), 1024, (500, 550)),  # factor 2, remainder column cropped
        ((4092, 5760), 1024, (682, 960)),  # K3 frame, factor 6
        ((300, 200), 1024, (300, 200)),  # already small: untouched size
    ],
)
def test_preview_keeps_aspect_ratio_and_caps_long_side(shape, max_size, expected):
    image = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out = preview(image, max_size=max_size)
    assert out.dtype == np.uint8 and out.shape == expected
    assert max(out.shape) <= max_size


def test_binning_is_an_area_average_with_the_remainder_cropped():
    image = np.arange(7 * 9, dtype=np.float32).reshape(7, 9)
    binned = bin_image(image, 3)
    assert binned.shape == (2, 3)
    assert binned[1, 2] == image[3:6, 6:9].mean()
    assert binning_factor((7, 9), 4) == 3


def test_real_micrograph_uses_the_full_grey_range(topaz: np.ndarray):
    out = preview(topaz)
    assert out.shape == (512, 512) and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    # 0.5 % clipped at each end, the rest spread over the range
    assert 0.001 < np.mean(out == 0) < 0.02 and 0.001 < np.mean(out == 255) < 0.02
    assert 40 < out.std() < 90


def test_real_leginon_int16_image_bins_to_512(shared_data: Path):
    image, header = read_image(shared_data / LEGINON)
    assert header.mode == 1
    out = preview(image, max_size=512)
    assert out.shape == (512, 512)
    assert out.min() == 0 and out.max() == 255


def test_preview_puts_mrc_row_zero_at_the_bottom(topaz: np.ndarray):
    ramp = np.repeat(np.arange(64, dtype=np.float32)[:, None], 32, axis=1)  # row 0 darkest
    out = preview(ramp)
    assert out[-1].max() == 0 and out[0].min() == 255
    np.testing.assert_array_equal(preview(topaz), preview(topaz, flip_y=False)[::-1])


def test_a_hot_pixel_does_not_flatten_the_image(topaz: np.ndarray):
    hot = topaz.copy()
    hot[10, 10] = 1e9
    assert abs(float(preview(hot).std()) - float(preview(topaz).std())) < 2


def test_constant_image_is_mid_grey():
    out = preview(np.full((300, 500), 7.25, dtype=np.float32))
    assert out.shape == (300, 500) and np.all(out == 128)


def test_nan_and_inf_pixels_take_the_finite_median(topaz: np.ndarray):
    broken = topaz.copy()
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, 512, 200), rng.integers(0, 512, 200)
    broken[rows[:100], cols[:100]] = np.nan
    broken[rows[100:150], cols[100:150]] = np.inf
    broken[rows[150:], cols[150:]] = -np.inf
    out = preview(broken)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    finite = np.isfinite(broken)
    repaired = np.where(finite, broken, np.median(broken[finite])).astype(np.float32)
    np.testing.assert_array_equal(out, preview(repaired))
    assert np.all(preview(np.full((8, 8), np.nan, dtype=np.float32)) == 128)


def test_encoded_previews_are_byte_for_byte_reproducible(topaz: np.ndarray):
    first, second = preview(topaz), preview(topaz.copy())
    assert webp_bytes(first) == webp_bytes(second)
    assert png_bytes(first) == png_bytes(second)
    assert webp_bytes(first, lossless=False) == webp_bytes(second, lossless=False)
    decoded = Image.open(io.BytesIO(webp_bytes(first)))
    assert decoded.format == "WEBP"
    np.testing.assert_array_equal(np.asarray(decoded.convert("L")), first)  # lossless is exact
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(first)))), first)
    with pytest.raises(ValueError):
        webp_bytes(first.astype(np.float32))
