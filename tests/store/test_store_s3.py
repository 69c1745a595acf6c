"""A service writes artifacts to S3: round trip against moto's real HTTP server, clear transient errors."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cryobus.shared.errors import InputError, TransientError
from cryobus.shared.store import RetryPolicy, StoredObject, open_store

if TYPE_CHECKING:
    from conftest import S3Server

PARTICLE_STACK = "Extract/job009/Movies/20170629_00028_frameImage.mrcs"
FAST_FAIL = RetryPolicy(
    max_retries=2, retry_timeout_s=3.0, connect_timeout_s=1.0, request_timeout_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.2
)


def test_a_preview_round_trips_through_s3(s3_env: S3Server, s3_prefix: str, s3_client) -> None:
    store = open_store(f"s3://{s3_env.bucket}/{s3_prefix}/")
    data = b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(range(256)) * 8

    stored = store.put("mydataset/webp/mic_001.webp", data, media_type="image/webp")

    assert store.url == f"s3://{s3_env.bucket}/{s3_prefix}"
    assert stored == StoredObject(
        key="mydataset/webp/mic_001.webp",
        uri=f"s3://{s3_env.bucket}/{s3_prefix}/mydataset/webp/mic_001.webp",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    assert store.get("mydataset/webp/mic_001.webp") == data
    assert store.head("mydataset/webp/mic_001.webp") == stored
    assert store.exists("mydataset/webp/mic_001.webp")
    assert store.local_path("mydataset/webp/mic_001.webp") is None
    assert store.uri_for("mydataset/webp/mic_001.webp") == stored.uri

    # Seen from outside: the object sits under the prefix with its media type and sha256 metadata.
    seen = s3_client.head_object(Bucket=s3_env.bucket, Key=f"{s3_prefix}/mydataset/webp/mic_001.webp")
    assert seen["ContentType"] == "image/webp"
    assert seen["Metadata"] == {"sha256": stored.sha256}


def test_a_real_particle_stack_is_one_put_not_a_multipart_upload(
    s3_env: S3Server, s3_prefix: str, s3_client, relion_project: Path
) -> None:
    """6 MiB is above obstore's 5 MiB multipart chunk size: a multipart ETag would end in "-<parts>"."""
    data = (relion_project / PARTICLE_STACK).read_bytes() + os.urandom(6 << 20)
    store = open_store(f"s3://{s3_env.bucket}/{s3_prefix}")

    stored = store.put("sppractice/phys/particles.mrcs", data, media_type="application/octet-stream")

    etag = s3_client.head_object(Bucket=s3_env.bucket, Key=f"{s3_prefix}/sppractice/phys/particles.mrcs")["ETag"]
    assert etag.strip('"') == hashlib.md5(data).hexdigest()
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get(stored.key) == data


def test_a_bucket_root_without_prefix_addresses_keys_at_the_top(s3_env: S3Server, s3_client) -> None:
    store = open_store(f"s3://{s3_env.bucket}")
    key = f"top-{os.getpid()}/a.txt"
    stored = store.put(key, b"abc", media_type="text/plain")
    assert stored.uri == f"s3://{s3_env.bucket}/{key}"
    assert s3_client.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read() == b"abc"


def test_absent_keys_listing_and_overwrite(s3_env: S3Server, s3_prefix: str) -> None:
    store = open_store(f"s3://{s3_env.bucket}/{s3_prefix}")
    assert store.head("ds/nope.webp") is None
    assert not store.exists("ds/nope.webp")
    with pytest.raises(KeyError):
        store.get("ds/nope.webp")
    assert store.list() == []

    for key in ["ds2/a.txt", "ds/webp/b.webp", "ds/webp/a.webp", "ds/pixel_size.txt"]:
        store.put(key, key.encode(), media_type="text/plain")
    assert store.list() == ["ds/pixel_size.txt", "ds/webp/a.webp", "ds/webp/b.webp", "ds2/a.txt"]
    assert store.list("ds/webp/") == ["ds/webp/a.webp", "ds/webp/b.webp"]
    assert store.list("ds/webp/b") == ["ds/webp/b.webp"]

    first = store.put("ds/pixel_size.txt", b"1.06\n", media_type="text/plain")
    assert store.put("ds/pixel_size.txt", b"1.06\n", media_type="text/plain") == first
    changed = store.put("ds/pixel_size.txt", b"0.885\n", media_type="text/plain")
    assert store.head("ds/pixel_size.txt") == changed != first


