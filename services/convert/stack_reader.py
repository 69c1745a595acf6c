"""Gather particle images from MRC stacks by (file, section), in their stored dtype.

Headers are read and checked by :func:`cryobus.shared.formats.mrc.read_header` (truncation,
mode, absurd sizes) before any data is touched; data are memory-mapped, so only the sections a
stack needs are read, whatever the file size. float16 (mode 12) stays float16 — RELION writes
particle stacks that way and CryoLike processes them so; other modes are returned as
float32 (integer modes) or as stored (float32).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cryobus.shared.formats.mrc import MrcHeader

# Open memory maps kept at once (indexed STARs may reference thousands of per-micrograph stacks).
_MAX_OPEN = 64


def images_dtype(headers: Sequence[MrcHeader]) -> np.dtype:
    """Native dtype of a stack gathered from these files: float16 if all are mode 12, else float32."""
    if headers and all(h.mode == 12 for h in headers):
        return np.dtype(np.float16)
    return np.dtype(np.float32)


class StackReader:
    """Reads images out of a fixed list of MRC files (each already checked by ``read_header``).

    Args:
        files: the MRC files.
        headers: their headers, same order.

    Not thread-safe: use one reader per thread.
    """

    def __init__(self, files: Sequence[Path], headers: Sequence[MrcHeader]):
        self.files = list(files)
        self.headers = list(headers)
        self.dtype = images_dtype(self.headers)
        self._maps: OrderedDict[int, np.memmap] = OrderedDict()

    def _map(self, i: int) -> np.memmap:
        mm = self._maps.get(i)
        if mm is not None:
            self._maps.move_to_end(i)
            return mm
        h = self.headers[i]
        mm = np.memmap(self.files[i], dtype=h.dtype, mode="r", offset=h.data_offset, shape=(h.nz, h.ny, h.nx))
        self._maps[i] = mm
        if len(self._maps) > _MAX_OPEN:
            self._maps.popitem(last=False)
        return mm

    def read_into(self, file_index: np.ndarray, section: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out[k] = file[file_index[k]][section[k]]`` for every k.

        Args:
            file_index: int (n,) indices into ``files``.
            section: int (n,) 0-based sections (validated by the caller).
            out: (n, ny, nx) array of :attr:`dtype` (a pinned-memory view works too).
        """
        for f in np.unique(file_index):
            where = np.flatnonzero(file_index == f)
            secs = section[where]
            mm = self._map(int(f))
            if np.array_equal(secs, np.arange(secs[0], secs[0] + secs.size)):
                # A contiguous run (the usual case): one slice, read sequentially.
                block = mm[secs[0] : secs[0] + secs.size]
                if np.array_equal(where, np.arange(where[0], where[0] + where.size)):
                    out[where[0] : where[0] + where.size] = block
                else:
                    out[where] = block
            else:
                out[where] = mm[secs]

    def close(self) -> None:
        """Drop every memory map (also happens at garbage collection)."""
        self._maps.clear()
