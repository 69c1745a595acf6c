"""The permissive MRC reader: real files from the facility's tools, and the broken ones they leave behind."""

from __future__ import annotations

import logging
import struct
import tracemalloc
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from cryobus.shared.errors import InputError
from cryobus.shared.formats.mrc import is_complete, read_header, read_image, read_stack, read_tiff_image

TOPAZ = "sstagg__Magellon/CoreService/sandbox/particle_picking_demo/output/24dec03a_00034gr_00005sq_v01_00003hl_00018ex_topaz_ds8.mrc"
LEGINON = "sstagg__Magellon/Sandbox/hole_square_detection_ptolemy/example_images/low_mag/20may08a_16760340.mrc"
CTF_DIAGNOSTIC = "Conecsion__sppractice/CtfFind/job005/Movies/20170629_00021_frameImage_PS.ctf"
CLASSES = "Conecsion__sppractice/Class2D/job010/run_it025_classes.mrcs"
RELION31 = "ml-struct-bio__cryodrgn/tests/data/relion31.mrcs"
EMPIAR = "ml-struct-bio__cryodrgn/tests/data/empiar_10076_7.mrc"


@pytest.mark.parametrize(
    ("rel", "shape", "mode", "voxel"),
    [
        (TOPAZ, (512, 512, 1), 2, 0.79),
        (LEGINON, (1024, 1024, 1), 1, 1.0),
        (CTF_DIAGNOSTIC, (512, 512, 1), 2, None),
        (CLASSES, (64, 64, 50), 2, 3.54),
    ],
)
def test_real_mrc_header_and_first_image_match_mrcfile(shared_data: Path, rel, shape, mode, voxel):
    path = shared_data / rel
    header = read_header(path)
    assert (header.nx, header.ny, header.nz) == shape
    assert header.mode == mode
    if voxel is not None:
        assert header.voxel_size_A == voxel
    assert header.expected_bytes == header.file_bytes == path.stat().st_size
    assert is_complete(path)

    image, same = read_image(path)
    assert same == header
    assert image.dtype == np.float32 and image.shape == (shape[1], shape[0])
    reference = mrcfile.read(path).reshape(shape[2], shape[1], shape[0])[0].astype(np.float32)
    np.testing.assert_array_equal(image, reference)


def test_float16_particle_stacks_read_per_section_and_summed(relion_project: Path):
    stacks = sorted((relion_project / "Extract/job009/Movies").glob("*.mrcs"))
    assert len(stacks) == 10
    for path in stacks:
        header = read_header(path)
        assert header.mode == 12 and header.dtype == np.float16
        assert (header.nx, header.ny) == (64, 64) and header.voxel_size_A == 3.54
        assert any("nversion" in w for w in header.warnings)
        data = mrcfile.read(path).astype(np.float32)
        last, _ = read_image(path, section=header.nz - 1)
        np.testing.assert_array_equal(last, data[-1])
        total, _ = read_image(path, section="sum")
        np.testing.assert_allclose(total, data.sum(axis=0), rtol=1e-5, atol=1e-3)
        stack, _ = read_stack(path)
        np.testing.assert_array_equal(stack, data)


def test_header_defects_become_warnings_not_errors(shared_data: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="cryobus.shared.formats.mrc"):
        no_map_id = read_header(shared_data / RELION31)
    assert any("Map ID" in w for w in no_map_id.warnings)
    assert any("machine stamp" in w for w in no_map_id.warnings)
    assert any("nversion is 0" in w for w in no_map_id.warnings)
    assert no_map_id.voxel_size_A == 1.0
    assert any("relion31.mrcs" in r.getMessage() and "Map ID" in r.getMessage() for r in caplog.records)
    stack, _ = read_stack(shared_data / RELION31)
    assert stack.shape == (5, 256, 256) and np.isfinite(stack).all()

    zero_voxel = read_header(shared_data / EMPIAR)
    assert zero_voxel.voxel_size_A is None
    assert any("voxel size is 0" in w for w in zero_voxel.warnings)

    assert read_header(shared_data / LEGINON).warnings == []  # a valid MRC2014 file


