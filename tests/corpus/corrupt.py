"""Builders of bad input (corrupt MRC headers, garbage STAR text, mistyped ``.cs`` arrays, hostile
pickles) and the one check every reader must pass on it.

The check (:func:`outcome`): the reader either returns, or raises :class:`InputError` naming the
file and saying what is wrong; no other exception escapes, and the Python heap never grows by
more than a bound while it runs (``tracemalloc``: numpy and pandas buffers are traced too).

Used by the hypothesis tests of this folder and by the end-to-end corpus run.
"""

from __future__ import annotations

import io
import pickle
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cryobus.shared.errors import InputError

# Every generated file is under 300 KB; a reader may need a few copies of it, never more.
MEM_LIMIT = 24 << 20
# A header that promises 100 GB must be refused from the header alone.
FEW_MB = 4 << 20
PROMISED_100_GB = 100 * 10**9


class MemoryBoundExceeded(AssertionError):
    pass


def outcome(fn: Callable[..., Any], *args: Any, files: Any, limit: int | None = MEM_LIMIT, **kwargs: Any):
    """Run ``fn(*args, **kwargs)``; return ``(result, None)`` or ``(None, InputError)``.

    Fails the test when another exception escapes, when the InputError names no file among
    ``files`` (a path or a collection of paths/folders: a folder accepts any file below it) or
    has an empty reason, or when the traced heap peak exceeds ``limit`` bytes (``None``: not
    traced, for calls that only re-parse what a traced call already read; tracing costs ~4x).
    """
    if limit is not None:
        tracemalloc.start()
    error: InputError | None = None
    result = None
    try:
        result = fn(*args, **kwargs)
    except InputError as exc:
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1] if limit is not None else 0
        if limit is not None:
            tracemalloc.stop()
    if limit is not None and peak > limit:
        raise MemoryBoundExceeded(f"{getattr(fn, '__name__', fn)} allocated {peak} bytes (limit {limit})")
    if error is not None:
        assert_names_file(error, files)
    return result, error


def max_rss() -> int:
    """This process's peak resident memory so far, bytes (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def assert_names_file(error: InputError, files: Any) -> None:
    """The error names one of ``files`` and gives a reason (and the message carries both)."""
    allowed = [Path(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
    assert error.reason and error.reason.strip(), f"empty reason: {error!r}"
    assert error.file is not None, f"no file named: {error}"
    named = Path(error.file)
    assert any(named == f or named.is_relative_to(f) for f in allowed), f"{error} names none of {allowed}"
    assert error.file in str(error)


# ------------------------------------------------------------------------------------ MRC

MRC_MODES_ITEMSIZE = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2}


def mrc_header(
    *,
    nx: int,
    ny: int,
    nz: int,
    mode: int,
    nsymbt: int = 0,
    mx: int | None = None,
    cella: float = 1.0,
    map_id: bytes = b"MAP ",
    machst: bytes = b"\x44\x44\x00\x00",
    exttyp: bytes = b"\x00\x00\x00\x00",
    nversion: int = 20140,
    big_endian: bool = False,
) -> bytes:
    """The 1024-byte MRC2014 header with the given words (values wrap to int32 / float32)."""
    e = ">" if big_endian else "<"

    def i4(v: int) -> bytes:
        return struct.pack(e + "i", ((v + 2**31) % 2**32) - 2**31)

    def f4(v: float) -> bytes:
        return struct.pack(e + "f", np.float32(v).item())

    mx = nx if mx is None else mx
    out = b"".join(
        [i4(nx), i4(ny), i4(nz), i4(mode), i4(0) * 3, i4(mx), i4(ny), i4(nz), f4(cella) * 3, f4(90.0) * 3,
         i4(1), i4(2), i4(3), f4(0.0) * 3, i4(0), i4(nsymbt), b"\0" * 8, exttyp[:4].ljust(4, b"\0"),
         i4(nversion), b"\0" * 84, f4(0.0) * 3, map_id[:4].ljust(4, b"\0"), machst[:4].ljust(4, b"\0"),
         f4(0.0), i4(0), b"\0" * 800]
    )  # fmt: skip
    assert len(out) == 1024
    return out


def mrc_promising(nbytes: int = PROMISED_100_GB, *, mode: int = 2) -> bytes:
    """A well-formed header (plus one line of data) that promises ``nbytes`` of data."""
    itemsize = MRC_MODES_ITEMSIZE[mode]
    side = 4096
    nz = max(1, nbytes // (side * side * itemsize))
    return mrc_header(nx=side, ny=side, nz=nz, mode=mode) + b"\0" * side * itemsize


# ----------------------------------------------------------------------------------- .npy / .cs


def npy_bytes(header: str | bytes, payload: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A ``.npy`` file with a hand-written header dict (numpy format spec, NEP 1)."""
    raw = header.encode("latin1") if isinstance(header, str) else header
    magic = b"\x93NUMPY" + bytes(version)
    size_fmt = "<H" if version == (1, 0) else "<I"
    prefix = len(magic) + struct.calcsize(size_fmt)
    total = prefix + len(raw) + 1
    raw = raw + b" " * ((64 - total % 64) % 64) + b"\n"
    return magic + struct.pack(size_fmt, len(raw)) + raw + payload


