"""prismPYP's metadata columns from NextPYP per-micrograph ``.pkl`` files (pure functions: they read
files, write nothing, touch no bus or store).

NextPYP layout (``pyp/inout/metadata/pyp_metadata.py``, ``LocalMetadata.write``: a ``pickle.dump``
of a dict; /work/shared/reference/prismpyp-metadata.md §1.2): ``pkl/<micrograph>.pkl`` holds

* ``'ctf'``: DataFrame, one column ``ctf``, 14 rows indexed ``mean_df, cc, DF1, DF2, ANGAST, ccc, x,
  y, z, pixel_size, voltage, magnification, cccc, counts`` (CTFFIND: defocus 1/2 Å, astigmatism
  azimuth °, cross-correlation, fit resolution Å; ``pixel_size`` Å/px of the frame average);
* ``'drift'``: DataFrame ``m00, m01, m02, m03, dx, dy``, one row per movie frame (IMOD ``.xf``;
  ``dx, dy`` = translation of each frame in pixels);
* ``'box'`` (only when particle picking ran): DataFrame ``x, y, Xsize, Ysize, inside, selection``.

Trust model. NextPYP writes these files on the facility's own storage, but a watched folder can be
written by any user, so a pkl is *untrusted input*: ``pickle.load`` would run any callable the file
names. :func:`load_pkl` therefore uses an unpickler whose ``find_class`` resolves only the globals in
:data:`ALLOWED_GLOBALS` (numpy array/dtype/scalar reconstruction, pandas DataFrame/Series/Index/
RangeIndex/BlockManager rebuilding, pandas 3 Arrow-backed strings, ``slice``/``bytearray``/
``_codecs.encode``) and refuses every other global — ``os.system``, ``builtins.eval``,
``subprocess.Popen``, ``copyreg._reconstructor`` … — before it is resolved, so it is never called.
None of the allowed globals can run code, import a module, or touch files. Nor may a small pickle
make them allocate gigabytes: ``bytearray`` is built from bytes only, never from a size; numpy's
``_reconstruct`` builds an array of at most :data:`MAX_RECONSTRUCT_BYTES` (numpy itself always
pickles an empty array there, then fills it from in-band bytes); ``ndarray``, ``Index`` and
``RangeIndex`` may only be passed to those rebuilders, never called; a ``RangeIndex`` has at most
:data:`MAX_FRAME_ROWS` rows; ``DataFrame``/``Series`` are only created empty and filled from their
pickled state (never built from arguments, which could broadcast a scalar over a huge index); a
frame used by :func:`pkl_row` must be well formed and hold at most :data:`MAX_FRAME_CELLS` cells.
Nor may a pickle crash numpy: a dtype is built from its type string, never from its pickled state
(which can set flags that corrupt memory, or crash numpy), and an object array's state must hold as
many items as its shape (numpy 2.4 segfaults otherwise). Before unpickling, the opcodes are walked
once (:func:`_check_opcodes`): CPython's own unpickler allocates what a memo index or a byte count
claims before it checks it.
In-band data is bounded by :data:`MAX_PKL_BYTES`. Arrow arrays rebuilt from a pickle are fully
validated before pandas sees them.
"""

from __future__ import annotations

import importlib
import io
import math
import pickle
import pickletools
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy._core.multiarray import _reconstruct as _numpy_reconstruct
from numpy._core.multiarray import scalar as _numpy_scalar
from numpy._core.numeric import _frombuffer as _numpy_frombuffer
from pandas._libs.internals import _unpickle_block as _pandas_unpickle_block
from pandas.core.indexes.base import _new_Index as _pandas_new_index

from cryobus.services.metadata.relion_table import MOTION_UNAVAILABLE
from cryobus.services.metadata.table import COLUMNS, CTF_FIT_CTFFIND_CC, FLOAT_COLUMNS, NEXTPYP_PKL, Partial
from cryobus.shared.errors import InputError, TransientError
from cryobus.shared.micrograph_names import micrograph_name

MOTION_FROM_NEXTPYP_DRIFT = "nextpyp_drift"

# A NextPYP pkl is a few KiB to a few MiB (ctf_avrot profiles dominate); anything larger is not one.
MAX_PKL_BYTES = 256 * 1024 * 1024
# NextPYP frames have at most ~10⁴ rows (box: one per particle) and a handful of columns.
MAX_FRAME_ROWS = 1_000_000
MAX_FRAME_CELLS = 10_000_000
MAX_RECONSTRUCT_BYTES = 1 << 20

