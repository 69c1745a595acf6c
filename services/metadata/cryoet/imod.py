"""IMOD tilt-angle (``.tlt`` / ``.rawtlt``) and transform (``.xf``) files.

Formats (IMOD file-format docs, https://bio3d.colorado.edu/imod/doc/man/xfmodel.html and
``tiltalign``): a ``.tlt`` / ``.rawtlt`` holds one tilt angle (°) per line, in section order
(``.rawtlt`` nominal, ``.tlt`` refined by alignment). A ``.xf`` holds one 2D linear transform
per section, six numbers ``A11 A12 A21 A22 DX DY`` (DX/DY in unbinned pixels of the stack).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryobus.shared.errors import InputError


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="ascii", errors="strict")
    except FileNotFoundError as exc:
        raise InputError("file not found", file=path) from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(f"not a text file: {exc}", file=path) from exc
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_tilt_angles(path: str | os.PathLike) -> list[float]:
    """Read an IMOD ``.tlt`` / ``.rawtlt`` file: one angle per line, section order.

    Returns:
        the angles in degrees, one per section.

    Raises:
        InputError: empty file, or a line that is not exactly one number (``field`` names
            the line, e.g. ``"line 7"``), or an angle outside [-90, 90] °.
    """
    path = Path(path)
    angles: list[float] = []
    for n, words in _lines(path):
        try:
            (angle,) = (float(w) for w in words)
        except ValueError as exc:
            raise InputError(f"expected one tilt angle per line, got {' '.join(words)!r}", file=path, field=f"line {n}") from exc
        if not -90.0 <= angle <= 90.0:
            raise InputError(f"tilt angle {angle} outside [-90, 90] degrees", file=path, field=f"line {n}")
        angles.append(angle)
    if not angles:
        raise InputError("no tilt angles in file", file=path)
    return angles


def read_xf(path: str | os.PathLike) -> np.ndarray:
    """Read an IMOD ``.xf`` transform file.

    Returns:
        float64 array of shape (n_sections, 6): ``A11 A12 A21 A22 DX DY`` per section.

    Raises:
        InputError: empty file or a line without exactly six numbers (``field="line N"``).
    """
    path = Path(path)
    rows: list[list[float]] = []
    for n, words in _lines(path):
        try:
            values = [float(w) for w in words]
        except ValueError as exc:
            raise InputError("non-numeric value in .xf line", file=path, field=f"line {n}") from exc
        if len(values) != 6:
            raise InputError(f"expected 6 numbers per .xf line, got {len(values)}", file=path, field=f"line {n}")
        rows.append(values)
    if not rows:
        raise InputError("no transforms in file", file=path)
    return np.asarray(rows, dtype=np.float64)


def xf_rotation_deg(xf: np.ndarray) -> np.ndarray:
    """In-plane rotation angle of each ``.xf`` transform, degrees.

    Args:
        xf: array (n, 6) from :func:`read_xf`.

    Returns:
        float64 array (n,): ``atan2(A21, A11)`` in degrees (the rotation part of the 2×2
        matrix; for a pure rotation+scale this is the rotation IMOD applied).
    """
    return np.degrees(np.arctan2(xf[:, 2], xf[:, 0]))
