"""The artifact store: artifacts addressed by URL (``file://``, plain path, ``s3://``), backed by obstore.

Usage::

    store = open_store("s3://bucket/prefix")  # or "file:///data/artifacts", "./artifacts"
    stored = store.put(safe_key(dataset, "webp", f"{name}.webp"), data, media_type="image/webp")
    stored.uri, stored.size_bytes, stored.sha256
"""

from cryobus.shared.store.keys import check_key, safe_key
from cryobus.shared.store.location import StoreLocation, parse_store_url
from cryobus.shared.store.store import ArtifactStore, RetryPolicy, StoredObject, open_store

__all__ = [
    "ArtifactStore",
    "RetryPolicy",
    "StoreLocation",
    "StoredObject",
    "check_key",
    "open_store",
    "parse_store_url",
    "safe_key",
]