# |mean_df − (DF1 + DF2)/2| above this (Å) means the ctf frame contradicts itself (NextPYP writes
# mean_df = (df1 + df2)/2 from the same CTFFIND numbers, pyp/ctf/core.py).
MEAN_DF_TOLERANCE_A = 0.5


def _validated_arrow_array(data: Any) -> Any:
    """pyarrow's own unpickle helper, followed by a full validation: a crafted offsets buffer
    must fail here, not read out of bounds later. The helper itself trusts the tuple's layout (with
    a buffer missing it reads past its list and crashes), so that is checked first."""
    import pyarrow as pa
    from pyarrow.lib import _restore_array

    if not (isinstance(data, tuple) and len(data) == 7):
        raise pickle.UnpicklingError("malformed Arrow array")
    dtype, length, null_count, offset, buffers, children, dictionary = data
    if not (
        isinstance(dtype, pa.DataType) and dtype.num_fields == 0 and all(type(v) is int for v in (length, null_count, offset))
        and isinstance(buffers, list) and len(buffers) == dtype.num_buffers
        and all(b is None or isinstance(b, pa.Buffer) for b in buffers) and not children and dictionary is None
    ):  # fmt: skip
        raise pickle.UnpicklingError(f"malformed Arrow array of type {dtype!r:.40}")
    array = _restore_array(data)
    array.validate(full=True)
    return array


class _ClassArgument:
    """A class a pickle may only hand to an allowed rebuilder (``_reconstruct``, ``_new_Index``): not
    callable and not a type, so ``REDUCE``/``NEWOBJ`` on it fail instead of allocating."""

    def __init__(self, name: str):
        self.name = name


_NDARRAY = _ClassArgument("numpy.ndarray")
_INDEX_CLASSES = {_ClassArgument("pandas.Index"): pd.Index, _ClassArgument("pandas.RangeIndex"): pd.RangeIndex}
_INDEX, _RANGE_INDEX = _INDEX_CLASSES


class _PickledDtype:
    """What ``numpy.dtype`` gives a pickle here. numpy's ``dtype.__setstate__`` trusts its state: a
    crafted one sets flags such as "holds objects" on int64 (memory corruption later) or crashes numpy
    outright. So the state is only read: it must describe a plain dtype (no fields, no sub-array)
    exactly as numpy writes one, and a fresh dtype is built from the type string."""

    def __init__(self, typestr: Any, *_: Any):
        self.typestr = typestr
        self.dtype: np.dtype | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4) and state[2:5] == (None,) * 3):
            raise pickle.UnpicklingError(f"unusable dtype state {state!r:.80}")
        name = str(self.typestr)
        if len(state) == 9:  # datetime64 / timedelta64: (None, (unit, 1, 1, 1))
            meta = state[8]
            if not (isinstance(meta, tuple) and len(meta) == 2 and meta[0] is None and meta[1][1:] == (1, 1, 1)):
                raise pickle.UnpicklingError(f"unusable dtype metadata {meta!r:.80}")
            name += f"[{meta[1][0].decode('ascii')}]"
        dtype = np.dtype(name)
        dtype = dtype.newbyteorder(state[1]) if state[1] in ("<", ">") else dtype
        if dtype.names is not None or dtype.subdtype is not None or state[5:8] not in (
            (-1, -1, dtype.flags), (dtype.itemsize, dtype.alignment, dtype.flags)
        ):
            raise pickle.UnpicklingError(f"dtype state {state!r:.80} does not describe {dtype}")
        self.dtype = dtype


def _dtype(value: Any) -> Any:
    """The dtype a pickle built (a :class:`_PickledDtype`); other values unchanged."""
    if isinstance(value, _PickledDtype):
        if value.dtype is None:
            raise pickle.UnpicklingError("dtype used before its state was set")
        return value.dtype
    return value


