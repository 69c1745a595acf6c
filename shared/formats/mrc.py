"""MRC images and stacks (and 16-bit TIFF micrographs), read permissively and safely.

Format: MRC2014 (Cheng et al. 2015, J. Struct. Biol. 192:146-150;
https://www.ccpem.ac.uk/mrc_format/mrc2014.php). Header parsing is mrcfile's, in permissive
mode; this module adds what a service needs on top of it:

* header defects that real files carry (no ``MAP `` id, machine stamp 0, ``nversion`` 0,
  voxel size 0) become warnings, logged and listed in :attr:`MrcHeader.warnings`;
* defects that make the data unreadable (truncated file, unsupported mode, non-positive or
  absurd dimensions, not an MRC at all) raise :class:`~cryobus.shared.errors.InputError`
  naming the file and the header field, *before* any data is allocated;
* data is memory-mapped and only the requested section is converted to float32.

Supported modes: 0 (int8), 1 (int16), 2 (float32), 6 (uint16), 12 (float16). Mode 0 is
signed per MRC2014 (and mrcfile); IMOD-written files that carry the IMOD stamp without the
"signed bytes" flag are read as unsigned, as IMOD itself does (IMOD ``mrc_head`` docs:
``imodStamp`` 1146047817 at byte 152, ``imodFlags`` bit 0 = bytes are signed).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from mrcfile import utils as mrc_utils
from mrcfile.mrcinterpreter import MrcInterpreter

from cryobus.shared.errors import InputError

log = logging.getLogger(__name__)

HEADER_BYTES = 1024
DEFAULT_MAX_BYTES = 8 << 30
# Even compressed, a TIFF holds at most ~2600 pixels per stored byte (LZW on a blank 4-bit image;
# deflate stops at 1032:1 per byte): a header claiming more is corrupt, refused before allocation.
_TIFF_PIXELS_PER_BYTE = 4096
SUPPORTED_MODES: dict[int, str] = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
_IMOD_STAMP = 1146047817
# imodStamp / imodFlags sit at bytes 152 / 156, i.e. inside mrcfile's ``extra2`` (bytes 112-195).
_IMOD_STAMP_AT = 152 - 112
_IMOD_FLAGS_AT = 156 - 112


@dataclass(frozen=True)
class MrcHeader:
    """What a service needs to know about an MRC file before touching its data.

    Attributes:
        nx, ny, nz: columns, rows, sections (pixels; ``nz`` is the number of images in a stack).
        mode: MRC data mode (0, 1, 2, 6 or 12).
        dtype: numpy dtype of the stored values, with the file's byte order.
        voxel_size_A: pixel size in Å/px along x (``cella.x / mx``); ``None`` when the header says 0.
        data_offset: byte offset of the data block (1024 + extended header ``nsymbt``).
        expected_bytes: ``data_offset + nx*ny*nz*itemsize``, the size a complete file has.
        file_bytes: the file's size on disk when the header was read.
        warnings: header defects tolerated while reading (also logged).
    """

    nx: int
    ny: int
    nz: int
    mode: int
    dtype: np.dtype
    voxel_size_A: float | None
    data_offset: int
    expected_bytes: int
    file_bytes: int
    warnings: list[str] = field(default_factory=list)

    @property
    def data_bytes(self) -> int:
        """Size of the data block the header promises, in bytes."""
        return self.expected_bytes - self.data_offset


class _BoundedHeaderReader(MrcInterpreter):
    """mrcfile's header reader that never allocates more bytes than the file holds.

    mrcfile allocates ``bytearray(nsymbt)`` before reading the extended header; a corrupt
    ``nsymbt`` must not cost gigabytes. Overriding ``_read_bytearray_from_stream`` is the
    extension point mrcfile documents for custom streams.
    """

    def __init__(self, stream: io.BufferedReader, file_bytes: int):
        # The subclassing pattern mrcfile's MrcInterpreter docstring describes.
        super().__init__(permissive=True)
        self._read_only = True
        self._file_bytes = file_bytes
        self._iostream = stream
        self._read(header_only=True)

    def _read_bytearray_from_stream(self, number_of_bytes):
        remaining = max(0, self._file_bytes - self._iostream.tell())
        return super()._read_bytearray_from_stream(max(0, min(int(number_of_bytes), remaining)))


def _warn(path: Path, found: list[str], message: str) -> None:
    found.append(message)
    log.warning("%s: %s", path, message)


def read_header(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES) -> MrcHeader:
    """Read and check an MRC header without reading (or allocating) the data.

    Args:
        path: an ``.mrc`` / ``.mrcs`` / ``.ctf`` / ``.st`` file.
        max_bytes: largest data block (``nx*ny*nz*itemsize``, bytes) accepted; a header that
            promises more is refused before anything is allocated (default 8 GiB).

    Returns:
        The checked :class:`MrcHeader`; tolerated defects (no ``MAP `` id, unknown machine
        stamp, ``nversion`` 0, voxel size 0, anisotropic pixels) are in ``.warnings``.

    Raises:
        InputError: field ``header`` (shorter than 1024 bytes), ``map`` (not an MRC file),
            ``mode`` (unsupported mode), ``nsymbt`` (negative extended header),
            ``nx*ny*nz`` (non-positive dimensions, more than ``max_bytes`` promised, or the
            file is shorter than the header promises).
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    file_bytes = path.stat().st_size
    if file_bytes < HEADER_BYTES:
        raise InputError(
            f"file has {file_bytes} bytes, shorter than the {HEADER_BYTES}-byte MRC header",
            file=str(path),
            field="header",
        )
    found: list[str] = []
    with open(path, "rb") as stream, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = _BoundedHeaderReader(stream, file_bytes)
        h = reader.header
        nx, ny, nz, mode = int(h.nx), int(h.ny), int(h.nz), int(h.mode)
        nsymbt = int(h.nsymbt)
        has_map_id = bytes(h.map)[:3] == b"MAP"
        nversion = int(h.nversion)
        mx, cella_x, my, cella_y = int(h.mx), float(h.cella.x), int(h.my), float(h.cella.y)
        extra2 = bytes(h.extra2)
        byte_order = h.mode.dtype.byteorder
        reader.close()
    for w in caught:
        message = str(w.message)
        # An extended-header shortfall is reported below as truncation, with the numbers.
        if "extended header" not in message:
            _warn(path, found, f"mrcfile: {message}")

    plausible = mode in SUPPORTED_MODES and nx > 0 and ny > 0 and nz > 0
    if not has_map_id and not plausible:
        raise InputError(
            f"not an MRC file: no 'MAP ' id and an implausible header (mode {mode}, size {nx}x{ny}x{nz})",
            file=str(path),
            field="map",
        )
    if mode not in SUPPORTED_MODES:
        supported = ", ".join(f"{m} ({t})" for m, t in SUPPORTED_MODES.items())
        raise InputError(f"unsupported MRC mode {mode}; supported: {supported}", file=str(path), field="mode")
    if nx <= 0 or ny <= 0 or nz <= 0:
        raise InputError(f"non-positive dimensions {nx}x{ny}x{nz}", file=str(path), field="nx*ny*nz")
    if nsymbt < 0:
        raise InputError(f"negative extended header size {nsymbt}", file=str(path), field="nsymbt")

    dtype = np.dtype(SUPPORTED_MODES[mode]).newbyteorder(byte_order)
    if mode == 0 and _imod_unsigned_bytes(extra2, byte_order):
        dtype = np.dtype(np.uint8)
        _warn(path, found, "mode 0 written by IMOD without the signed-bytes flag: read as unsigned (uint8)")
    data_bytes = nx * ny * nz * dtype.itemsize  # Python ints: no overflow
    if data_bytes > max_bytes:
        raise InputError(
            f"header promises {nx}x{ny}x{nz} values of {dtype.itemsize} bytes = {data_bytes} bytes, "
            f"more than the limit of {max_bytes} bytes",
            file=str(path),
            field="nx*ny*nz",
        )
    data_offset = HEADER_BYTES + nsymbt
    expected = data_offset + data_bytes
    if file_bytes < expected:
        raise InputError(
            f"file is truncated: header promises {expected} bytes ({HEADER_BYTES} header + {nsymbt} extended "
            f"header + {nx}x{ny}x{nz}x{dtype.itemsize} data) but the file has {file_bytes} bytes",
            file=str(path),
            field="nx*ny*nz",
        )

    if not has_map_id and not any("Map ID" in w for w in found):
        _warn(path, found, "no 'MAP ' id string in the header")
    if nversion == 0:
        _warn(path, found, "nversion is 0 (file predates or ignores MRC2014)")
    voxel_x = cella_x / mx if mx > 0 else 0.0
    voxel_y = cella_y / my if my > 0 else 0.0
    if voxel_x <= 0 or not np.isfinite(voxel_x):
        _warn(path, found, "voxel size is 0 (cella / mx): pixel size unknown")
        voxel_size: float | None = None
    else:
        # Shortest decimal that round-trips the header's float32 (3.54, not 3.5399999618530273).
        voxel_size = float(str(np.float32(voxel_x)))
        if voxel_y > 0 and abs(voxel_y - voxel_x) > 1e-4 * voxel_x:
            _warn(path, found, f"anisotropic pixels x={voxel_x:g} y={voxel_y:g} Å; using x")
    return MrcHeader(
        nx=nx,
        ny=ny,
        nz=nz,
        mode=mode,
        dtype=dtype,
        voxel_size_A=voxel_size,
        data_offset=data_offset,
        expected_bytes=expected,
        file_bytes=file_bytes,
        warnings=found,
    )


