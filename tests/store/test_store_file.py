"""A service writes artifacts to a file:// store: round trip, atomic writes, clear errors, safe keys."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from cryobus.shared.errors import InputError, TransientError
from cryobus.shared.store import ArtifactStore, StoredObject, open_store, safe_key

PARTICLE_STACK = "Extract/job009/Movies/20170629_00028_frameImage.mrcs"


def test_a_preview_round_trips_with_size_and_sha256(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/artifacts")
    data = b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(range(256)) * 8

    stored = store.put("mydataset/webp/mic_001.webp", data, media_type="image/webp")

    assert stored == StoredObject(
        key="mydataset/webp/mic_001.webp",
        uri=(tmp_path / "artifacts/mydataset/webp/mic_001.webp").as_uri(),
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    assert store.get("mydataset/webp/mic_001.webp") == data
    assert store.head("mydataset/webp/mic_001.webp") == stored
    assert store.exists("mydataset/webp/mic_001.webp")
    assert store.local_path("mydataset/webp/mic_001.webp") == tmp_path / "artifacts/mydataset/webp/mic_001.webp"
    assert store.local_path("mydataset/webp/mic_001.webp").read_bytes() == data
    assert store.uri_for("mydataset/webp/mic_001.webp") == stored.uri


def test_a_real_particle_stack_round_trips(tmp_path: Path, relion_project: Path) -> None:
    data = (relion_project / PARTICLE_STACK).read_bytes()
    store = open_store(str(tmp_path))

    stored = store.put("sppractice/phys/particles.mrcs", data, media_type="application/octet-stream")

    assert stored.size_bytes == (relion_project / PARTICLE_STACK).stat().st_size
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get(stored.key) == data
    assert store.head(stored.key) == stored


def test_absent_keys_are_reported_not_raised_as_errors(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))

    assert store.head("nope/mic.webp") is None
    assert not store.exists("nope/mic.webp")
    with pytest.raises(KeyError) as info:
        store.get("nope/mic.webp")
    assert info.value.args == ("nope/mic.webp",)
    assert store.list("nope/") == []


def test_list_returns_sorted_keys_under_a_prefix(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    for key in ["ds2/a.txt", "ds/webp/b.webp", "ds/webp/a.webp", "ds/pixel_size.txt"]:
        store.put(key, key.encode(), media_type="text/plain")

    assert store.list() == ["ds/pixel_size.txt", "ds/webp/a.webp", "ds/webp/b.webp", "ds2/a.txt"]
    assert store.list("ds/") == ["ds/pixel_size.txt", "ds/webp/a.webp", "ds/webp/b.webp"]
    assert store.list("ds/webp") == ["ds/webp/a.webp", "ds/webp/b.webp"]
    assert store.list("ds/webp/a") == ["ds/webp/a.webp"]
    # A plain string prefix: "ds" also matches "ds2/...".
    assert store.list("ds") == ["ds/pixel_size.txt", "ds/webp/a.webp", "ds/webp/b.webp", "ds2/a.txt"]


def test_rewriting_a_key_is_idempotent_and_new_bytes_overwrite(tmp_path: Path) -> None:
    """Immutability is a convention of deterministic keys; the store itself overwrites."""
    store = open_store(str(tmp_path))
    first = store.put("ds/metadata/pixel_size.txt", b"1.06\n", media_type="text/plain")
    again = store.put("ds/metadata/pixel_size.txt", b"1.06\n", media_type="text/plain")
    assert again == first
    assert store.list() == ["ds/metadata/pixel_size.txt"]

    changed = store.put("ds/metadata/pixel_size.txt", b"0.885\n", media_type="text/plain")
    assert changed.sha256 != first.sha256
    assert store.get("ds/metadata/pixel_size.txt") == b"0.885\n"
    assert store.head("ds/metadata/pixel_size.txt") == changed


def test_a_reader_never_sees_a_partial_file_while_a_big_put_runs(tmp_path: Path) -> None:
    """obstore stages the bytes in "<name>#<n>" and renames; a concurrent reader sees nothing or all.

    A watcher thread lists the folder and stats/reads the final name in a loop while puts run (obstore
    releases the GIL during the write). We repeat until the watcher has caught a staging file at least
    once — proof that the write went through a temporary name — and assert the final name never had
    any size or content other than the whole payload.
    """
    store = open_store(str(tmp_path))
    data = os.urandom(32 << 20)
    digest = hashlib.sha256(data).hexdigest()
    folder = tmp_path / "ds" / "fft"
    folder.mkdir(parents=True)
    staging_seen: set[str] = set()
    partial_views: list[str] = []
    whole_reads = 0
    polling = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        nonlocal whole_reads
        while not stop.is_set():
            for name in os.listdir(folder):
                if "#" in name:
                    staging_seen.add(name)
                    continue
                try:
                    with open(folder / name, "rb") as fh:
                        content = fh.read()
                except FileNotFoundError:
                    continue
                if len(content) != len(data) or hashlib.sha256(content).hexdigest() != digest:
                    partial_views.append(f"{name}: {len(content)} bytes")
                else:
                    whole_reads += 1
            polling.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert polling.wait(10)
    try:
        for attempt in range(10):
            store.put(f"ds/fft/stack_{attempt:06d}.pt", data, media_type="application/octet-stream")
            if staging_seen:
                break
    finally:
        stop.set()
        watcher.join()

    assert partial_views == []
    assert any(name.startswith("stack_") and "#" in name for name in staging_seen), "no temp name seen"
    assert not any("#" in name for name in os.listdir(folder)), "staging file left behind"
    assert all("#" not in key for key in store.list())
    assert store.head(f"ds/fft/stack_{attempt:06d}.pt").sha256 == digest


def test_a_file_where_a_folder_is_expected_raises_transient_error(tmp_path: Path) -> None:
    """Tests run as root, where chmod does not stop writes; a regular file blocking the key's folder
    (ENOTDIR) stands in for an unwritable backend. The message names the key and the store."""
    store = open_store(str(tmp_path))
    (tmp_path / "ds").write_text("I am a file, not the dataset folder")

    with pytest.raises(TransientError) as info:
        store.put("ds/webp/mic_001.webp", b"data", media_type="image/webp")

    message = str(info.value)
    assert "ds/webp/mic_001.webp" in message
    assert store.url in message
    assert (tmp_path / "ds").read_text() == "I am a file, not the dataset folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions; see the ENOTDIR test")
def test_a_read_only_folder_raises_transient_error(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds").chmod(0o500)
    try:
        with pytest.raises(TransientError, match="ds/mic.webp"):
            store.put("ds/mic.webp", b"data", media_type="image/webp")
    finally:
        (tmp_path / "ds").chmod(0o700)


def test_a_root_that_cannot_be_created_raises_transient_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(TransientError, match="blocker/artifacts"):
        open_store(str(tmp_path / "blocker" / "artifacts"))


@pytest.mark.parametrize(
    "key",
    ["", "/etc/passwd", "../outside", "ds/../../outside", "ds/./x", "ds//x", "ds/x/", "ds/x\x00y", "ds\\x", "ds/x y"],
)
def test_store_methods_refuse_keys_that_could_escape_the_root(tmp_path: Path, key: str) -> None:
    store = open_store(str(tmp_path / "root"))
    for call in (
        lambda: store.put(key, b"x", media_type="text/plain"),
        lambda: store.get(key),
        lambda: store.head(key),
        lambda: store.exists(key),
        lambda: store.uri_for(key),
        lambda: store.local_path(key),
    ):
        with pytest.raises(InputError):
            call()
    assert list(tmp_path.rglob("*")) == [tmp_path / "root"]


def test_relative_and_plain_urls_normalise_to_absolute_file_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    assert open_store("file://./artifacts").url == (tmp_path / "artifacts").as_uri()
    assert open_store("./artifacts").url == (tmp_path / "artifacts").as_uri()
    assert open_store("artifacts/").url == (tmp_path / "artifacts").as_uri()
    assert open_store(str(tmp_path / "abs")).url == (tmp_path / "abs").as_uri()
    assert open_store(f"file://{tmp_path}/abs/").url == (tmp_path / "abs").as_uri()
    assert open_store(f"file://localhost{tmp_path}/abs").url == (tmp_path / "abs").as_uri()

    spaced = open_store((tmp_path / "with space").as_uri())
    assert spaced.local_path("a.txt") == tmp_path / "with space" / "a.txt"
    assert spaced.put("a.txt", b"x", media_type="text/plain").uri == (tmp_path / "with space" / "a.txt").as_uri()

    store = open_store("file://./artifacts")
    stored = store.put("ds/a.txt", b"abc", media_type="text/plain")
    assert stored.uri == (tmp_path / "artifacts" / "ds" / "a.txt").as_uri()
    assert (tmp_path / "artifacts" / "ds" / "a.txt").read_bytes() == b"abc"
    assert isinstance(store, ArtifactStore) and store.local_path("ds/a.txt").is_absolute()


@pytest.mark.parametrize("url", ["", "ftp://host/dir", "s3://", "s3:///prefix", "s3://bucket/a/../b"])
def test_malformed_store_urls_are_input_errors(url: str) -> None:
    with pytest.raises(InputError):
        open_store(url)


def test_safe_key_joins_parts_and_sanitises_characters() -> None:
    assert safe_key("mydataset", "webp", "mic_001.webp") == "mydataset/webp/mic_001.webp"
    assert safe_key("mydataset", "webp/mic_001.webp") == "mydataset/webp/mic_001.webp"
    assert safe_key("my data", "Movies", "mic 001:ctf.mrc") == "my_data/Movies/mic_001_ctf.mrc"
    assert safe_key("Å-grid", "ümlaut.tif") == "_-grid/_mlaut.tif"
    assert safe_key("ds", "...", ".hidden") == "ds/.../.hidden"


@pytest.mark.parametrize(
    "parts",
    [
        (),
        ("ds", ".."),
        ("ds", "../x"),
        ("ds", "a/../../x"),
        ("/etc", "passwd"),
        ("ds", "/abs"),
        ("ds", "a\x00b"),
        ("ds", "..\\..\\x"),
        ("ds", ""),
        ("ds", "a//b"),
        ("ds", "webp/"),
        ("ds", "."),
    ],
)
def test_safe_key_rejects_what_cannot_be_made_safe(parts: tuple[str, ...]) -> None:
    with pytest.raises(InputError):
        safe_key(*parts)


def test_a_streamed_put_writes_chunks_as_they_come_and_renames_at_the_end(tmp_path: Path) -> None:
    """put_stream: the staging file grows while the producer is still working; the key appears whole."""
    store = open_store(str(tmp_path))
    parts = [os.urandom(1 << 20) for _ in range(4)]
    final = tmp_path / "ds" / "fft" / "stack.pt"
    seen_while_producing: list[tuple[list[str], int]] = []

    def produce():
        for i, part in enumerate(parts):
            if i == 3:  # three chunks handed over: they are on disk, under the staging name only
                staging = [p for p in os.listdir(final.parent) if "#" in p]
                size = sum((final.parent / p).stat().st_size for p in staging)
                seen_while_producing.append((staging, size))
                assert not final.exists()
            yield memoryview(part)

    stored = store.put_stream("ds/fft/stack.pt", produce(), media_type="application/octet-stream")

    data = b"".join(parts)
    [(staging, size)] = seen_while_producing
    assert len(staging) == 1 and staging[0].startswith("stack.pt#") and size == 3 << 20
    assert stored == StoredObject(
        key="ds/fft/stack.pt", uri=final.as_uri(), size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    assert final.read_bytes() == data
    assert store.head("ds/fft/stack.pt") == stored
    assert os.listdir(final.parent) == ["stack.pt"]


def test_a_streamed_put_whose_producer_fails_leaves_the_old_object_and_no_staging_file(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    old = store.put("ds/fft/stack.pt", b"old bytes", media_type="application/octet-stream")

    def produce():
        yield b"new bytes, part one"
        raise RuntimeError("transform failed half way")

    with pytest.raises(RuntimeError, match="half way"):
        store.put_stream("ds/fft/stack.pt", produce(), media_type="application/octet-stream")

    assert store.get("ds/fft/stack.pt") == b"old bytes"
    assert store.head("ds/fft/stack.pt") == old
    assert os.listdir(tmp_path / "ds" / "fft") == ["stack.pt"]


def test_a_streamed_put_where_a_file_blocks_the_folder_is_a_transient_error(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    (tmp_path / "ds").write_bytes(b"a file, not a folder")

    with pytest.raises(TransientError, match="put of key 'ds/fft/stack.pt'"):
        store.put_stream("ds/fft/stack.pt", iter([b"x" * 10]), media_type="application/octet-stream")

    assert (tmp_path / "ds").read_bytes() == b"a file, not a folder"