class _StagedArray(np.ndarray):
    """What ``_reconstruct`` returns: an empty array whose pickled state is checked before numpy
    applies it. numpy sizes an object array from the state's shape before it reads the state's list,
    and crashes (numpy 2.4: segmentation fault) when the list is shorter."""

    def __setstate__(self, state: Any) -> None:
        at = 2 if len(state) == 5 else 1  # (version, shape, dtype, fortran, data) or (shape, dtype, fortran, data)
        shape, dtype, data = state[at - 1], _dtype(state[at]), state[-1]
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError(f"array state without a dtype: {dtype!r:.80}")
        if dtype.hasobject and (not isinstance(data, list) or len(data) != math.prod(shape)):
            raise pickle.UnpicklingError(f"object array of shape {shape} pickled with other than {math.prod(shape)} items")
        # other dtypes: numpy checks the byte count against the shape before it allocates
        np.ndarray.__setstate__(self, (*state[:at], dtype, *state[at + 1 :]))


def _plain(values: Any) -> Any:
    return values.view(np.ndarray) if isinstance(values, _StagedArray) else values


def _bytearray(*args: Any) -> bytearray:
    if args and isinstance(args[0], int):  # bytearray(n) allocates n bytes; pickles pass bytes or str
        raise pickle.UnpicklingError("bytearray of a given size")
    return bytearray(*args)


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's array rebuilder, for ``numpy.ndarray`` and at most :data:`MAX_RECONSTRUCT_BYTES`."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
    dtype = _dtype(dtype)
    if shape != (0,) and math.prod(shape) * np.dtype(dtype).itemsize > MAX_RECONSTRUCT_BYTES:
        raise pickle.UnpicklingError(f"array of shape {shape} and dtype {dtype!r} larger than {MAX_RECONSTRUCT_BYTES} bytes")
    return _numpy_reconstruct(_StagedArray, shape, dtype)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    return _numpy_frombuffer(buffer, _dtype(dtype), shape, order)


def _scalar(dtype: Any, *args: Any) -> Any:
    return _numpy_scalar(_dtype(dtype), *args)


def _unpickle_block(values: Any, placement: Any, ndim: Any) -> Any:
    return _pandas_unpickle_block(_plain(values), placement, ndim)


def _new_index(cls: Any, state: Any) -> pd.Index:
    """pandas' Index rebuilder, for ``Index``/``RangeIndex`` only; a RangeIndex (lazy, but made
    real by any frame built on it) of at most :data:`MAX_FRAME_ROWS` rows."""
    if cls not in _INDEX_CLASSES or not isinstance(state, dict):
        raise pickle.UnpicklingError("_new_Index of something other than an Index")
    state = {key: _plain(_dtype(value)) for key, value in state.items()}
    if "data" in state and "dtype" in state and state["dtype"] != getattr(state["data"], "dtype", None):
        raise pickle.UnpicklingError("index data pickled with a dtype of its own")  # a conversion could be huge
    index = _pandas_new_index(_INDEX_CLASSES[cls], state)
    if len(index) > MAX_FRAME_ROWS:
        raise pickle.UnpicklingError(f"index of {len(index)} rows, more than {MAX_FRAME_ROWS}")
    return index


def _empty_then_setstate(cls: type) -> type:
    """``cls`` for ``NEWOBJ`` with no arguments (``cls.__new__(cls)``, then ``__setstate__``: how
    pandas pickles frames and series); building one from arguments is refused."""

    class Rebuilt(cls):  # type: ignore[misc, valid-type]
        def __new__(klass, *args: Any, **kwargs: Any) -> Any:
            if args or kwargs:
                raise pickle.UnpicklingError(f"{cls.__name__} built from arguments")
            return cls.__new__(cls)  # an instance of cls itself, so __init__ is never run

    Rebuilt.__name__ = Rebuilt.__qualname__ = cls.__name__
    return Rebuilt


