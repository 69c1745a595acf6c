"""Corrupt MRC headers, truncated stacks and broken TIFFs: the readers every service uses refuse
them by name and field, before allocating what the header promises."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from cryobus.shared.formats.mrc import is_complete, read_header, read_image, read_slab, read_stack, read_tiff_image

from .corrupt import (
    FEW_MB,
    MEM_LIMIT,
    MRC_MODES_ITEMSIZE,
    PROMISED_100_GB,
    corpus_settings,
    fresh_dir,
    mrc_header,
    mrc_promising,
    outcome,
)

HEADER_FIELDS = {"header", "map", "mode", "nsymbt", "nx*ny*nz"}
SEEDS = {
    "topaz": "sstagg__Magellon/CoreService/sandbox/particle_picking_demo/output/24dec03a_00034gr_00005sq_v01_00003hl_00018ex_topaz_ds8.mrc",
    "leginon_int16": "sstagg__Magellon/Sandbox/hole_square_detection_ptolemy/example_images/low_mag/20may08a_16760340.mrc",
    "class_averages": "Conecsion__sppractice/Class2D/job010/run_it025_classes.mrcs",
    "float16_stack": "Conecsion__sppractice/Extract/job009/Movies/20170629_00021_frameImage.mrcs",
}
MAX_DATA = 200_000

INT32 = st.integers(-(2**31), 2**31 - 1)
small_dim = st.integers(-2, 20)


@st.composite
def mrc_files(draw) -> bytes:
    """A header with every word drawn from plausible, edge and garbage values, followed by a data
    block that is exact, a little short or long, or unrelated to what the header promises."""
    nx, ny, nz = (draw(st.one_of(small_dim, small_dim, INT32)) for _ in range(3))
    mode = draw(st.one_of(st.sampled_from(sorted(MRC_MODES_ITEMSIZE)), st.sampled_from([3, 4, 101, -1]), INT32))
    nsymbt = draw(st.one_of(st.just(0), st.integers(-8, 2048), INT32))
    header = mrc_header(
        nx=nx, ny=ny, nz=nz, mode=mode, nsymbt=nsymbt,
        mx=draw(st.one_of(st.none(), st.integers(-2, 64), INT32)),
        cella=draw(st.floats(width=32)),
        map_id=draw(st.one_of(st.sampled_from([b"MAP ", b"MAP\0", b"\0\0\0\0"]), st.binary(min_size=4, max_size=4))),
        machst=draw(st.one_of(st.sampled_from([b"DD\0\0", b"DA\0\0", b"\x11\x11\0\0", b"\0\0\0\0"]),
                              st.binary(min_size=4, max_size=4))),
        exttyp=draw(st.one_of(st.sampled_from([b"\0\0\0\0", b"FEI1", b"FEI2", b"SERI", b"AGAR", b"CCP4", b"MRCO"]),
                              st.binary(min_size=4, max_size=4))),
        nversion=draw(st.sampled_from([0, 20140, 20141, -1])),
        big_endian=draw(st.booleans()),
    )  # fmt: skip
    promised = None
    if mode in MRC_MODES_ITEMSIZE and min(nx, ny, nz) > 0 and nsymbt >= 0:
        promised = nsymbt + nx * ny * nz * MRC_MODES_ITEMSIZE[mode]
    if promised is not None and promised <= MAX_DATA and draw(st.booleans()):
        length = max(0, promised + draw(st.sampled_from([0, 0, 0, -1, 1, -4096, 64])))
    else:
        length = draw(st.integers(0, 4096))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return header + rng.bytes(min(length, MAX_DATA))


def exercise(path: Path) -> None:
    """Every MRC entry point on ``path``: refused by name and field, or read consistently."""
    header, error = outcome(read_header, path, files=path)
    complete, _ = outcome(is_complete, path, files=path)
    assert isinstance(complete, bool)
    if error is not None:
        assert error.field in HEADER_FIELDS, error
        assert not complete
        for fn, kwargs in [(read_image, {}), (read_image, {"section": "sum"}), (read_stack, {}),
                           (read_slab, {"axis": "z", "center": 0})]:  # fmt: skip
            _, again = outcome(fn, path, files=path, **kwargs)
            assert again is not None and again.field in HEADER_FIELDS
        return
    assert complete and header.file_bytes >= header.expected_bytes
    (image, _), error = outcome(read_image, path, files=path)
    assert error is None and image.shape == (header.ny, header.nx) and image.dtype == np.float32
    (total, _), error = outcome(read_image, path, files=path, section="sum")
    assert error is None and total.shape == image.shape
    _, error = outcome(read_image, path, files=path, section=header.nz)
    assert error is not None and error.field == "section"
    (stack, _), error = outcome(read_stack, path, files=path)
    assert error is None and stack.shape == (header.nz, header.ny, header.nx)
    (plane, _), error = outcome(read_slab, path, files=path, axis="y", center=header.ny // 2, thickness=3)
    assert error is None and plane.shape == (header.nz, header.nx)
    _, error = outcome(read_header, path, files=path, max_bytes=header.data_bytes - 1)
    assert error is not None and error.field == "nx*ny*nz"


@corpus_settings(100)
@given(data=mrc_files())
def test_generated_headers_are_read_or_refused_by_field(tmp_path, data):
    path = fresh_dir(tmp_path) / "exposure.mrc"
    path.write_bytes(data)
    exercise(path)


@pytest.fixture(scope="module")
def seed_headers(shared_data: Path) -> dict[str, bytes]:
    """The header and the first data bytes of real files written by Leginon, Topaz and RELION."""
    return {name: (shared_data / rel).read_bytes()[: 1024 + 65536] for name, rel in SEEDS.items()}


@corpus_settings(60)
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    flips=st.lists(st.tuples(st.integers(0, 223), st.integers(0, 255)), max_size=6),
    words=st.lists(st.tuples(st.integers(0, 55), INT32), max_size=3),
    keep=st.one_of(st.none(), st.integers(0, 1024 + 65536)),
)
def test_real_headers_with_flipped_bytes_and_cut_data(tmp_path, seed_headers, seed, flips, words, keep):
    """Real headers with bytes or whole 32-bit words overwritten, and the file cut anywhere."""
    raw = bytearray(seed_headers[seed])
    for offset, value in flips:
        raw[offset] = value
    for index, value in words:
        raw[4 * index : 4 * index + 4] = struct.pack("<i", value)
    if keep is not None:
        del raw[keep:]
    path = fresh_dir(tmp_path) / "stack.mrcs"
    path.write_bytes(bytes(raw))
    exercise(path)


@corpus_settings(40)
@given(data=st.binary(max_size=2048))
def test_files_that_are_not_mrc_at_all(tmp_path, data):
    path = fresh_dir(tmp_path) / "not_an_image.mrc"
    path.write_bytes(data)
    exercise(path)


@pytest.mark.parametrize("mode", sorted(MRC_MODES_ITEMSIZE))
def test_header_promising_100_gb_is_refused_before_allocation(tmp_path, mode):
    path = tmp_path / "huge.mrc"
    path.write_bytes(mrc_promising(PROMISED_100_GB, mode=mode))
    for fn, kwargs in [(read_header, {}), (read_image, {}), (read_image, {"section": "sum"}), (read_stack, {}),
                       (read_slab, {"axis": "y", "center": 0}), (read_header, {"max_bytes": 1 << 50})]:  # fmt: skip
        _, error = outcome(fn, path, files=path, limit=FEW_MB, **kwargs)
        assert error is not None and error.field == "nx*ny*nz", (fn, kwargs, error)
        assert str(path) in str(error)
    assert outcome(is_complete, path, files=path, limit=FEW_MB)[0] is False


def test_extended_header_promising_2_gb_is_not_read_into_memory(tmp_path):
    path = tmp_path / "ext.mrc"
    path.write_bytes(mrc_header(nx=4, ny=4, nz=1, mode=2, nsymbt=2**31 - 1, exttyp=b"FEI1") + b"\0" * 4096)
    _, error = outcome(read_header, path, files=path, limit=FEW_MB)
    assert error is not None and error.field == "nx*ny*nz" and "truncated" in error.reason


# ----------------------------------------------------------------------------------- TIFF


def _tiff(pages: int = 2, mode: str = "I;16", size=(24, 16)) -> bytes:
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 4000, size[::-1]).astype(np.uint16)) for _ in range(pages)]
    if mode != "I;16":
        frames = [f.convert(mode) for f in frames]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


GOOD_TIFFS = {"uint16": _tiff(), "float": _tiff(mode="F", pages=1), "uint8": _tiff(mode="L", pages=3)}


# A corrupt TIFF may cost memory in proportion to its size, never to what its header claims:
# at most 4096 pixels per stored byte (the most any compression achieves, with margin), each
# pixel held as float32 output, decoded frame and float32 copy (12 bytes).
TIFF_BYTES_PER_FILE_BYTE = 12 * 4096


def _exercise_tiff(path: Path) -> None:
    limit = MEM_LIMIT + TIFF_BYTES_PER_FILE_BYTE * path.stat().st_size
    for kwargs in ({}, {"page": "sum"}, {"page": 1}, {"page": -1}):
        image, error = outcome(read_tiff_image, path, files=path, limit=limit, **kwargs)
        if error is None:
            assert image.dtype == np.float32 and image.ndim == 2
        else:
            assert error.field in {"tiff", "page", "width*height"}, error


@corpus_settings(60)
@given(
    seed=st.sampled_from(sorted(GOOD_TIFFS)),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    keep=st.one_of(st.none(), st.integers(0, 3000)),
)
def test_tiffs_with_flipped_bytes_and_cut_short(tmp_path, seed, flips, keep):
    raw = bytearray(GOOD_TIFFS[seed])
    for offset, value in flips:
        if offset < len(raw):
            raw[offset] = value
    if keep is not None:
        del raw[keep:]
    path = fresh_dir(tmp_path) / "movie.tif"
    path.write_bytes(bytes(raw))
    _exercise_tiff(path)


def _tiff_header(width: int, height: int) -> bytes:
    """A little-endian TIFF whose single 16-bit strip claims ``width`` x ``height`` pixels."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 8 + 4), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 2 * width * height % 2**32)]  # fmt: skip
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 64


@pytest.mark.parametrize("side", [2**16 - 1, 160_000, 2**31 - 1])
def test_tiff_promising_gigapixels_is_refused_before_decoding(tmp_path, side):
    path = tmp_path / "huge.tif"
    path.write_bytes(_tiff_header(side, side))
    for kwargs in ({}, {"page": "sum"}):
        _, error = outcome(read_tiff_image, path, files=path, limit=FEW_MB, **kwargs)
        assert error is not None and error.field in {"tiff", "width*height"}, error
