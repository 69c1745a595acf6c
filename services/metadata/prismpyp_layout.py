"""Bytes of the files prismPYP reads from ``--metadata-path`` (nextPYP builder conventions).

* ``micrograph_metadata.csv``: pandas ``to_csv(index=False)``: comma, header line, ``\\n`` line ends,
  NaN as an empty field, floats in Python's shortest repr.
* ``pixel_size.txt``: ``str(pixel size) + "\\n"``; prismPYP's ``train`` reads ``float(first line)``.
* ``all_micrographs_list.micrographs``: one micrograph name per line (no extension), sorted,
  ``\\n``-terminated; prismPYP's ``train``/``eval`` open ``webp/<name>.webp`` for each line.
The Parquet table is a cryobus extra (same columns, typed).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable

import pandas as pd

from cryobus.shared.errors import InputError


def table_csv_bytes(df: pd.DataFrame) -> bytes:
    """UTF-8 CSV of ``df`` as prismPYP writes it (no index, ``\\n`` line ends, NaN/NA → empty field)."""
    return df.to_csv(index=False, lineterminator="\n").encode("utf-8")


def table_parquet_bytes(df: pd.DataFrame) -> bytes:
    """Parquet (pyarrow, no index) of ``df``; nullable Int64 columns stay nullable integers."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def pixel_size_txt(pixel_size_A: float) -> bytes:
    """``pixel_size.txt`` content: ``str(float(pixel_size_A)) + "\\n"``, e.g. ``b"0.885\\n"`` (Å/px).

    Raises:
        InputError: the pixel size is not a finite number > 0 (field ``pixel_size_A``).
    """
    value = float(pixel_size_A)
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"pixel size must be a finite number > 0 Å/px, got {pixel_size_A!r}", field="pixel_size_A")
    return f"{value}\n".encode("ascii")


def micrographs_list_bytes(names: Iterable[str]) -> bytes:
    """``all_micrographs_list.micrographs`` content: unique ``micrograph_name`` values, code-point sorted,
    one per line, each ``\\n``-terminated (``b""`` for no names).

    Names are written as given (they are already extension-less ``micrograph_name`` values).

    Raises:
        InputError: an empty name, or one containing a line break or ``/`` (field ``micrograph_name``).
    """
    unique = sorted(set(names))
    for name in unique:
        if not name or "\n" in name or "\r" in name or "/" in name:
            raise InputError(f"invalid micrograph name {name!r}", field="micrograph_name")
    return "".join(f"{n}\n" for n in unique).encode("utf-8")