def _truncated_copy(src: Path, dst: Path, n_bytes: int) -> Path:
    dst.write_bytes(src.read_bytes()[:n_bytes])
    return dst


def test_truncated_file_is_refused_naming_file_and_field(shared_data: Path, tmp_path: Path):
    original = shared_data / TOPAZ
    partial = _truncated_copy(original, tmp_path / "partial.mrc", 1024 + 512 * 300 * 4)
    with pytest.raises(InputError) as err:
        read_header(partial)
    assert err.value.field == "nx*ny*nz"
    assert str(partial) in str(err.value)
    assert "1049600" in err.value.reason and str(1024 + 512 * 300 * 4) in err.value.reason
    with pytest.raises(InputError):
        read_image(partial)
    assert not is_complete(partial)
    assert is_complete(original)


@pytest.mark.parametrize("n_bytes", [0, 10, 1023])
def test_file_shorter_than_a_header_is_incomplete_not_a_crash(shared_data: Path, tmp_path: Path, n_bytes: int):
    partial = _truncated_copy(shared_data / TOPAZ, tmp_path / "early.mrc", n_bytes)
    assert not is_complete(partial)
    with pytest.raises(InputError) as err:
        read_header(partial)
    assert err.value.field == "header"
    assert not is_complete(tmp_path / "missing.mrc")


def _small_mrc(path: Path, data: np.ndarray, voxel_size: float = 1.5) -> Path:
    with mrcfile.new(path, data=data, overwrite=True) as mrc:
        mrc.voxel_size = voxel_size
    return path


def _patch_int32(path: Path, offset: int, *values: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(f"<{len(values)}i", *values))


def test_absurd_dimensions_are_refused_before_any_allocation(tmp_path: Path):
    path = _small_mrc(tmp_path / "absurd.mrc", np.zeros((4, 4), dtype=np.float32))
    _patch_int32(path, 0, 100000, 100000, 100000)  # nx, ny, nz: 4e15 bytes promised
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as err:
            read_header(path)
        with pytest.raises(InputError):
            read_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.field == "nx*ny*nz"
    assert "4000000000000000" in err.value.reason and "limit" in err.value.reason
    assert peak < 1 << 20


def test_absurd_extended_header_is_reported_as_truncation_without_allocating_it(tmp_path: Path):
    path = _small_mrc(tmp_path / "ext.mrc", np.zeros((4, 4), dtype=np.float32))
    _patch_int32(path, 92, 2**31 - 1)  # nsymbt
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as err:
            read_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.field == "nx*ny*nz" and "truncated" in err.value.reason
    assert peak < 1 << 20


def test_non_positive_dimensions_and_unsupported_mode(tmp_path: Path):
    zero = _small_mrc(tmp_path / "zero.mrc", np.zeros((4, 4), dtype=np.float32))
    _patch_int32(zero, 0, 0)
    with pytest.raises(InputError) as err:
        read_header(zero)
    assert err.value.field == "nx*ny*nz"

    complex_map = _small_mrc(tmp_path / "complex.mrc", np.zeros((4, 4), dtype=np.complex64))
    with pytest.raises(InputError) as err:
        read_header(complex_map)
    assert err.value.field == "mode" and "4" in err.value.reason


def test_a_file_that_is_not_an_mrc_is_refused(shared_data: Path, tmp_path: Path):
    mdoc = shared_data / "teamtomo__mdocfile/tests/test_data/tilt_series.mdoc"
    with pytest.raises(InputError) as err:
        read_header(mdoc)
    assert err.value.field == "map" and "not an MRC" in err.value.reason
    assert not is_complete(mdoc)


