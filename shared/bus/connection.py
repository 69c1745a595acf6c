"""Connecting to NATS: retry of the initial connect, reconnect forever, credentials and TLS.

nats-py has no "retry on failed initial connect" (nats.py issue #663), so we loop ourselves;
after that, the client reconnects on its own (``max_reconnect_attempts=-1``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client

from cryobus.shared.config import Settings

log = logging.getLogger(__name__)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not (settings.nats_tls_ca_file or settings.nats_tls_cert_file):
        return None
    ctx = ssl.create_default_context(cafile=str(settings.nats_tls_ca_file) if settings.nats_tls_ca_file else None)
    if settings.nats_tls_cert_file and settings.nats_tls_key_file:
        ctx.load_cert_chain(str(settings.nats_tls_cert_file), str(settings.nats_tls_key_file))
    return ctx


def connect_options(settings: Settings, name: str) -> dict[str, object]:
    """Keyword arguments for ``nats.connect`` from the settings (secrets never logged)."""
    opts: dict[str, object] = {
        "servers": [s.strip() for s in settings.nats_url.split(",") if s.strip()],
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "ping_interval": 10,
        "max_outstanding_pings": 3,
    }
    if settings.nats_user:
        opts["user"] = settings.nats_user
        opts["password"] = settings.nats_password.get_secret_value() if settings.nats_password else None
    if settings.nats_creds_file:
        opts["user_credentials"] = str(settings.nats_creds_file)
    if settings.nats_nkey_seed_file:
        opts["nkeys_seed"] = str(settings.nats_nkey_seed_file)
    tls = _tls_context(settings)
    if tls is not None:
        opts["tls"] = tls
    return opts


async def connect_with_retry(
    settings: Settings,
    name: str,
    *,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    """Connect, retrying with capped exponential backoff for ``settings.connect_timeout_s``.

    Raises:
        ConnectionError: still unreachable when the time is up.
    """

    async def _error_cb(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def _reconnected_cb() -> None:
        log.info("reconnected to nats")
        if on_reconnect is not None:
            await on_reconnect()

    async def _disconnected_cb() -> None:
        log.info("disconnected from nats")
        if on_disconnect is not None:
            await on_disconnect()

    opts = connect_options(settings, name)
    deadline = time.monotonic() + settings.connect_timeout_s
    delay = 0.2
    attempt = 0
    while True:
        attempt += 1
        try:
            return await nats.connect(
                **opts, error_cb=_error_cb, reconnected_cb=_reconnected_cb, disconnected_cb=_disconnected_cb
            )
        except Exception as exc:  # noqa: BLE001 - any failure of the initial connect is retried
            if time.monotonic() + delay > deadline:
                raise ConnectionError(
                    f"could not connect to NATS at {settings.nats_url} after {attempt} attempts: {exc}"
                ) from exc
            if attempt == 1 or attempt % 10 == 0:
                log.warning("nats not reachable yet (%s); retrying", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