def _imod_unsigned_bytes(extra2: bytes, byte_order: str) -> bool:
    """True when IMOD's stamp is present and its "bytes are signed" flag is clear."""
    order = "big" if byte_order == ">" else "little"
    stamp = int.from_bytes(extra2[_IMOD_STAMP_AT : _IMOD_STAMP_AT + 4], order, signed=True)
    flags = int.from_bytes(extra2[_IMOD_FLAGS_AT : _IMOD_FLAGS_AT + 4], order, signed=True)
    return stamp == _IMOD_STAMP and not flags & 1


def is_complete(path: str | os.PathLike) -> bool:
    """True when the MRC header is readable and the file holds all the data it promises.

    For ingest: a file still being written (short header, short data) gives ``False``,
    never an exception. A missing file also gives ``False``.
    """
    try:
        header = read_header(path)
    except (InputError, FileNotFoundError):
        return False
    return header.file_bytes >= header.expected_bytes


def _memmap(path: Path, header: MrcHeader) -> np.memmap:
    """The data block as a read-only (nz, ny, nx) memmap (nothing is read yet)."""
    return np.memmap(
        path, dtype=header.dtype, mode="r", offset=header.data_offset, shape=(header.nz, header.ny, header.nx)
    )


def read_image(
    path: str | os.PathLike,
    *,
    section: int | Literal["sum"] = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[np.ndarray, MrcHeader]:
    """Read one image of an MRC file as float32.

    Args:
        path: MRC file (a micrograph, a power spectrum, a stack or a movie).
        section: 0-based section index, or ``"sum"`` for the sum over all sections (a movie's
            frame sum); memory stays at one section plus the float32 result.
        max_bytes: see :func:`read_header`.

    Returns:
        ``(image, header)``: image float32 of shape (ny, nx), row 0 = first row in the file
        (y = 0, the *bottom* in IMOD/RELION displays); values in the file's units.

    Raises:
        InputError: as :func:`read_header`; field ``section`` when the section does not exist.
    """
    path = Path(path)
    header = read_header(path, max_bytes=max_bytes)
    data = _memmap(path, header)
    try:
        if section == "sum":
            out = np.zeros((header.ny, header.nx), dtype=np.float32)
            for z in range(header.nz):
                out += data[z]
            return out, header
        if not isinstance(section, (int, np.integer)) or not 0 <= section < header.nz:
            raise InputError(
                f"section {section!r} does not exist (file has {header.nz} sections)", file=str(path), field="section"
            )
        return np.array(data[int(section)], dtype=np.float32), header
    finally:
        del data  # close the mapping now, not at garbage collection


def read_stack(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[np.ndarray, MrcHeader]:
    """Read every section of an MRC stack (e.g. RELION ``.mrcs`` class averages) as float32.

    Args:
        path: MRC stack file.
        max_bytes: see :func:`read_header`; also bounds the float32 copy (``4*nx*ny*nz``).

    Returns:
        ``(stack, header)``: stack float32 of shape (nz, ny, nx); section k is RELION's image k+1.

    Raises:
        InputError: as :func:`read_header`.
    """
    path = Path(path)
    header = read_header(path, max_bytes=max_bytes)
    if header.nx * header.ny * header.nz * 4 > max_bytes:
        raise InputError(
            f"{header.nx}x{header.ny}x{header.nz} as float32 exceeds the limit of {max_bytes} bytes",
            file=str(path),
            field="nx*ny*nz",
        )
    data = _memmap(path, header)
    try:
        return np.array(data, dtype=np.float32), header
    finally:
        del data


def read_tiff_image(
    path: str | os.PathLike,
    *,
    page: int | Literal["sum"] = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Read a greyscale TIFF micrograph (8/16-bit integer or 32-bit float) as float32, via Pillow.

    Args:
        path: ``.tif``/``.tiff`` file; multi-page files (movies) are supported.
        page: 0-based page index, or ``"sum"`` for the sum over all pages.
        max_bytes: largest float32 image (``4*width*height``) accepted, checked before decoding.

    Returns:
        float32 array of shape (ny, nx); row 0 is the first row stored in the file.

    Raises:
        InputError: field ``tiff`` (not a readable TIFF / unsupported pixel mode), ``page``
            (page does not exist), ``width*height`` (image larger than ``max_bytes``, or more
            pixels than the file can hold even compressed).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    greyscale = {"L", "I;16", "I;16B", "I;16L", "I;16S", "I;16BS", "I;16LS", "I", "F"}
    try:
        with Image.open(path) as im:
            if im.format != "TIFF":
                raise InputError(f"not a TIFF file (Pillow sees {im.format})", file=str(path), field="tiff")
            if im.mode not in greyscale:
                raise InputError(f"unsupported TIFF pixel mode {im.mode}", file=str(path), field="tiff")
            width, height = im.size
            if 4 * width * height > max_bytes:
                raise InputError(
                    f"{width}x{height} image exceeds the limit of {max_bytes} bytes", file=str(path), field="width*height"
                )
            file_bytes = path.stat().st_size
            if width * height > _TIFF_PIXELS_PER_BYTE * file_bytes:
                raise InputError(
                    f"{width}x{height} pixels cannot be stored in a {file_bytes}-byte TIFF", file=str(path),
                    field="width*height",
                )
            n_pages = getattr(im, "n_frames", 1)
            pages = range(n_pages) if page == "sum" else [page]
            out = np.zeros((height, width), dtype=np.float32)
            for p in pages:
                if not isinstance(p, (int, np.integer)) or not 0 <= p < n_pages:
                    raise InputError(f"page {p!r} does not exist (file has {n_pages} pages)", file=str(path), field="page")
                im.seek(int(p))
                out += np.asarray(im).astype(np.float32)
            return out
    except (InputError, FileNotFoundError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - on a corrupt TIFF Pillow raises OSError, TypeError, KeyError, struct.error…
        raise InputError(f"cannot decode TIFF: {type(err).__name__}: {err}", file=str(path), field="tiff") from err


def read_slab(
    path: str | os.PathLike,
    *,
    axis: Literal["z", "y"],
    center: int,
    thickness: int = 1,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[np.ndarray, MrcHeader]:
    """Mean of ``thickness`` planes of a volume around plane ``center``, as float32.

    Args:
        path: MRC volume (a tomogram ``.mrc``/``.rec``).
        axis: ``"z"`` averages sections (xy planes, result (ny, nx)); ``"y"`` averages rows
            (xz planes, result (nz, nx)), for volumes written with the thin axis along y (IMOD
            ``tilt`` output before ``trimvol -rx``).
        center: 0-based index of the middle plane along ``axis``.
        thickness: planes averaged (clipped to the volume).
        max_bytes: see :func:`read_header`.

    Returns:
        ``(plane, header)``; only the planes averaged are read.

    Raises:
        InputError: as :func:`read_header`; field ``section`` when ``center`` is outside the volume.
    """
    path = Path(path)
    header = read_header(path, max_bytes=max_bytes)
    n = header.nz if axis == "z" else header.ny
    if not 0 <= center < n:
        raise InputError(f"plane {center} outside the volume (0..{n - 1} along {axis})", file=str(path), field="section")
    lo = max(0, center - thickness // 2)
    hi = min(n, lo + max(1, thickness))
    data = _memmap(path, header)
    try:
        block = data[lo:hi] if axis == "z" else data[:, lo:hi, :]
        return np.asarray(block, dtype=np.float32).mean(axis=0 if axis == "z" else 1), header
    finally:
        del data