# (module, name) as written in the pickle → (module, attribute) actually resolved, or a callable.
# Found by recording find_class on NextPYP-like dicts (ctf/drift/box/image/ctf_avrot frames, Series,
# numpy scalars) pickled with protocols 2-5 by pandas 2.2/numpy 1.26 (NextPYP's era) and by the
# installed pandas 3/numpy 2; the pandas 2 / numpy 1 spellings are aliases of the current objects.
_TARGETS: dict[tuple[str, str], tuple[str, str] | Callable[..., Any]] = {
    # builtins used by array/BlockPlacement reconstruction (protocol 2 spells them __builtin__).
    ("builtins", "slice"): ("builtins", "slice"),
    ("builtins", "bytearray"): _bytearray,
    ("_codecs", "encode"): ("_codecs", "encode"),  # protocol 2 bytes
    # numpy arrays, dtypes, scalars
    ("numpy", "dtype"): _PickledDtype,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,  # protocol 5
    # pandas frames, series, indexes and their block managers
    ("pandas", "DataFrame"): _empty_then_setstate(pd.DataFrame),
    ("pandas", "Series"): _empty_then_setstate(pd.Series),
    ("pandas", "Index"): _INDEX,
    ("pandas", "RangeIndex"): _RANGE_INDEX,
    ("pandas.core.indexes.base", "_new_Index"): _new_index,
    ("pandas._libs.internals", "_unpickle_block"): _unpickle_block,
    ("pandas.core.internals.managers", "BlockManager"): ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.internals.managers", "SingleBlockManager"): (
        "pandas.core.internals.managers",
        "SingleBlockManager",
    ),
    # pandas 3 strings (the ctf frame's index) are Arrow-backed when pyarrow is installed
    ("pandas", "StringDtype"): ("pandas", "StringDtype"),
    ("pandas.arrays", "ArrowStringArray"): ("pandas.arrays", "ArrowStringArray"),
    ("pyarrow.lib", "type_for_alias"): ("pyarrow.lib", "type_for_alias"),
    ("pyarrow.lib", "py_buffer"): ("pyarrow.lib", "py_buffer"),
    ("pyarrow.lib", "_restore_array"): _validated_arrow_array,
}
_ALIASES: dict[tuple[str, str], tuple[str, str]] = {
    ("__builtin__", "slice"): ("builtins", "slice"),
    ("__builtin__", "bytearray"): ("builtins", "bytearray"),
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("pandas.core.frame", "DataFrame"): ("pandas", "DataFrame"),
    ("pandas.core.series", "Series"): ("pandas", "Series"),
    ("pandas.core.indexes.base", "Index"): ("pandas", "Index"),
    ("pandas.core.indexes.range", "RangeIndex"): ("pandas", "RangeIndex"),
}

#: Every (module, name) a pkl may reference, in the spelling found in pickles.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(_TARGETS) | frozenset(_ALIASES)


_RESOLVED: dict[tuple[str, str], Any] = {}


def _opcode_arguments() -> list[int | None]:
    """Per opcode byte: its fixed argument size (≥ 0), -1 for a text line, -(width + 1) for a
    length-prefixed argument (width 1, 4 or 8 bytes; -5 for a signed 4-byte width), or None."""
    variable = {pickletools.UP_TO_NEWLINE: -1, pickletools.TAKEN_FROM_ARGUMENT1: -2,
                pickletools.TAKEN_FROM_ARGUMENT4U: -5, pickletools.TAKEN_FROM_ARGUMENT4: -6,
                pickletools.TAKEN_FROM_ARGUMENT8U: -9}  # fmt: skip
    table: list[int | None] = [None] * 256
    for op in pickletools.opcodes:
        n = 0 if op.arg is None else op.arg.n
        table[ord(op.code)] = n if n >= 0 else variable[n]
    return table


_OPCODE_ARGUMENTS = _opcode_arguments()
_PUT, _BINPUT, _LONG_BINPUT, _GLOBAL, _INST, _STOP = (ord(c) for c in "pqrci.")


def _check_opcodes(data: bytes) -> None:
    """Walk the opcodes' arguments (not their effects) before the C unpickler sees them.

    CPython's C unpickler (before the fix of CPython gh-115952) grows its memo table to twice a
    PUT index and zeroes it, and allocates what a BINBYTES / BYTEARRAY8 length claims before reading
    it: a 5-byte opcode can cost 64 GB. A memo index at or past the pickle's length, or a counted
    argument longer than the bytes left, is refused here (≈ 0.1 µs per opcode).
    """
    n, pos, arguments = len(data), 0, _OPCODE_ARGUMENTS
    while pos < n:
        code = data[pos]
        size = arguments[code]
        pos += 1
        if size is None:
            raise pickle.UnpicklingError(f"invalid opcode {code:#04x} at byte {pos - 1}")
        if size > 0:
            if (code == _BINPUT or code == _LONG_BINPUT) and int.from_bytes(data[pos : pos + size], "little") >= n:
                raise pickle.UnpicklingError(f"memo index past the end of the pickle at byte {pos - 1}")
            pos += size
        elif size == 0:
            if code == _STOP:
                return
        elif size == -1:
            end = data.find(b"\n", pos)
            if end < 0:
                raise pickle.UnpicklingError("pickle data was truncated")
            if code == _PUT and int(data[pos:end]) >= n:
                raise pickle.UnpicklingError(f"memo index past the end of the pickle at byte {pos - 1}")
            pos = end + 1
            if code == _GLOBAL or code == _INST:  # module and name: two lines
                pos = data.find(b"\n", pos) + 1 or n
        else:
            width = -size - 1 if size != -6 else 4
            length = int.from_bytes(data[pos : pos + width], "little", signed=size == -6)
            pos += width
            if length > n - pos:
                raise pickle.UnpicklingError(f"argument of {length} bytes at byte {pos - width - 1}, {n - pos} left")
            if length > 0:
                pos += length


