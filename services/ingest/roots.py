"""The folders ingest may read, and the dataset name each one gives.

Ingest only ever reads below its configured roots (DESIGN.md, "Delivery semantics": a path
outside the allowed roots is bad input). The check is made on the *real* path, with every
symlink and ``..`` resolved, so neither a symlink planted inside a root nor a crafted request
(``/data/root/../../etc``) can make ingest read elsewhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from cryobus.shared.errors import InputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _real(path: str | os.PathLike[str]) -> Path:
    """Absolute path with every symlink and ``..`` resolved (the file need not exist)."""
    text = os.fspath(path)
    if "\x00" in text:
        raise InputError("path contains a NUL byte", file=repr(text))
    try:
        return Path(os.path.realpath(text))
    except UnicodeEncodeError as exc:  # e.g. a lone surrogate from a JSON request: no file has that name
        raise InputError(f"path cannot be encoded for the file system: {exc.reason}", file=repr(text)) from None


class AllowedRoots:
    """The set of folders ingest may read.

    Args:
        roots: root folders; each is resolved to its real path once, here, so a root that is
            itself a symlink (``/data -> /gpfs/data``) is honoured.

    Raises:
        InputError: no roots, or a root whose path holds a NUL byte.
    """

    def __init__(self, roots: Iterable[str | os.PathLike[str]]):
        resolved = [_real(r) for r in roots]
        if not resolved:
            raise InputError("no allowed roots configured", field="roots")
        # Longest first, so root_of returns the innermost root when roots nest.
        self._roots: tuple[Path, ...] = tuple(sorted(set(resolved), key=lambda p: len(p.parts), reverse=True))

    @property
    def roots(self) -> tuple[Path, ...]:
        """The real paths of the roots, innermost first."""
        return self._roots

    def _match(self, real: Path) -> Path | None:
        for root in self._roots:
            if real == root or real.is_relative_to(root):
                return root
        return None

    def resolve_inside(self, path: str | os.PathLike[str]) -> Path:
        """The real path of ``path`` (symlinks and ``..`` resolved), if it lies under a root.

        A relative path is taken relative to the current directory, as the OS would. The path
        need not exist (a missing file cannot escape, its real path is still checked).

        Raises:
            InputError: the real path is outside every root (``..`` escape, absolute path
                elsewhere, a symlink pointing outside), or the path holds a NUL byte or a
                character the file system cannot encode. The error's ``file`` is the path as
                given (its ``repr`` for a NUL byte or an unencodable character).
        """
        real = _real(path)
        if self._match(real) is None:
            allowed = ", ".join(str(r) for r in self._roots)
            raise InputError(
                f"outside the allowed roots ({allowed}): resolves to {real}",
                file=os.fspath(path),
            )
        return real

    def root_of(self, path: str | os.PathLike[str]) -> Path:
        """The (innermost) root that holds ``path``'s real path.

        Raises:
            InputError: as :meth:`resolve_inside`.
        """
        real = self.resolve_inside(path)
        root = self._match(real)
        assert root is not None  # resolve_inside checked it
        return root

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, (str, os.PathLike)):
            return False
        try:
            self.resolve_inside(path)  # type: ignore[arg-type]
        except InputError:
            return False
        return True

    def __repr__(self) -> str:
        return f"AllowedRoots({[str(r) for r in self._roots]!r})"


def dataset_name(root: str | os.PathLike[str], override: str | None = None) -> str:
    """The dataset name for a root: ``override`` if given, else the root folder's name.

    The name becomes part of artifact keys and event subjects, so it is sanitised to
    ``[A-Za-z0-9._-]``: runs of other characters become one ``_`` and leading/trailing dots
    are dropped (no hidden or ``..`` names).

    Raises:
        InputError: nothing usable is left (e.g. root ``/`` with no override).
    """
    raw = override if override is not None else Path(os.fspath(root)).name
    name = _UNSAFE.sub("_", raw).strip(".")
    if not name.strip("_-"):
        raise InputError(
            f"cannot derive a dataset name from {raw!r}; pass an explicit dataset name",
            file=os.fspath(root),
            field="dataset",
        )
    return name