def test_head_computes_sha256_for_objects_written_by_other_tools(s3_env: S3Server, s3_prefix: str, s3_client) -> None:
    s3_client.put_object(Bucket=s3_env.bucket, Key=f"{s3_prefix}/ds/external.star", Body=b"data_\nloop_\n")
    store = open_store(f"s3://{s3_env.bucket}/{s3_prefix}")

    head = store.head("ds/external.star")

    assert head is not None
    assert head.size_bytes == 12
    assert head.sha256 == hashlib.sha256(b"data_\nloop_\n").hexdigest()


def test_keys_that_escape_the_prefix_are_input_errors(s3_env: S3Server, s3_prefix: str) -> None:
    store = open_store(f"s3://{s3_env.bucket}/{s3_prefix}")
    for key in ["../other/x", "/abs", "ds/../../x", "ds//x"]:
        with pytest.raises(InputError):
            store.put(key, b"x", media_type="text/plain")
    assert store.list() == []


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_endpoint_raises_transient_error_without_credentials(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded retries (FAST_FAIL) keep this to about a second; absent must not be confused with down."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_unused_port()}")
    store = open_store(f"s3://{s3_env.bucket}/unreachable", retry=FAST_FAIL)

    for call in (
        lambda: store.put("ds/mic.webp", b"x", media_type="image/webp"),
        lambda: store.get("ds/mic.webp"),
        lambda: store.head("ds/mic.webp"),
        lambda: store.exists("ds/mic.webp"),
    ):
        with pytest.raises(TransientError) as info:
            call()
        message = str(info.value)
        assert "ds/mic.webp" in message
        assert f"s3://{s3_env.bucket}/unreachable" in message
        assert s3_env.secret_key not in message
    with pytest.raises(TransientError):
        store.list()


def test_a_missing_bucket_is_a_transient_error(s3_env: S3Server) -> None:
    """The operator may create the bucket later: retrying is right, dead-lettering is not."""
    store = open_store("s3://no-such-bucket-cryobus/x", retry=FAST_FAIL)
    with pytest.raises(TransientError, match="no-such-bucket-cryobus"):
        store.put("ds/mic.webp", b"x", media_type="image/webp")


def test_a_plain_http_endpoint_without_aws_allow_http_is_refused_at_open(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configuration mistake: say so at startup instead of retrying an opaque "builder error"."""
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(InputError, match="AWS_ALLOW_HTTP"):
        open_store(f"s3://{s3_env.bucket}/no-http")


def test_a_streamed_put_is_one_put_of_the_joined_chunks(s3_env: S3Server, s3_prefix: str, s3_client) -> None:
    store = open_store(f"s3://{s3_env.bucket}/{s3_prefix}")
    parts = [os.urandom(3 << 20), memoryview(os.urandom(4 << 20)), bytearray(b"tail")]
    data = b"".join(bytes(p) for p in parts)

    stored = store.put_stream("ds/fft/stack.pt", iter(parts), media_type="application/octet-stream")

    etag = s3_client.head_object(Bucket=s3_env.bucket, Key=f"{s3_prefix}/ds/fft/stack.pt")["ETag"]
    assert etag.strip('"') == hashlib.md5(data).hexdigest()  # not a multipart upload
    assert stored.size_bytes == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get("ds/fft/stack.pt") == data