class _ForbiddenGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; never imports a module the pickle names."""

    def find_class(self, module: str, name: str) -> Any:
        key = _ALIASES.get((module, name), (module, name))
        target = _TARGETS.get(key)
        if target is None:
            raise _ForbiddenGlobal(module, name)
        if callable(target) or isinstance(target, _ClassArgument):
            return target
        resolved = _RESOLVED.get(key)
        if resolved is None:
            resolved = _RESOLVED[key] = getattr(importlib.import_module(target[0]), target[1])
        return resolved

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def load_pkl(path: str | Path) -> dict:
    """Read a NextPYP ``.pkl`` with the restricted unpickler (see the module docstring).

    Args:
        path: the ``.pkl`` file.

    Returns:
        The pickled dict (keys ``'ctf'``, ``'drift'``, ``'box'``, … mapping to DataFrames).

    Raises:
        InputError: ``file`` = ``path``. The file is missing or larger than :data:`MAX_PKL_BYTES`;
            the pickle names a global outside :data:`ALLOWED_GLOBALS` (``field='pickle'``, the reason
            names the global, e.g. ``forbidden global posix.system``); it is not a pickle, is
            truncated or does not rebuild (``field='pickle'``); its top-level object is not a dict.
        TransientError: the file exists but could not be read (I/O error other than not-found).
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_PKL_BYTES:
            raise InputError(f"pkl is {size} bytes, more than {MAX_PKL_BYTES}", file=str(p), field="pickle")
        data = p.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise InputError(f"pkl file not readable: {exc.strerror}", file=str(p)) from exc
    except OSError as exc:
        raise TransientError(f"cannot read {p}: {exc}") from exc
    try:
        _check_opcodes(data)
        obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    except _ForbiddenGlobal as exc:
        raise InputError(f"forbidden global {exc.qualname} in pickle", file=str(p), field="pickle") from None
    except Exception as exc:  # noqa: BLE001 - any failure to rebuild untrusted bytes is bad input
        raise InputError(
            f"not a readable pickle ({type(exc).__name__}: {exc})", file=str(p), field="pickle"
        ) from None
    if not isinstance(obj, dict):
        raise InputError(f"pickle holds a {type(obj).__name__}, expected a dict", file=str(p), field="pickle")
    return obj


def _frame(data: dict, key: str, *, file: str) -> pd.DataFrame | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, pd.DataFrame):
        raise InputError(f"'{key}' is a {type(value).__name__}, expected a DataFrame", file=file, field=key)
    try:
        rows, cols = value.shape
    except Exception as exc:  # noqa: BLE001 - a frame rebuilt without, or from a crafted, state
        raise InputError(f"'{key}' is not a well-formed DataFrame ({type(exc).__name__})", file=file, field=key) from None
    if rows * cols > MAX_FRAME_CELLS:
        raise InputError(f"'{key}' has {rows}x{cols} cells, more than {MAX_FRAME_CELLS}", file=file, field=key)
    return value


def _values(frame: pd.DataFrame, *, file: str, key: str) -> np.ndarray:
    """``frame.to_numpy()``; InputError when the frame's blocks contradict its axes (crafted state)."""
    try:
        return frame.to_numpy()
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"'{key}' is not a well-formed DataFrame ({type(exc).__name__}: {exc})", file=file,
                         field=key) from None  # fmt: skip


