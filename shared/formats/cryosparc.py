"""CryoSPARC ``.cs`` files: numpy structured arrays saved with ``numpy.save``.

Each row is an item (particle, exposure …); field names are ``<group>/<field>``, e.g. ``uid``,
``blob/path`` (bytes), ``blob/psize_A`` (float32, Å/px), ``ctf/df1_A`` (float32, Å),
``ctf_stats/ice_thickness_rel`` (cryosparc-tools documentation, "Dataset" and field reference).
Loaded with ``allow_pickle=False`` so that a file never executes code (prismPYP does the same).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cryobus.shared.errors import InputError


def read_cs(path: str | Path) -> np.ndarray:
    """Load a CryoSPARC ``.cs`` file.

    Args:
        path: the ``.cs`` file.

    Returns:
        1-D numpy structured array, one row per item, fields as stored (``dtype.names``).

    Raises:
        InputError: the file is missing, is not a numpy ``.npy`` array (reason starts with
            ``not a CryoSPARC .cs (numpy) file:``), holds object (pickled) data, or is not a
            1-D structured array.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("CryoSPARC .cs file not found", file=str(p))
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
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
