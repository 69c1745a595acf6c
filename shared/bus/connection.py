"""Connecting to NATS: retry of the initial connect, reconnect forever, credentials and TLS.

nats-py has no "retry on failed initial connect" with a deadline (nats.py issue #663): with
``max_reconnect_attempts=-1`` its ``connect()`` retries forever, even on a wrong password. So
the initial connect runs as a task watched here: it ends at ``connect_timeout_s``, and at once
on a refusal that retrying cannot cure (authorization violation, TLS verification failure).
After that, the client reconnects on its own.

Credentials (docs/security.md): user/password, token, nkey seed file, ``.creds`` file; TLS with
a private CA (``nats_tls_ca_file``), optional client certificate (mutual TLS) and
``nats_tls_hostname``. Secret values come from the environment or mounted ``*_file`` files and
never reach a log line or an error message.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

import nats
import nats.errors
from nats.aio.client import Client

from cryobus.shared.config import Settings
from cryobus.shared.logging import redact
from cryobus.shared.secret_files import ConfigError, readable_file, secret_value

log = logging.getLogger(__name__)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A verifying client context trusting ``nats_tls_ca_file`` (else the system CAs), with the
    client certificate when one is configured; None when no TLS setting is given (a ``tls://``
    URL then uses nats-py's default context).

    Raises:
        ConfigError: a certificate without its key (or the reverse), an unreadable or invalid file.
    """
    s = settings
    if bool(s.nats_tls_cert_file) != bool(s.nats_tls_key_file):
        raise ConfigError(
            "CRYOBUS_NATS_TLS_CERT_FILE and CRYOBUS_NATS_TLS_KEY_FILE go together (mutual TLS): set both or neither"
        )
    if not (s.nats_tls_ca_file or s.nats_tls_cert_file or s.nats_tls_hostname):
        return None
    ca = readable_file("nats_tls_ca_file", s.nats_tls_ca_file) if s.nats_tls_ca_file else None
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    except ssl.SSLError as exc:
        raise ConfigError(f"CRYOBUS_NATS_TLS_CA_FILE: {ca} holds no usable CA certificate ({exc.reason})") from None
    if s.nats_tls_cert_file and s.nats_tls_key_file:
        cert = readable_file("nats_tls_cert_file", s.nats_tls_cert_file)
        key = readable_file("nats_tls_key_file", s.nats_tls_key_file)
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except ssl.SSLError as exc:
            raise ConfigError(
                f"CRYOBUS_NATS_TLS_CERT_FILE/KEY_FILE: {cert} and {key} are not a matching certificate and key "
                f"({exc.reason})"
            ) from None
    return ctx


def connect_options(settings: Settings, name: str) -> dict[str, object]:
    """Keyword arguments for ``nats.connect`` from the settings.

    Secret files are read here (at connect time). The result holds secrets: never log it.

    Raises:
        ConfigError: a secret set both directly and as a file, a missing/unreadable file, a TLS
            certificate without its key.
    """
    s = settings
    opts: dict[str, object] = {
        "servers": [u.strip() for u in s.nats_url.split(",") if u.strip()],
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "ping_interval": 10,
        "max_outstanding_pings": 3,
    }
    password = secret_value("nats_password", s.nats_password, s.nats_password_file)
    if s.nats_user:
        opts["user"] = s.nats_user
        opts["password"] = password
    elif password is not None:
        raise ConfigError("CRYOBUS_NATS_PASSWORD(_FILE) is set but CRYOBUS_NATS_USER is not")
    token = secret_value("nats_token", s.nats_token, s.nats_token_file)
    if token is not None:
        opts["token"] = token
    if s.nats_creds_file:
        opts["user_credentials"] = str(readable_file("nats_creds_file", s.nats_creds_file))
    if s.nats_nkey_seed_file:
        opts["nkeys_seed"] = str(readable_file("nats_nkey_seed_file", s.nats_nkey_seed_file))
    tls = _tls_context(s)
    if tls is not None:
        opts["tls"] = tls
    if s.nats_tls_hostname:
        opts["tls_hostname"] = s.nats_tls_hostname
    return opts