def npy_promising(nbytes: int = PROMISED_100_GB) -> bytes:
    """A particle-like ``.cs`` whose header promises ``nbytes`` of rows, with 1 KB of data."""
    rows = nbytes // 16
    fields = "[('uid', '<u8'), ('location/center_x_frac', '<f4'), ('location/center_y_frac', '<f4')]"
    header = f"{{'descr': {fields}, 'fortran_order': False, 'shape': ({rows},), }}"
    return npy_bytes(header, b"\0" * 1024)


def saved(arr: Any, *, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


# ----------------------------------------------------------------------------------- pickles


def pickled_call(module: str, name: str, *args: Any) -> bytes:
    """A protocol-0 pickle whose whole program is ``module.name(*args)`` (args: ints, floats, str,
    None, or bytes already holding a pickle expression)."""
    return _call(module, name, *args) + b"."


def _call(module: str, name: str, *args: Any) -> bytes:
    return f"c{module}\n{name}\n".encode() + _tuple(*args) + b"R"


def _tuple(*items: Any) -> bytes:
    return b"(" + b"".join(_expr(i) for i in items) + b"t"


def _expr(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if v is None:
        return b"N"
    if isinstance(v, bool):
        return b"I01\n" if v else b"I00\n"
    if isinstance(v, int):
        return f"L{v}L\n".encode()
    if isinstance(v, float):
        return f"F{v!r}\n".encode()
    if isinstance(v, str):
        return f"V{v}\n".encode("raw_unicode_escape")
    if isinstance(v, tuple):
        return _tuple(*v)
    if isinstance(v, list):
        return b"(l" + b"".join(_expr(i) + b"a" for i in v)
    if isinstance(v, dict):
        return b"(d" + b"".join(_expr(k) + _expr(i) + b"s" for k, i in v.items())
    raise TypeError(type(v))


def global_ref(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def call_expr(module: str, name: str, *args: Any) -> bytes:
    return _call(module, name, *args)


def hostile_pickles(marker: Path) -> dict[str, bytes]:
    """Pickles that must be refused by NextPYP's restricted unpickler: code execution (each one
    would create ``marker``) and small files that would allocate gigabytes."""
    touch = f"touch {marker}"
    big = 12_500_000_000  # float64 elements: 100 GB
    range_index = call_expr("pandas", "RangeIndex", 0, big)
    # Built the way pandas pickles a RangeIndex, so it passes the allowlist: 10⁶ rows (lazy).
    allowed_index = call_expr("pandas.core.indexes.base", "_new_Index", global_ref("pandas", "RangeIndex"),
                              {"start": 0, "stop": 10**6, "step": 1})
    return {
        "os.system": pickled_call("os", "system", touch),
        "posix.system": pickled_call("posix", "system", touch),
        "subprocess.call": pickled_call("subprocess", "call", ["sh", "-c", touch]),
        "builtins.eval": pickled_call("builtins", "eval", f"__import__('os').system({touch!r})"),
        "copyreg._reconstructor": pickled_call("copyreg", "_reconstructor", global_ref("os", "system"), None, None),
        "getattr chain": pickled_call("builtins", "getattr", global_ref("os", "path"), "exists"),
        "protocol 4 stack global": pickle.dumps(_Reduce("os", "system", (touch,)), protocol=4),
        "INST opcode": f"(S'{touch}'\nios\nsystem\n.".encode(),
        "bytearray of 100 GB": pickled_call("builtins", "bytearray", 100 * 10**9),
        "ndarray of 100 GB": pickled_call("numpy", "ndarray", (big,)),
        "_reconstruct of 100 GB": pickled_call("numpy._core.multiarray", "_reconstruct",
                                               global_ref("numpy", "ndarray"), (big,), "f8"),
        "legacy _reconstruct of 100 GB": pickled_call("numpy.core.multiarray", "_reconstruct",
                                                      global_ref("numpy", "ndarray"), (big,), "f8"),
        "Series filled to 100 GB": pickled_call("pandas", "Series", 1.0, range_index),
        "DataFrame filled to 100 GB": pickled_call("pandas", "DataFrame", None, range_index, ["a"]),
        "Index materialising a range": pickled_call("pandas", "Index", range_index, "float64"),
        "_new_Index materialising a range": pickled_call(
            "pandas.core.indexes.base", "_new_Index", global_ref("pandas", "Index"),
            b"(dV" + b"data\n" + range_index + b"sVdtype\nVfloat64\ns"),
        "RangeIndex NEWOBJ into Index": b"\x80\x02" + global_ref("pandas", "Index")
        + b"(" + range_index + b"Vfloat64\nt\x81.",
        "ndarray NEWOBJ": b"\x80\x02" + global_ref("numpy", "ndarray") + b"((L" + str(big).encode()
        + b"L\ntt\x81.",
        "RangeIndex of 10^12 rows via _new_Index": pickled_call(
            "pandas.core.indexes.base", "_new_Index", global_ref("pandas", "RangeIndex"), {"start": 0, "stop": 10**12}),
        "DataFrame from arguments over an allowed index": pickled_call(
            "pandas", "DataFrame", None, allowed_index, [f"c{i}" for i in range(12_500)]),
        "Series from arguments over an allowed index": pickled_call("pandas", "Series", 1.0, allowed_index),
        "subarray dtype of 100 GB": pickled_call("numpy._core.multiarray", "_reconstruct", global_ref("numpy", "ndarray"),
                                                 (100,), call_expr("numpy", "dtype", ("f8", (2**27,)))),
        # CPython's unpickler itself: a memo index or a byte count it allocates for before checking.
        "memo index 2^32-1": b"\x80\x02Nr\xff\xff\xff\xff.",
        "text memo index 10^9": b"Np1000000000\n.",
        "BINBYTES8 of 8 GB": b"\x80\x04\x8e" + (8 << 30).to_bytes(8, "little") + b"x" * 16 + b".",
        "BYTEARRAY8 of 8 GB": b"\x80\x05\x96" + (8 << 30).to_bytes(8, "little") + b"x" * 16 + b".",
        "BINBYTES of 4 GB": b"\x80\x03B\xff\xff\xff\xff" + b"x" * 16 + b".",
        "numpy scalar of a 2 GB dtype": pickled_call("numpy._core.multiarray", "scalar",
                                                     call_expr("numpy", "dtype", ("f8", (2**28 - 1,))), b"C\x00"),
    }


class _Reduce:
    def __init__(self, module: str, name: str, args: tuple):
        self.target = (module, name)
        self.args = args

    def __reduce__(self):
        import importlib

        return getattr(importlib.import_module(self.target[0]), self.target[1]), self.args


# ----------------------------------------------------------------------------------- hypothesis

def corpus_settings(examples: int = 60):
    """Modest example counts, no deadline (a first call may import a library): the whole corpus
    runs in well under a minute. ``CRYOBUS_CORPUS_EXAMPLES`` scales every count for a longer hunt."""
    import os

    from hypothesis import HealthCheck, settings

    scale = float(os.environ.get("CRYOBUS_CORPUS_EXAMPLES", "1"))
    return settings(
        max_examples=max(1, int(examples * scale)),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def fresh_dir(parent: Path) -> Path:
    """A new empty folder under ``parent`` (one per hypothesis example)."""
    import tempfile

    return Path(tempfile.mkdtemp(dir=parent))