def _ctf_values(ctf: pd.DataFrame, *, file: str) -> dict[str, Any]:
    """``{row label: value}`` of the ``ctf`` column (else the first column), as prismPYP's
    ``ctf.loc[ROW].values[0]``; one pass instead of a ``.loc`` per row."""
    columns = [str(c) for c in ctf.columns.tolist()]
    if not columns:
        raise InputError("ctf frame has no column", file=file, field="ctf")
    column = _values(ctf, file=file, key="ctf")[:, columns.index("ctf") if "ctf" in columns else 0]
    labels = [str(label) for label in ctf.index.tolist()]
    if len(set(labels)) != len(labels):
        dup = next(label for label in labels if labels.count(label) > 1)
        raise InputError(f"ctf frame has '{dup}' more than once", file=file, field=f"ctf.{dup}")
    return dict(zip(labels, column.tolist()))


def _ctf_value(values: dict[str, Any], row: str, *, file: str, required: bool = True) -> float:
    """``values[row]`` as float; NaN when optional and absent."""
    if row not in values:
        if required:
            raise InputError(f"ctf frame has no '{row}' row", file=file, field=f"ctf.{row}")
        return math.nan
    try:
        return float(values[row])
    except (TypeError, ValueError):
        raise InputError(f"ctf '{row}' is not a number: {values[row]!r}", file=file, field=f"ctf.{row}") from None


def _numeric_columns(frame: pd.DataFrame, wanted: tuple[str, ...], *, file: str, key: str) -> list[np.ndarray]:
    """The ``wanted`` columns of ``frame`` as float64 arrays (plain numpy: ``frame[col]`` costs
    ~0.1 ms per call, and a table build reads 10,000 pkls)."""
    names = [str(c) for c in frame.columns.tolist()]
    missing = [c for c in wanted if c not in names]
    if missing:
        raise InputError(f"{key} frame has no '{missing[0]}' column", file=file, field=f"{key}.{missing[0]}")
    values = _values(frame, file=file, key=key)
    out = []
    for col in wanted:
        try:
            out.append(np.asarray(values[:, names.index(col)], dtype=np.float64))
        except (TypeError, ValueError):
            raise InputError(f"{key} '{col}' holds non-numbers", file=file, field=f"{key}.{col}") from None
    return out


def _mean_frame_displacement(drift: pd.DataFrame, *, file: str) -> float:
    """mean_i sqrt((dx[i+1]−dx[i])² + (dy[i+1]−dy[i])²) in pixels; NaN with fewer than 2 frames."""
    dx, dy = _numeric_columns(drift, ("dx", "dy"), file=file, key="drift")
    if len(dx) < 2:
        return math.nan
    return float(np.hypot(np.diff(dx), np.diff(dy)).mean())


def _particle_count(box: pd.DataFrame, *, file: str, extract_cls: int) -> int:
    inside, selection = _numeric_columns(box, ("inside", "selection"), file=file, key="box")
    return int(np.count_nonzero((inside == 1) & (selection >= extract_cls)))