class NatsRefusedError(ConnectionError):
    """The server (or its TLS certificate) refused us for a reason retrying cannot cure: wrong
    credentials, no permission to connect, a certificate that does not verify."""


# Refusals nats-py reports as plain ``nats.errors.Error`` text (server -ERR lines, TLS setup).
_REFUSAL_WORDS = ("authorization violation", "authentication", "ssl", "tls", "secure connection", "certificate")


def is_refusal(exc: BaseException) -> bool:
    """True for a failed connect that retrying cannot cure (see :class:`NatsRefusedError`)."""
    if isinstance(exc, ssl.SSLError):
        # A certificate that does not verify, a client certificate the server wants or refuses;
        # not a connection cut mid-handshake (a server restarting).
        return not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError)
    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    if isinstance(exc, nats.errors.Error):
        text = str(exc).lower()
        return any(word in text for word in _REFUSAL_WORDS)
    return False


async def connect_with_retry(
    settings: Settings,
    name: str,
    *,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    """Connect, retrying for ``settings.connect_timeout_s`` while the server is unreachable.

    Raises:
        ConfigError: unusable credential/TLS settings (nothing was tried).
        NatsRefusedError: the server refused the credentials, or TLS verification failed
            (raised at the first such refusal, not after the timeout).
        ConnectionError: still unreachable when the time is up.
    """
    url = redact(settings.nats_url)  # a URL may carry user:password@ or token@
    opts = connect_options(settings, name)
    deadline = time.monotonic() + settings.connect_timeout_s
    connected = False
    attempts = 0
    last_error: BaseException | None = None
    refusal_error: BaseException | None = None  # the first refusal: what the user must fix
    refused = asyncio.Event()

    async def _error_cb(exc: Exception) -> None:
        nonlocal attempts, last_error, refusal_error
        if connected:
            log.warning("nats error: %s", exc)
            return
        if refused.is_set():  # giving up already; later errors (a broken pipe...) say less
            return
        attempts += 1
        last_error = exc
        if is_refusal(exc):
            refusal_error = exc
            refused.set()
        elif attempts == 1 or attempts % 10 == 0:
            log.warning("nats at %s not reachable yet (%s); retrying", url, exc)

    async def _reconnected_cb() -> None:
        log.info("reconnected to nats")
        if on_reconnect is not None:
            await on_reconnect()

    async def _disconnected_cb() -> None:
        if not connected:  # a failed initial attempt, or the close after giving up
            return
        log.info("disconnected from nats")
        if on_disconnect is not None:
            await on_disconnect()

    while True:
        # nats-py retries inside connect() (it never returns while the server is down); this
        # loop only restarts a connect() that raised, and stops at a refusal or the deadline.
        nc = nats.NATS()
        connecting = asyncio.create_task(
            nc.connect(**opts, error_cb=_error_cb, reconnected_cb=_reconnected_cb, disconnected_cb=_disconnected_cb)
        )
        refusal = asyncio.create_task(refused.wait())
        try:
            await asyncio.wait(
                {connecting, refusal}, timeout=max(deadline - time.monotonic(), 0), return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            connecting.cancel()
            raise
        finally:
            refusal.cancel()
        if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
            connected = True
            return nc
        connecting.cancel()
        await asyncio.wait({connecting})
        if not connecting.cancelled() and connecting.exception() is not None:
            last_error = connecting.exception()
            attempts += 1
            if refusal_error is None and is_refusal(last_error):
                refusal_error = last_error
        try:
            await nc.close()
        except Exception:  # noqa: BLE001 - nothing to close after a failed connect
            pass
        if refusal_error is not None:
            raise NatsRefusedError(
                f"NATS at {url} refused the connection: {redact(str(refusal_error))}. Check the credentials and "
                "TLS settings (CRYOBUS_NATS_USER/PASSWORD, _TOKEN, _NKEY_SEED_FILE, _CREDS_FILE, _TLS_*; docs/security.md)"
            ) from None
        if time.monotonic() + 0.5 >= deadline:
            reason = redact(str(last_error)) if last_error is not None else "no answer"
            raise ConnectionError(
                f"could not connect to NATS at {url} within {settings.connect_timeout_s:g} s "
                f"after {attempts} attempt(s): {reason}"
            ) from None
        await asyncio.sleep(0.5)
