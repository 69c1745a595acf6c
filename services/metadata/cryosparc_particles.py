"""Particle counts per micrograph from a CryoSPARC particles ``.cs`` file.

Field layout (cryosparc-tools documentation, "Dataset" fields): ``location/micrograph_path``
(bytes, the micrograph the particle was picked on) or, failing that, ``location/micrograph_uid``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cryobus.shared.errors import InputError
from cryobus.shared.formats.cryosparc import read_cs
from cryobus.shared.formats.star import micrograph_name


def _decode(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def particle_counts(path: Path) -> pd.DataFrame:
    """Count particles per micrograph.

    Returns:
        DataFrame with columns ``micrograph_name`` (str) and ``num_particles`` (int64).
    Raises:
        InputError: not a numpy ``.cs`` file, or it has neither ``location/micrograph_path`` nor
            ``location/micrograph_uid`` (field names the first one).
    """
    arr = read_cs(path)
    fields = arr.dtype.names or ()
    if "location/micrograph_path" in fields:
        names = [micrograph_name(_decode(v)) for v in arr["location/micrograph_path"]]
    elif "location/micrograph_uid" in fields:
        names = [str(int(v)) for v in arr["location/micrograph_uid"]]
    else:
        raise InputError("particles .cs has no micrograph reference", file=str(path), field="location/micrograph_path")
    counts = pd.Series(names, dtype="object").value_counts().sort_index()
    return pd.DataFrame({"micrograph_name": counts.index.astype(str), "num_particles": counts.to_numpy(dtype="int64")})
