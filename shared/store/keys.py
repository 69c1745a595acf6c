"""Artifact keys: POSIX paths relative to a store root that can never escape it.

A key is one or more segments joined by ``/``; each segment uses only ``[A-Za-z0-9._-]`` and
is neither ``.`` nor ``..``. That charset is safe on every file system and S3 implementation,
needs no URL quoting, and cannot collide with the ``name#N`` staging files obstore's
``LocalStore`` writes before renaming (``#`` is not allowed).
"""

from __future__ import annotations

import re

from cryobus.shared.errors import InputError

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._-]")


def check_key(key: str) -> str:
    """Return ``key`` unchanged if it is a valid artifact key, else raise ``InputError``.

    Valid: non-empty, relative (no leading ``/``), no empty, ``.`` or ``..`` segment, only
    ``[A-Za-z0-9._-]`` inside segments. Store methods call this on every key, so a key can
    never address a file outside the store root.

    Raises:
        InputError: the key is empty, absolute, escapes the root or holds other characters.
    """
    if not isinstance(key, str) or not key:
        raise InputError("artifact key is empty", field="key")
    if key.startswith("/"):
        raise InputError(f"artifact key {key!r} is absolute; keys are relative to the store root", field="key")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InputError(f"artifact key {key!r} has an empty, '.' or '..' segment", field="key")
        if not _SEGMENT.fullmatch(segment):
            raise InputError(f"artifact key {key!r} holds characters outside [A-Za-z0-9._-/]", field="key")
    return key


def safe_key(*parts: str) -> str:
    """Join ``parts`` into an artifact key, replacing unsafe characters with ``_``.

    Each part may itself hold ``/`` (``safe_key(dataset, "webp/mic_001.webp")``); every
    segment keeps ``[A-Za-z0-9._-]`` and any other character (space, ``:``, non-ASCII) becomes
    ``_`` — e.g. ``safe_key("my data", "mic 001.mrc") == "my_data/mic_001.mrc"``. Note that two
    names differing only in such characters map to the same key; callers building keys from
    free text should include something distinguishing (a hash) when that matters.

    Refused (``InputError``) rather than sanitised, because no rewrite keeps the intent:
    no parts, an empty part or empty segment (``"a//b"``, trailing ``/``), an absolute part
    (leading ``/``), a ``.`` or ``..`` segment, a NUL byte or a backslash (a Windows path
    separator that could smuggle ``..`` past the ``/`` split).

    Returns:
        The key, e.g. ``"mydataset/webp/mic_001.webp"``; always passes :func:`check_key`.

    Raises:
        InputError: a part cannot be made safe (see above); ``field="key"``.
    """
    if not parts:
        raise InputError("artifact key needs at least one part", field="key")
    segments: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise InputError(f"artifact key part {part!r} is not a string", field="key")
        if not part:
            raise InputError("artifact key part is empty", field="key")
        if "\x00" in part:
            raise InputError(f"artifact key part {part!r} holds a NUL byte", field="key")
        if "\\" in part:
            raise InputError(f"artifact key part {part!r} holds a backslash", field="key")
        if part.startswith("/"):
            raise InputError(f"artifact key part {part!r} is absolute", field="key")
        for segment in part.split("/"):
            if segment in ("", ".", ".."):
                raise InputError(f"artifact key part {part!r} has an empty, '.' or '..' segment", field="key")
            segments.append(_UNSAFE_CHAR.sub("_", segment))
    return check_key("/".join(segments))
