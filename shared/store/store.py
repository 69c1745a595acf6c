"""The artifact store: one small synchronous interface over obstore, addressed by URL.

DESIGN.md, "Artifacts": artifacts live under a root URL (``file://`` folder or ``s3://bucket/prefix``),
writes are atomic, artifacts are immutable and keys deterministic. Handlers run in worker threads, so
every method here blocks (obstore's synchronous API releases the GIL while it does I/O).

Atomicity, as implemented by obstore 0.12 (Rust ``object_store`` ``LocalFileSystem::put_opts``):
a ``file://`` put writes ``<dest>#<n>`` (opened ``create_new``, so concurrent writers never share it),
then ``rename``\\ s it over ``<dest>``; readers see the old file, nothing, or the whole new file. The
staging names are skipped by listing and cannot collide with keys (``#`` is not a key character).
obstore does not ``fsync`` before the rename: after a power cut a file may be empty or missing, but
never half-written from a reader's point of view while the host is up. An ``s3://`` put is a single
``PutObject`` (multipart disabled), which S3 applies atomically.

Immutability is a convention enforced by deterministic keys, not by the store: putting a key again
with the same bytes is a no-op in effect, with other bytes it overwrites.

Errors: an absent key is ``KeyError`` (``get``) or ``None`` (``head``); a bad key is ``InputError``;
every backend failure (permission denied, ENOSPC, ENOTDIR, connection refused, timeouts, 5xx, bad
credentials) is ``TransientError`` naming the operation, key and store URL — never credentials.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.store import LocalStore, S3Store

from cryobus.shared.errors import InputError, TransientError
from cryobus.shared.store.keys import check_key
from cryobus.shared.store.location import StoreLocation, parse_store_url

if TYPE_CHECKING:
    from collections.abc import Buffer, Iterable

    from obstore.store import ObjectStore

# User metadata key holding the sha256 of an S3 object (sent as ``x-amz-meta-sha256``).
_SHA256_META = "sha256"
# Environment values that may appear in a backend message and must never be repeated.
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_TOKEN", "AWS_ACCESS_KEY_ID")
_TRUE = {"1", "true", "yes", "on"}
# Where obstore looks for a custom endpoint, in its order of precedence.
_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class StoredObject:
    """One artifact in a store.

    Attributes:
        key: POSIX path relative to the store root, e.g. ``"mydataset/webp/mic_001.webp"``.
        uri: absolute URI, ``file:///abs/root/<key>`` or ``s3://bucket/prefix/<key>``.
        size_bytes: object size in bytes.
        sha256: lowercase hex SHA-256 of the object's bytes.
    """

    key: str
    uri: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class RetryPolicy:
    """How long an S3 request may take and how often it is retried (obstore ``RetryConfig`` / ``ClientConfig``).

    obstore retries 5xx, connection errors and timeouts of safe requests with exponential backoff and
    jitter. The defaults bound one failing call to roughly ``retry_timeout_s`` so a handler fails over
    to the bus's nak/backoff instead of hanging; ``request_timeout_s`` is generous because one PUT
    carries a whole artifact (particle stacks of hundreds of MB). Unused by ``file://`` stores.
    """

    max_retries: int = 3
    retry_timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 300.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0


class ArtifactStore:
    """A store root (``file://`` folder or ``s3://bucket/prefix``) holding artifacts by key.

    Create with :func:`open_store`. Thread-safe: one instance is shared by a service's worker threads.

    Attributes:
        url: the root URL, normalised: ``file:///abs/dir`` or ``s3://bucket[/prefix]`` (no trailing ``/``).
    """

    def __init__(self, location: StoreLocation, backend: ObjectStore):
        self.url = location.url
        self._location = location
        self._backend = backend

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    @property
    def is_s3(self) -> bool:
        return self._location.scheme == "s3"

    def uri_for(self, key: str) -> str:
        """Absolute URI of ``key``: ``<url>/<key>``. Raises ``InputError`` for an invalid key."""
        return f"{self.url}/{check_key(key)}"

    def key_of(self, uri: str) -> str:
        """The key of an artifact URI of this store (the inverse of :meth:`uri_for`).

        Raises:
            InputError: the URI is not under this store's URL, or its key is invalid.
        """
        prefix = self.url.rstrip("/") + "/"
        if not uri.startswith(prefix):
            raise InputError(f"{uri} is not in the store {self.url}", file=uri, field="uri")
        return check_key(uri[len(prefix):])

    def local_path(self, key: str) -> Path | None:
        """Filesystem path of ``key`` for ``file://`` stores (whether or not it exists yet), ``None`` for S3.

        Raises:
            InputError: invalid key (see :func:`cryobus.shared.store.keys.check_key`).
        """
        self._check(key)
        if self._location.path is None:
            return None
        return self._location.path.joinpath(*key.split("/"))

    def _check(self, key: str) -> None:
        """:func:`check_key`, and on ``file://`` stores: the key's real path (symlinks followed)
        stays under the root's, so a symlink planted under the root cannot carry a write or read
        elsewhere.

        Raises:
            InputError: invalid key, or one that resolves outside the root (``field="key"``).
        """
        check_key(key)
        root = self._location.path
        if root is None:
            return
        real = Path(os.path.realpath(root.joinpath(*key.split("/"))))
        real_root = Path(os.path.realpath(root))
        if not real.is_relative_to(real_root):
            raise InputError(f"artifact key {key!r} resolves outside the store root, to {real}", field="key")

    def put(self, key: str, data: bytes | Buffer, *, media_type: str) -> StoredObject:
        """Write ``data`` at ``key`` atomically (see module docstring) and return its record.

        Args:
            key: artifact key (build it with :func:`~cryobus.shared.store.keys.safe_key`).
            data: the bytes (any contiguous 1-D byte buffer: ``bytes``, ``bytearray``, ``memoryview``).
            media_type: MIME type, e.g. ``"image/webp"``; stored as ``Content-Type`` on S3 (a local
                file system has nowhere to keep it; the ``artifact.stored`` event carries it).

        Raises:
            InputError: invalid key.
            TransientError: the backend failed (permission, disk full, unreachable, 5xx...).
        """
        self._check(key)
        view = memoryview(data).cast("B")
        digest = hashlib.sha256(view).hexdigest()  # hashlib drops the GIL for large buffers
        try:
            if self.is_s3:
                obstore.put(
                    self._backend,
                    key,
                    view,
                    attributes={"Content-Type": media_type, _SHA256_META: digest},
                    use_multipart=False,  # one PutObject: atomic, no orphaned parts
                )
            else:
                # LocalStore refuses attributes; it stages to "<dest>#<n>" then renames.
                obstore.put(self._backend, key, view, use_multipart=False)
        except (ObstoreError, OSError) as exc:
            self._raise_transient("put", key, exc)
        return StoredObject(key=key, uri=self.uri_for(key), size_bytes=view.nbytes, sha256=digest)

    def put_stream(self, key: str, chunks: Iterable[Buffer], *, media_type: str) -> StoredObject:
        """Write the concatenation of ``chunks`` at ``key`` atomically, as they arrive; return its record.

        For objects produced piece by piece (a particle stack's Fourier tensor, chunk by chunk): on a
        ``file://`` store each chunk goes to the staging file ``<dest>#<n>`` as soon as the iterator
        yields it (hashed on the way) and the file is renamed over ``<dest>`` after the last one, so
        writing overlaps producing and readers see nothing or the whole object, as with :meth:`put`.
        On S3 the chunks are joined and sent as one ``PutObject`` (atomic; memory = object size).

        Args:
            key: artifact key.
            chunks: contiguous byte buffers in order; the iterator may block while the next is made.
            media_type: MIME type (see :meth:`put`).

        Raises:
            InputError: invalid key.
            TransientError: the backend failed. An exception raised by ``chunks`` propagates
                unchanged; in every failure the staging file is removed and ``key`` is untouched.
        """
        self._check(key)
        dest = self.local_path(key)
        if dest is None:
            data = b"".join(memoryview(c).cast("B") for c in chunks)
            return self.put(key, data, media_type=media_type)
        hasher, size = hashlib.sha256(), 0
        staged = None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            staged, fd = _create_staging(dest)
            with os.fdopen(fd, "wb", buffering=0) as f:
                for chunk in chunks:
                    view = memoryview(chunk).cast("B")
                    hasher.update(view)  # drops the GIL for large buffers
                    size += view.nbytes
                    while view:  # a raw write may be short
                        view = view[f.write(view) :]
            os.replace(staged, dest)
            staged = None
        except OSError as exc:
            self._raise_transient("put", key, exc)
        finally:
            if staged is not None:
                staged.unlink(missing_ok=True)
        return StoredObject(key=key, uri=self.uri_for(key), size_bytes=size, sha256=hasher.hexdigest())

    def get(self, key: str) -> bytes:
        """Return the bytes at ``key``.

        Raises:
            KeyError: ``key`` is absent (``KeyError(key)``).
            InputError: invalid key.
            TransientError: the backend failed.
        """
        self._check(key)
        try:
            return bytes(obstore.get(self._backend, key).bytes())
        except FileNotFoundError:
            raise KeyError(key) from None
        except (ObstoreError, OSError) as exc:
            self._raise_transient("get", key, exc)

    def head(self, key: str) -> StoredObject | None:
        """Return the record of ``key``, or ``None`` if it is absent.

        S3 objects written by :meth:`put` carry their sha256 in user metadata (one HEAD request);
        otherwise — ``file://`` stores, objects written by other tools — the object is read once,
        streamed, to compute it.

        Raises:
            InputError: invalid key.
            TransientError: the backend failed (an unreachable store is *not* reported as absent).
        """
        self._check(key)
        try:
            if self.is_s3:
                meta = obstore.get(self._backend, key, options={"head": True})
                digest = meta.attributes.get(_SHA256_META)
                if digest:
                    return StoredObject(key=key, uri=self.uri_for(key), size_bytes=meta.meta["size"], sha256=digest)
            hasher = hashlib.sha256()
            size = 0
            for chunk in obstore.get(self._backend, key):
                hasher.update(chunk)
                size += len(chunk)
        except FileNotFoundError:
            return None
        except (ObstoreError, OSError) as exc:
            self._raise_transient("head", key, exc)
        return StoredObject(key=key, uri=self.uri_for(key), size_bytes=size, sha256=hasher.hexdigest())

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists (metadata only, nothing is read).

        Raises:
            InputError: invalid key.
            TransientError: the backend failed.
        """
        self._check(key)
        try:
            obstore.head(self._backend, key)
        except FileNotFoundError:
            return False
        except (ObstoreError, OSError) as exc:
            self._raise_transient("head", key, exc)
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (plain string prefix, ``""`` for all), sorted.

        For operations and status only: DESIGN.md forbids finding artifacts by listing. On ``file://``
        stores every regular file under the root is listed, except obstore's ``name#<n>`` staging files.

        Raises:
            InputError: ``prefix`` is absolute or holds a ``..`` / empty segment or other characters.
            TransientError: the backend failed.
        """
        if prefix:
            check_key(prefix.rstrip("/") or "/")
        # obstore lists whole path segments: list the last complete directory, filter the rest here.
        directory = prefix.rpartition("/")[0] or None
        try:
            metas = obstore.list(self._backend, directory).collect()
        except FileNotFoundError:
            return []
        except (ObstoreError, OSError) as exc:
            self._raise_transient("list", prefix or "<all>", exc)
        return sorted(m["path"] for m in metas if m["path"].startswith(prefix))

    def _raise_transient(self, op: str, key: str, exc: BaseException) -> NoReturn:
        # First line only: obstore appends a multi-line debug dump. Backend messages carry the request
        # URL and status, not headers, but scrub secret values anyway in case a proxy echoes them.
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        for name in _SECRET_ENV:
            secret = os.environ.get(name)
            if secret and len(secret) >= 4:
                detail = detail.replace(secret, "***")
        raise TransientError(
            f"artifact store {self.url}: {op} of key {key!r} failed: {type(exc).__name__}: {detail}"
        ) from exc


def _create_staging(dest: Path) -> tuple[Path, int]:
    """Create ``<dest>#<n>`` exclusively (obstore's staging-name form, skipped by :meth:`ArtifactStore.list`)."""
    n = int.from_bytes(os.urandom(4), "little")
    while True:
        staged = dest.with_name(f"{dest.name}#{n}")
        try:
            return staged, os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            n += 1


def open_store(url: str, *, retry: RetryPolicy | None = None) -> ArtifactStore:
    """Open the artifact store at ``url`` (see :mod:`cryobus.shared.store.location` for the forms).

    ``file://`` roots are created if missing. ``s3://`` stores make no request here; their endpoint,
    region and credentials come only from the environment, read by obstore (``AWS_ENDPOINT_URL``,
    ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``...), plus
    ``AWS_ALLOW_HTTP=true`` for plain-http endpoints such as MinIO or moto.

    Args:
        url: store root URL or plain path.
        retry: request timeouts and retry bounds for S3 (default :class:`RetryPolicy`).

    Raises:
        InputError: the URL is malformed or its scheme unsupported (``field="store_url"``); the S3
            endpoint is plain ``http://`` without ``AWS_ALLOW_HTTP=true`` (``field="AWS_ALLOW_HTTP"``).
        TransientError: a ``file://`` root cannot be created (permission, read-only, not a directory).
    """
    location = parse_store_url(url)
    if location.scheme == "file":
        assert location.path is not None
        try:
            backend: ObjectStore = LocalStore(location.path, mkdir=True)
        except (ObstoreError, OSError) as exc:
            raise TransientError(
                f"artifact store {location.url}: cannot create or open the root folder: {type(exc).__name__}: {exc}"
            ) from exc
        return ArtifactStore(location, backend)
    allow_http = os.environ.get("AWS_ALLOW_HTTP", "").strip().lower() in _TRUE
    endpoint_var = next((v for v in _ENDPOINT_ENV if os.environ.get(v)), None)
    if endpoint_var and os.environ[endpoint_var].lower().startswith("http://") and not allow_http:
        # Caught here because obstore's own error for it is an opaque "HTTP error: builder error".
        raise InputError(
            f"the S3 endpoint in {endpoint_var} is plain http; set AWS_ALLOW_HTTP=true to allow it",
            file=location.url,
            field="AWS_ALLOW_HTTP",
        )
    policy = retry or RetryPolicy()
    backend = S3Store(
        location.bucket,
        prefix=location.prefix or None,
        client_options={
            # Passing client options replaces obstore's own reading of AWS_ALLOW_HTTP: read it here.
            "allow_http": allow_http,
            "connect_timeout": timedelta(seconds=policy.connect_timeout_s),
            "timeout": timedelta(seconds=policy.request_timeout_s),
        },
        retry_config={
            "max_retries": policy.max_retries,
            "retry_timeout": timedelta(seconds=policy.retry_timeout_s),
            "backoff": {
                "init_backoff": timedelta(seconds=policy.backoff_initial_s),
                "max_backoff": timedelta(seconds=policy.backoff_max_s),
                "base": 2,
            },
        },
    )
    return ArtifactStore(location, backend)
