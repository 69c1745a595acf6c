"""The ``ctffind.outputs`` partial: every CTFFIND 4/5 result ``.txt`` in one folder (CryoSPARC's
``J<n>/ctffind_output/``, or a folder where CTFFIND was run by hand).

CTFFIND writes, per micrograph, a diagnostic image and a result summary with the same name and a
``.txt`` suffix (format: ``shared/formats/ctffind.py``), plus a ``_avrot.txt`` rotational average,
which is skipped. The micrograph name is the result file's name, normalised
(``shared/micrograph_names.py``: a CryoSPARC ``<uid>_`` prefix and ``_ctffind4`` / ``_PS``
suffixes are dropped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cryobus.services.metadata.table import CTF_FIT_CTFFIND_CC
from cryobus.shared.errors import InputError
from cryobus.shared.formats.ctffind import read_ctffind_txt
from cryobus.shared.micrograph_names import micrograph_name


def result_files(folder: str | Path) -> list[Path]:
    """The candidate result files of ``folder``: ``*.txt`` (any case) except ``*_avrot.txt`` and
    hidden files, sorted by name."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.suffix.lower() == ".txt"
        and not p.stem.lower().endswith("_avrot")
        and not p.name.startswith(".")
        and p.is_file()
    )


def ctffind_folder_rows(folder: str | Path) -> tuple[pd.DataFrame, float | None, list[tuple[str, str, str | None]]]:
    """CTF columns per micrograph from a folder of CTFFIND result files.

    Per file (one data line = one micrograph): ``mean_defocus`` = (defocus 1 + defocus 2) / 2 Å,
    ``defocus_u_A`` = defocus 1 (#2), ``defocus_v_A`` = defocus 2 (#3), ``defocus_angle_deg`` =
    azimuth of astigmatism (#4, °), ``ctf_fit`` = cross-correlation (#6) with ``ctf_fit_source`` =
    ``ctffind_cross_correlation``, ``est_resolution`` = fit resolution (#7, Å), ``pixel_size_A`` =
    the header's pixel size (Å/px; that of the image CTFFIND fitted, which may be a rescaled power
    spectrum, hence the lowest pixel-size priority in the merge).

    Args:
        folder: the folder (not searched recursively).

    Returns:
        ``(frame sorted by micrograph_name, pixel size, failures)``. The pixel size is the most common
        header pixel size (smallest on a tie) or None. ``failures`` has one ``(file, reason, field)``
        per result file that gave no row: unreadable or corrupt text, no data line, several data lines
        (a tilt series or stack, not one micrograph), or a name another file already gave (both
        are then refused, as neither can be trusted to be that micrograph).

    Raises:
        InputError: ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError("CTFFIND output folder not found", file=str(root))
    rows: list[dict[str, object]] = []
    files: list[str] = []
    failures: list[tuple[str, str, str | None]] = []
    for txt in result_files(root):
        try:
            fits = read_ctffind_txt(txt)
        except InputError as exc:
            failures.append((str(txt), exc.reason, exc.field))
            continue
        if len(fits) != 1:
            failures.append((str(txt), f"{len(fits)} data lines: a tilt series or stack, not one micrograph", "line 2"))
            continue
        fit = fits[0]
        rows.append(
            {
                "micrograph_name": micrograph_name(txt.name),
                "ctf_fit": fit.cross_correlation,
                "est_resolution": fit.fit_resolution_A,
                "mean_defocus": fit.mean_defocus_A,
                "defocus_u_A": fit.defocus_1_A,
                "defocus_v_A": fit.defocus_2_A,
                "defocus_angle_deg": fit.astigmatism_azimuth_deg,
                "ctf_fit_source": CTF_FIT_CTFFIND_CC,
                "pixel_size_A": np.nan if fit.pixel_size_A is None else fit.pixel_size_A,
                "voltage_kV": np.nan if fit.voltage_kV is None else fit.voltage_kV,
                "cs_mm": np.nan if fit.cs_mm is None else fit.cs_mm,
                "amplitude_contrast": np.nan if fit.amplitude_contrast is None else fit.amplitude_contrast,
            }
        )
        files.append(str(txt))

    columns = [
        "micrograph_name", "ctf_fit", "est_resolution", "mean_defocus", "defocus_u_A", "defocus_v_A",
        "defocus_angle_deg", "ctf_fit_source", "pixel_size_A", "voltage_kV", "cs_mm", "amplitude_contrast",
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns)
    frame["micrograph_name"] = frame["micrograph_name"].astype(object)
    dup = frame["micrograph_name"].duplicated(keep=False)
    for file, name in zip(np.array(files, dtype=object)[dup.to_numpy()], frame.loc[dup, "micrograph_name"]):
        failures.append((file, f"micrograph_name {name!r} is also given by another result file", "micrograph_name"))
    frame = frame[~dup].sort_values("micrograph_name", kind="stable").reset_index(drop=True)
    pixel = frame["pixel_size_A"].dropna()
    return frame, (None if pixel.empty else float(pixel.mode().iloc[0])), failures
