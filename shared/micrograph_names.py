"""One micrograph, one name: how cryobus names micrographs across RELION, CryoSPARC, NextPYP
and CTFFIND files, so their rows join by name (never by row position) and a preview is named
exactly like its row in the metadata table.

The rule (applied in this order; documented in docs/metadata-columns.md):

1. keep the file name only (POSIX or Windows separators), drop a RELION ``:mrc`` type suffix;
2. drop known file extensions, repeatedly (``.mrc``, ``.mrcs``, ``.tif``, ``.tiff``, ``.eer``,
   ``.pkl``, ``.ctf``, ``.txt``, ``.cs``, ``.star``, ``.webp``, ``.png``, ``.jpg``);
3. drop a CryoSPARC uid prefix: ``<uid>_`` when the row's uid is known, otherwise a leading run
   of 12 or more digits followed by ``_`` (CryoSPARC uids are random 64-bit integers, 15–20
   digits; an 8-digit date such as ``20170629_`` is never taken for one — prismPYP's
   ``\\d+_`` split cuts names like ``FoilHole_12345_Data_678`` in the middle, a bug we avoid);
4. drop processing suffixes, repeatedly, longest first: ``_patch_aligned_doseweighted``,
   ``_patch_aligned``, ``_rigid_aligned``, ``_doseweighted``, ``_DW``, ``_noDW``, ``_ctffind4``,
   ``_ctffind``, ``_PS``.

``20170629_00021_frameImage`` stays as it is; ``J9/motioncorrected/
012345678901234_mic_10_patch_aligned_doseweighted.mrc`` becomes ``mic_10``.
"""

from __future__ import annotations

import re

_EXTENSIONS = (".mrcs", ".mrc", ".tiff", ".tif", ".eer", ".pkl", ".ctf", ".txt", ".cs", ".star", ".webp", ".png", ".jpg")
_SUFFIXES = (
    "_patch_aligned_doseweighted",
    "_patch_aligned",
    "_rigid_aligned",
    "_doseweighted",
    "_ctffind4",
    "_ctffind",
    "_noDW",
    "_DW",
    "_PS",
)
_UID_PREFIX = re.compile(r"^\d{12,}_")


def micrograph_name(path: str | bytes, *, uid: int | str | None = None) -> str:
    """The normalised ``micrograph_name`` of a file path or name (see the module docstring).

    Args:
        path: a path or bare name, ``str`` or UTF-8 ``bytes`` (CryoSPARC ``.cs`` paths are bytes).
        uid: the CryoSPARC row uid, when known; then exactly ``f"{uid}_"`` is stripped.

    Returns:
        The name; never empty (if normalisation would empty it, the file name without its
        extension is returned).
    """
    text = path.decode("utf-8", "replace") if isinstance(path, bytes) else str(path)
    base = re.split(r"[\\/]", text.strip())[-1]
    base = base.split(":")[0] if base.endswith((":mrc", ":mrcs")) else base
    name = base
    changed = True
    while changed:
        changed = False
        for ext in _EXTENSIONS:
            if name.lower().endswith(ext) and len(name) > len(ext):
                name = name[: -len(ext)]
                changed = True
    stem = name
    if uid is not None and name.startswith(f"{uid}_"):
        name = name[len(f"{uid}_") :]
    else:
        name = _UID_PREFIX.sub("", name, count=1)
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                changed = True
    return name or stem
