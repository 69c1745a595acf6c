"""Turning the stack paths written in metadata files into files on disk.

CryoLike (main) keeps only the *file name* of each path and joins it to ``folder_mrc`` /
``folder_cryosparc`` (the current directory when empty), so a RELION project converted from
anywhere but its job folder finds nothing (reference §3, "Path resolution"). cryobus:

1. ``folder`` given (CryoLike's role): ``folder / file name``, then ``folder / path as written``;
2. absolute path: as written;
3. ``project_dir`` given: ``project_dir / path``;
4. otherwise the metadata file's folder, then each of its parent folders, first hit wins
   (RELION writes paths relative to the project root, two levels above ``Extract/job009/``).

CryoSPARC's ``>`` prefix and surrounding quotes are stripped first (as CryoLike does).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cryobus.services.convert.inputs.model import row_error


def clean_path(raw: str | bytes) -> str:
    """A metadata path as text: bytes decoded (UTF-8), whitespace, quotes and a leading ``>`` stripped."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    text = text.strip().strip("'\"")
    return text[1:] if text.startswith(">") else text


def candidates(path: str, *, metadata_file: Path, folder: Path | None, project_dir: Path | None) -> list[Path]:
    """Where ``path`` may live, in the order tried (see module docstring)."""
    p = Path(path)
    if folder is not None:
        return [Path(folder) / p.name, Path(folder) / p] if not p.is_absolute() else [Path(folder) / p.name, p]
    if p.is_absolute():
        return [p]
    if project_dir is not None:
        return [Path(project_dir) / p]
    base = metadata_file.resolve().parent
    return [b / p for b in (base, *base.parents)]


def resolve_stack_paths(
    raw_paths: Sequence[str | bytes] | np.ndarray,
    *,
    metadata_file: Path,
    field: str,
    folder: Path | None = None,
    project_dir: Path | None = None,
) -> tuple[list[Path], np.ndarray]:
    """Resolve every distinct stack path of a metadata column.

    Args:
        raw_paths: (n_rows,) paths as stored (``str`` or ``bytes``), one per row.
        metadata_file: the STAR/.cs file (for errors and relative lookup).
        field: the column name, for errors (``rlnImageName``, ``blob/path``).
        folder, project_dir: see module docstring.

    Returns:
        ``(files, file_of_row)``: the distinct resolved files in order of first appearance, and
        int64 (n_rows,) giving each row's index into ``files``.

    Raises:
        InputError: a referenced stack exists nowhere; names the first row referencing it,
            the path as written and where it was looked for.
    """
    if folder is not None and not Path(folder).is_dir():
        raise row_error(f"folder {folder} is not a directory", file=metadata_file, field="folder")
    if project_dir is not None and not Path(project_dir).is_dir():
        raise row_error(f"project folder {project_dir} is not a directory", file=metadata_file, field="project_dir")
    seen: dict[object, int] = {}
    file_of_row = np.empty(len(raw_paths), dtype=np.int64)
    files: list[Path] = []
    for row, raw in enumerate(raw_paths):
        key = raw.tobytes() if isinstance(raw, np.ndarray) else raw
        idx = seen.get(key)
        if idx is None:
            text = clean_path(raw)
            tried = candidates(text, metadata_file=metadata_file, folder=folder, project_dir=project_dir)
            hit = next((c for c in tried if c.is_file()), None)
            if hit is None:
                where = ", ".join(str(c) for c in tried[:4]) + (" ..." if len(tried) > 4 else "")
                raise row_error(
                    f"particle stack {text!r} does not exist (looked for {where})",
                    file=metadata_file, field=field, row=row,
                )
            idx = seen[key] = len(files)
            files.append(hit)
        file_of_row[row] = idx
    return files, file_of_row