def pkl_row(path: str | Path, *, extract_cls: int = 0) -> dict[str, Any]:
    """One metadata-table row from one NextPYP ``.pkl``.

    Mapping (units: Å, Å/px; prismPYP's builder: reference §1.4; docs/metadata-sources.md):

    * ``micrograph_name`` = :func:`~cryobus.shared.micrograph_names.micrograph_name` of the file name
      (``.pkl`` and processing suffixes dropped; prismPYP: ``Path.stem``).
    * ``ctf_fit`` = ctf ``cc`` (CTFFIND cross-correlation), ``ctf_fit_source`` =
      ``ctffind_cross_correlation``; ``est_resolution`` = ``cccc`` Å (CTFFIND fit resolution; NextPYP
      writes 0 when unknown → NaN); ``defocus_u_A``/``defocus_v_A`` = ``DF1``/``DF2``;
      ``mean_defocus`` = (DF1 + DF2)/2 (DF1/DF2 win; ``mean_df`` is only a cross-check);
      ``defocus_angle_deg`` = ``ANGAST`` (NaN if absent); ``pixel_size_A`` = ``pixel_size`` (0 → NaN).
      DF1 = DF2 = 0 is NextPYP's "CTFFIND failed" record: every CTF column is NaN then.
    * ``avg_motion`` = mean frame-to-frame displacement of the ``drift`` track (``dx, dy`` px)
      × ``pixel_size`` → Å per frame, ``motion_source`` = ``nextpyp_drift`` (NaN and
      ``unavailable`` with < 2 frames or no pixel size; NaN and None without ``drift``). prismPYP's
      ``sqrt(mean|dx|² + mean|dy|²)`` px is a different quantity (mean distance from the reference
      frame per axis, not drift per frame) and is not reproduced.
    * ``num_particles`` = ``box`` rows with ``inside == 1`` and ``selection >= extract_cls``
      (NextPYP's own count, ``pyp/inout/metadata/core.py``); no ``box`` key → None (no picking ran,
      unknown — not 0).
    * ``rel_ice_thickness`` = NaN (NextPYP records none; prismPYP's constant 1 is not reproduced).

    Args:
        path: the ``.pkl`` file.
        extract_cls: NextPYP's ``extract_cls`` parameter (not stored in the pkl); 0 keeps every
            particle inside the micrograph that no classification excluded (selection < 0).

    Returns:
        dict with every key of ``table.COLUMNS``.

    Raises:
        InputError: :func:`load_pkl`'s errors; no ``ctf`` (``field='ctf'``) or it is not a
            DataFrame; a missing/non-numeric ``cc``, ``cccc``, ``DF1``, ``DF2`` or ``pixel_size`` row
            (``field='ctf.<row>'``); ``mean_df`` contradicting (DF1+DF2)/2 by more than
            :data:`MEAN_DF_TOLERANCE_A` (``field='ctf.mean_df'``); ``drift`` without ``dx``/``dy``
            or ``box`` without ``inside``/``selection`` (``field='drift.dx'`` …).
    """
    file = str(path)
    data = load_pkl(path)
    ctf = _frame(data, "ctf", file=file)
    if ctf is None:
        raise InputError("pkl has no 'ctf' entry (CTF estimation has not run)", file=file, field="ctf")
    values = _ctf_values(ctf, file=file)
    cc = _ctf_value(values, "cc", file=file)
    cccc = _ctf_value(values, "cccc", file=file)
    df1 = _ctf_value(values, "DF1", file=file)
    df2 = _ctf_value(values, "DF2", file=file)
    pixel = _ctf_value(values, "pixel_size", file=file)
    angast = _ctf_value(values, "ANGAST", file=file, required=False)
    mean_df = _ctf_value(values, "mean_df", file=file, required=False)
    voltage = _ctf_value(values, "voltage", file=file, required=False)
    mean_defocus = (df1 + df2) / 2.0
    if not math.isnan(mean_df) and abs(mean_df - mean_defocus) > MEAN_DF_TOLERANCE_A:
        raise InputError(
            f"mean_df {mean_df} contradicts (DF1 + DF2)/2 = {mean_defocus}", file=file, field="ctf.mean_df"
        )
    pixel_size = pixel if pixel > 0 else math.nan
    fit_failed = df1 == 0 and df2 == 0
    row: dict[str, Any] = {
        "micrograph_name": micrograph_name(Path(path).name),
        "rel_ice_thickness": math.nan,
        "ctf_fit": math.nan if fit_failed else cc,
        "est_resolution": cccc if cccc > 0 and not fit_failed else math.nan,
        "avg_motion": math.nan,
        "num_particles": None,
        "mean_defocus": math.nan if fit_failed else mean_defocus,
        "defocus_u_A": math.nan if fit_failed else df1,
        "defocus_v_A": math.nan if fit_failed else df2,
        "defocus_angle_deg": math.nan if fit_failed else angast,
        "ctf_fit_source": None if fit_failed or math.isnan(cc) else CTF_FIT_CTFFIND_CC,
        "motion_source": None,
        "pixel_size_A": pixel_size,
        # NextPYP's ctf frame has the voltage (kV) but not Cs or the amplitude contrast.
        "voltage_kV": voltage if voltage > 0 and not fit_failed else math.nan,
        "cs_mm": math.nan,
        "amplitude_contrast": math.nan,
    }
    drift = _frame(data, "drift", file=file)
    if drift is not None:
        motion_px = _mean_frame_displacement(drift, file=file)
        motion = motion_px * pixel_size
        row["avg_motion"] = motion
        row["motion_source"] = MOTION_UNAVAILABLE if math.isnan(motion) else MOTION_FROM_NEXTPYP_DRIFT
    box = _frame(data, "box", file=file)
    if box is not None:
        row["num_particles"] = _particle_count(box, file=file, extract_cls=extract_cls)
    return row




def _most_common(values: pd.Series) -> float | None:
    values = values.dropna()
    return None if values.empty else float(values.mode().iloc[0])  # mode() is sorted: smallest on a tie


_Outcome = tuple[str, dict[str, Any] | None, tuple[str, str, str | None] | None]


