"""Parse and normalise an artifact store root URL.

Accepted forms (DESIGN.md, "Artifacts"):

- ``file:///abs/dir`` (also ``file://localhost/abs/dir``, percent-encoded as RFC 8089);
- ``file://./relative/dir`` or ``file://relative/dir``: relative to the current directory —
  not RFC 8089 (it would read ``relative`` as a host) but what people write;
- a plain path, absolute or relative (``/data/artifacts``, ``./artifacts``, ``~/a``);
- ``s3://bucket`` or ``s3://bucket/prefix/...``.

File roots normalise to an absolute ``file://`` URI (``Path.as_uri()``); S3 roots lose any
trailing ``/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from cryobus.shared.errors import InputError


@dataclass(frozen=True)
class StoreLocation:
    """A parsed store root: ``scheme`` is ``"file"`` (``path`` set) or ``"s3"`` (``bucket``, ``prefix`` set)."""

    scheme: str
    url: str
    path: Path | None = None
    bucket: str | None = None
    prefix: str = ""


def parse_store_url(url: str) -> StoreLocation:
    """Parse a store root URL or path into a normalised :class:`StoreLocation`.

    Raises:
        InputError: empty URL, an unsupported scheme, a file URL with a foreign host, an S3 URL
            without a bucket or with an empty / ``.`` / ``..`` prefix segment (``field="store_url"``).
    """
    if not isinstance(url, str) or not url.strip():
        raise InputError("store URL is empty", field="store_url")
    url = url.strip()
    if url.startswith("s3://"):
        return _parse_s3(url)
    if url.startswith("file:"):
        rest = url[len("file:") :]
        if rest.startswith("//"):
            rest = rest[2:]
            if rest.startswith("localhost/"):
                rest = rest[len("localhost") :]
        path = unquote(rest)
    elif "://" in url:
        scheme = url.split("://", 1)[0]
        raise InputError(f"store URL scheme {scheme!r} is not supported (use file:// or s3://)", file=url, field="store_url")
    else:
        path = url
    if not path:
        raise InputError("store URL names no directory", file=url, field="store_url")
    # abspath, not resolve(): keep the path the operator wrote (symlinked mounts stay readable).
    absolute = Path(os.path.abspath(os.path.expanduser(path)))
    return StoreLocation(scheme="file", url=absolute.as_uri(), path=absolute)


def _parse_s3(url: str) -> StoreLocation:
    bucket, _, prefix = url[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if not bucket:
        raise InputError("S3 store URL names no bucket", file=url, field="store_url")
    if prefix and any(seg in ("", ".", "..") for seg in prefix.split("/")):
        raise InputError("S3 store URL prefix has an empty, '.' or '..' segment", file=url, field="store_url")
    normalised = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    return StoreLocation(scheme="s3", url=normalised, bucket=bucket, prefix=prefix)