@pytest.mark.parametrize(
    ("dtype", "mode"),
    [(np.int8, 0), (np.int16, 1), (np.float32, 2), (np.uint16, 6), (np.float16, 12)],
)
def test_supported_modes_round_trip(tmp_path: Path, dtype, mode):
    rng = np.random.default_rng(mode)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        data = rng.integers(info.min, info.max, size=(3, 5, 7), endpoint=True).astype(dtype)
    else:
        data = rng.standard_normal((3, 5, 7)).astype(dtype)
    path = _small_mrc(tmp_path / f"mode{mode}.mrcs", data)
    header = read_header(path)
    assert header.mode == mode and (header.nx, header.ny, header.nz) == (7, 5, 3)
    assert header.voxel_size_A == 1.5
    image, _ = read_image(path, section=2)
    np.testing.assert_array_equal(image, data[2].astype(np.float32))
    total, _ = read_image(path, section="sum")
    np.testing.assert_allclose(total, data.astype(np.float32).sum(axis=0), rtol=1e-6)
    stack, _ = read_stack(path)
    assert stack.dtype == np.float32
    np.testing.assert_array_equal(stack, data.astype(np.float32))
    with pytest.raises(InputError) as err:
        read_image(path, section=3)
    assert err.value.field == "section"


def test_big_endian_file_reads_the_same_values(tmp_path: Path):
    data = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5).astype(">f4")
    path = _small_mrc(tmp_path / "be.mrc", data)
    assert read_header(path).dtype.byteorder == ">"
    image, _ = read_image(path)
    np.testing.assert_array_equal(image, data.astype(np.float32))


@pytest.mark.parametrize(("flags", "expected"), [(0, [255, 128, 0, 127]), (1, [-1, -128, 0, 127])])
def test_imod_mode0_bytes_follow_the_signed_flag(tmp_path: Path, flags, expected):
    path = _small_mrc(tmp_path / "imod.mrc", np.array([[-1, -128, 0, 127]], dtype=np.int8))
    _patch_int32(path, 152, 1146047817, flags)  # imodStamp, imodFlags
    header = read_header(path)
    image, _ = read_image(path)
    assert image.ravel().tolist() == expected
    assert any("unsigned" in w for w in header.warnings) == (flags == 0)


def test_tiff_micrographs_uint16_int16_and_frame_sum(tmp_path: Path):
    unsigned = np.array([[0, 1, 65535], [300, 400, 500]], dtype=np.uint16)
    Image.fromarray(unsigned).save(tmp_path / "u16.tif")
    np.testing.assert_array_equal(read_tiff_image(tmp_path / "u16.tif"), unsigned.astype(np.float32))

    signed = np.array([[-32768, -1, 0], [1, 2, 32767]], dtype=np.int16)
    image = Image.frombuffer("I;16", (3, 2), signed.astype("<i2").tobytes(), "raw", "I;16", 0, 1)
    sample_format = TiffImagePlugin.ImageFileDirectory_v2()
    sample_format[339] = 2  # SampleFormat = signed integer
    image.save(tmp_path / "i16.tif", tiffinfo=sample_format)
    out = read_tiff_image(tmp_path / "i16.tif")
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, signed.astype(np.float32))

    frames = [Image.fromarray(np.full((4, 5), k, dtype=np.uint16)) for k in (1, 2, 3)]
    frames[0].save(tmp_path / "movie.tif", save_all=True, append_images=frames[1:])
    assert read_tiff_image(tmp_path / "movie.tif", page="sum").tolist() == [[6.0] * 5] * 4
    assert read_tiff_image(tmp_path / "movie.tif", page=2)[0, 0] == 3.0
    with pytest.raises(InputError) as err:
        read_tiff_image(tmp_path / "movie.tif", page=3)
    assert err.value.field == "page"


def test_non_tiff_is_refused(shared_data: Path):
    with pytest.raises(InputError) as err:
        read_tiff_image(shared_data / TOPAZ)
    assert err.value.field == "tiff"