def _parse_chunk(paths: list[Path], extract_cls: int) -> list[_Outcome]:
    """(path, row, None) or (path, None, failure) per path; module-level so a process pool can run it."""
    out: list[_Outcome] = []
    for path in paths:
        try:
            out.append((str(path), pkl_row(path, extract_cls=extract_cls), None))
        except InputError as exc:
            out.append((str(path), None, (exc.file or str(path), exc.reason, exc.field)))
    return out


def pkl_rows(
    paths: Iterable[str | Path], *, extract_cls: int = 0, executor: Executor | None = None, chunk: int = 500
) -> tuple[pd.DataFrame, float | None, list[tuple[str, str, str | None]]]:
    """The NextPYP partial table from many ``.pkl`` files; a bad file costs only its own row.

    Args:
        paths: the ``.pkl`` files (e.g. ``Path(project, "pkl").glob("*.pkl")``).
        extract_cls: see :func:`pkl_row`.
        executor: where to parse, ``chunk`` files per task (e.g. a long-lived
            ``ProcessPoolExecutor``: unpickling is CPU-bound, ≈ 0.5 ms per pkl); None = this thread.
            The result does not depend on it.

    Returns:
        ``(frame, pixel_size_A, failures)``. ``frame``: one row per good pkl, sorted by
        ``micrograph_name``, columns exactly ``table.COLUMNS`` (floats float64,
        ``num_particles`` nullable Int64, source columns object). ``pixel_size_A``: the most
        common ``pixel_size`` (smallest on a tie; prismPYP takes the first readable pkl's), None
        when no row has one. ``failures``: ``(file, reason, field)`` per pkl that gave no row, in
        sorted path order — :func:`pkl_row`'s InputErrors, and a second pkl with an already used
        ``micrograph_name`` (``field='micrograph_name'``; the first path in sorted order wins).

    Raises:
        TransientError: a file could not be read for a reason other than bad content.
    """
    ordered = sorted(Path(p) for p in paths)
    chunks = [ordered[i : i + chunk] for i in range(0, len(ordered), chunk)]
    if executor is None:
        outcomes = [o for c in chunks for o in _parse_chunk(c, extract_cls)]
    else:
        outcomes = [o for part in executor.map(_parse_chunk, chunks, [extract_cls] * len(chunks)) for o in part]
    rows: list[dict[str, Any]] = []
    failures: list[tuple[str, str, str | None]] = []
    seen: dict[str, str] = {}
    for path, row, failure in outcomes:
        if row is None:
            failures.append(failure)  # type: ignore[arg-type]
            continue
        name = row["micrograph_name"]
        if name in seen:
            failures.append((path, f"micrograph_name {name!r} already given by {seen[name]}", "micrograph_name"))
            continue
        seen[name] = path
        rows.append(row)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for col in FLOAT_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(np.float64)
    frame["num_particles"] = pd.array(frame["num_particles"].tolist(), dtype="Int64")
    for col in ("ctf_fit_source", "motion_source"):
        frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    frame["micrograph_name"] = frame["micrograph_name"].astype(object)
    frame = frame.sort_values("micrograph_name", kind="stable").reset_index(drop=True)
    return frame, _most_common(frame["pixel_size_A"]), failures


def pkl_partial(
    paths: Iterable[str | Path], *, file: str, extract_cls: int = 0, executor: Executor | None = None
) -> tuple[Partial, list[tuple[str, str, str | None]]]:
    """:func:`pkl_rows` wrapped as the ``nextpyp.pkl`` :class:`~cryobus.services.metadata.table.Partial`.

    Args:
        paths: the ``.pkl`` files. file: what the partial names as its input (e.g. the ``pkl/`` folder).
        extract_cls, executor: see :func:`pkl_rows`.

    Returns:
        ``(partial, failures)`` with ``failures`` as in :func:`pkl_rows`. When no pkl has a ``box``
        (picking never ran), the partial has no ``num_particles`` column at all, so the merge
        keeps the counts unknown (``merge_partials`` turns an empty count into 0 as soon as some
        partial has the column).
    """
    frame, pixel_size, failures = pkl_rows(paths, extract_cls=extract_cls, executor=executor)
    if frame["num_particles"].isna().all():
        frame = frame.drop(columns=["num_particles"])
    return Partial(source=NEXTPYP_PKL, frame=frame, file=file, pixel_size_A=pixel_size), failures
