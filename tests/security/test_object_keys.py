"""Hostile object keys never leave the store root.

tests/store has the named cases (``..``, absolute, NUL, backslash); here any text an event could
carry — dataset names, micrograph names, job paths — is thrown at ``safe_key`` and the store,
and a symlink planted under a ``file://`` root is not followed out of it.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryobus.shared.errors import InputError
from cryobus.shared.store import check_key, open_store, safe_key

# Text biased towards what makes keys dangerous, plus arbitrary unicode.
_DANGEROUS = st.sampled_from(["..", ".", "/", "//", "\\", "\x00", "~", "%2e%2e", "\u2215", "\uff0e\uff0e", ":", " ", "\n"])
HOSTILE_TEXT = st.lists(st.one_of(_DANGEROUS, st.text(max_size=4), st.sampled_from(["ds", "mic_001.mrc", "webp"])),
                        max_size=8).map("".join)
PARTS = st.lists(HOSTILE_TEXT, min_size=1, max_size=4)


def _escapes(key: str) -> bool:
    return key.startswith("/") or posixpath.normpath(key) != key or ".." in key.split("/")


@settings(max_examples=400, deadline=None)
@given(key=HOSTILE_TEXT)
def test_any_key_the_store_accepts_is_a_plain_relative_path(key):
    try:
        check_key(key)
    except InputError as exc:
        assert exc.field == "key"
        return
    assert not _escapes(key) and "\x00" not in key and "\\" not in key


@settings(max_examples=200, deadline=None)
@given(parts=PARTS)
def test_safe_key_either_refuses_or_writes_under_the_root(parts):
    try:
        key = safe_key(*parts)
    except InputError as exc:
        assert exc.field == "key"
        return
    assert not _escapes(key)
    with tempfile.TemporaryDirectory() as tmp:  # a fresh root per example
        root = Path(tmp) / "store"
        store = open_store(root.as_uri())
        stored = store.put(key, b"x", media_type="application/octet-stream")
        path = store.local_path(stored.key)
        assert path.resolve().is_relative_to(root.resolve()) and path.is_file()
        assert [p for p in Path(tmp).rglob("*") if p.is_file()] == [path]


@pytest.fixture
def planted(tmp_path):
    """A store whose root holds a symlink ``ds`` to a folder outside it (with a file in it)."""
    root, outside = tmp_path / "store", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("not an artifact")
    os.symlink(outside, root / "ds")
    os.symlink(outside / "secret.txt", root / "leak.txt")
    return open_store(root.as_uri()), outside


def test_a_symlink_under_the_root_carries_no_write_outside(planted):
    store, outside = planted
    with pytest.raises(InputError, match="resolves outside the store root"):
        store.put("ds/evil.txt", b"x", media_type="text/plain")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


@pytest.mark.parametrize("key", ["ds/secret.txt", "leak.txt"])
def test_a_symlink_under_the_root_carries_no_read_outside(planted, key):
    store, _ = planted
    for op in (store.get, store.head, store.exists, store.local_path):
        with pytest.raises(InputError, match="resolves outside the store root"):
            op(key)


def test_a_root_that_is_itself_a_symlink_still_works(tmp_path):
    real = tmp_path / "gpfs" / "artifacts"
    real.mkdir(parents=True)
    os.symlink(real, tmp_path / "artifacts")
    store = open_store((tmp_path / "artifacts").as_uri())
    store.put("ds/webp/a.webp", b"RIFF", media_type="image/webp")
    assert (real / "ds" / "webp" / "a.webp").read_bytes() == b"RIFF"
    assert store.get("ds/webp/a.webp") == b"RIFF"
    assert Path(store.local_path("ds/webp/a.webp")).exists()
