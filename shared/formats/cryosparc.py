"""CryoSPARC ``.cs`` files: numpy structured arrays saved with ``numpy.save``.

Each row is an item (particle, exposure …); field names are ``<group>/<field>``, e.g. ``uid``,
``blob/path`` (bytes), ``blob/psize_A`` (float32, Å/px), ``ctf/df1_A`` (float32, Å),
``ctf_stats/ice_thickness_rel`` (cryosparc-tools documentation, "Dataset" and field reference).
Loaded with ``allow_pickle=False`` so that a file never executes code (prismPYP does the same).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cryobus.shared.errors import InputError

_NPY_MAGIC = b"\x93NUMPY"
_CSDAT_MAGIC = b"\x95CSDAT"  # cryosparc-tools' compressed stream format (Dataset.save(format=CSDAT_FORMAT))
_LZ4_MAX_RATIO = 255  # the most LZ4 block compression expands a stored byte into


def check_promised_size(path: str | Path) -> None:
    """Refuse a ``.npy``/``.cs`` whose header promises more data than the file can hold.

    ``np.load`` and cryosparc-tools' ``Dataset.load`` allocate what the header promises before
    they read (a 1 KB file claiming 10¹⁰ rows costs 100 GB); this reads only the headers. Numpy
    format: header of the NPY spec (numpy ``lib.format``), data = prod(shape) · itemsize bytes.
    CSDAT: ``\\x95CSDAT``, u32 header size, JSON header (``length``, ``dtype``), then per field a u32
    column size and the column, LZ4-compressed or raw (cryosparc-tools ``Dataset._load_stream``).
    Other files are left to the loaders' own errors.

    Raises:
        ValueError: the header promises more bytes than the file holds (callers wrap it in their
            InputError); numpy's header parser may also raise SyntaxError or tokenize.TokenError.
    """
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        magic = f.read(6)
        if magic == _NPY_MAGIC:
            f.seek(0)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read(f)
            promised = math.prod(shape) * dtype.itemsize
            if f.tell() + promised > size:
                raise ValueError(f"truncated: the header promises {promised} bytes of data, the file holds {size - f.tell()}")
        elif magic == _CSDAT_MAGIC:
            header_bytes = struct.unpack("<I", f.read(4).ljust(4, b"\xff"))[0]
            if 10 + header_bytes > size:
                raise ValueError(f"truncated: a {header_bytes}-byte CSDAT header in a {size}-byte file")
            header = json.loads(f.read(header_bytes))
            rows, at = int(header["length"]), 10 + header_bytes
            for name, dtype, *shape in header["dtype"] if rows else []:
                f.seek(at)
                column = struct.unpack("<I", f.read(4).ljust(4, b"\xff"))[0]
                at += 4 + column
                promised = rows * np.dtype((dtype, tuple(shape[0]) if shape else ())).itemsize
                if at > size or promised > _LZ4_MAX_RATIO * column + 64:
                    raise ValueError(f"truncated: column {name} promises {promised} bytes, the file holds {column}")


def read_cs(path: str | Path) -> np.ndarray:
    """Load a CryoSPARC ``.cs`` file.

    Args:
        path: the ``.cs`` file.

    Returns:
        1-D numpy structured array, one row per item, fields as stored (``dtype.names``).

    Raises:
        InputError: the file is missing, is not a numpy ``.npy`` array (reason starts with
            ``not a CryoSPARC .cs (numpy) file:``), promises more rows than it holds (refused
            before allocation, :func:`check_promised_size`), holds object (pickled) data, or is
            not a 1-D structured array.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("CryoSPARC .cs file not found", file=str(p))
    try:
        check_promised_size(p)
        arr = np.load(p, allow_pickle=False)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError, EOFError, OSError, SyntaxError, TokenError…
        # numpy treats anything without the NPY magic as a pickle, hence the "pickled" wording.
        raise InputError(f"not a CryoSPARC .cs (numpy) file: {exc}", file=str(p)) from exc
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise InputError("not a CryoSPARC .cs (numpy) file: a .npz archive, not a single array", file=str(p))
    if arr.dtype.names is None or arr.ndim != 1:
        raise InputError(
            "not a CryoSPARC .cs (numpy) file: expected a 1-D structured array, "
            f"got dtype {arr.dtype} shape {arr.shape}",
            file=str(p),
        )
    return arr


def require_fields(arr: np.ndarray, fields: Iterable[str], *, file: str | Path) -> None:
    """Check that the structured array ``arr`` has every field in ``fields``.

    Raises:
        InputError: ``field`` = the first missing field (in the order given), ``file`` = ``file``.
    """
    names = set(arr.dtype.names or ())
    for f in fields:
        if f not in names:
            raise InputError(f"field {f} missing from CryoSPARC dataset", file=str(file), field=f)
