"""Who is labelling: sign-in, sessions and CSRF protection for the labelling web app.

Two ways in (docs/labelling.md, "Signing in"):

* **E-mail + shared access token** (default): the sign-in form asks for the labeler's e-mail
  address (their identity; grades are stored under it) and the facility's access token
  (``CRYOBUS_LABELLING_ACCESS_TOKEN``, compared in constant time). The e-mail is not verified:
  the token is what keeps strangers out, the e-mail only tells labelers apart.
* **Trusted reverse-proxy header**: with ``CRYOBUS_LABELLING_TRUSTED_HEADER`` set (e.g.
  ``X-Forwarded-Email``, as oauth2-proxy sends it), a request coming *from an address in*
  ``CRYOBUS_LABELLING_TRUSTED_PROXIES`` (default: loopback only) is signed in as the e-mail in
  that header. From any other address the header is ignored, so a client cannot claim an
  identity by sending it; the app must then only be reachable through the proxy.

Sessions are random 256-bit tokens in an ``HttpOnly``, ``SameSite=Lax`` cookie (``Secure`` when
configured), stored server-side as their sha256 with a per-session CSRF token. Every
state-changing request must carry that CSRF token (form field ``csrf_token`` or header
``X-CSRF-Token``); the sign-in form is protected by a double-submit cookie.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass, field

from starlette.requests import Request

from cryobus.services.labelling.store import LabelStore

SESSION_COOKIE = "cryobus_session"
SIGNIN_COOKIE = "cryobus_signin"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
_EMAIL = re.compile(r"^[^@\s<>\"'`]+@[^@\s<>\"'`]+\.[^@\s<>\"'`]+$")


@dataclass(frozen=True)
class AuthConfig:
    """How labelers sign in.

    Attributes:
        access_token: the shared token of the sign-in form; ``None`` disables that form.
        trusted_header: request header carrying the e-mail set by a trusted reverse proxy.
        trusted_proxies: client addresses whose ``trusted_header`` is believed.
        cookie_secure: mark cookies ``Secure`` (the app is served over HTTPS).
    """

    access_token: str | None = None
    trusted_header: str | None = None
    trusted_proxies: frozenset[str] = field(default_factory=lambda: frozenset({"127.0.0.1", "::1"}))
    cookie_secure: bool = False


@dataclass(frozen=True)
class User:
    """A signed-in labeler."""

    labeler_id: int
    email: str
    csrf: str


class NotSignedIn(Exception):
    """Raised by :func:`require_user`; the app answers with a redirect (pages) or 401 (API)."""


class CsrfFailed(Exception):
    """A state-changing request without the session's CSRF token."""


def normalise_email(raw: str) -> str | None:
    """Lower-cased, trimmed e-mail, or ``None`` when it does not look like one (max 254 chars)."""
    email = (raw or "").strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
        return None
    return email


def token_matches(config: AuthConfig, given: str) -> bool:
    """Constant-time comparison with the configured access token (False when none is configured)."""
    if not config.access_token:
        return False
    return hmac.compare_digest((given or "").encode(), config.access_token.encode())


def current_user(request: Request, store: LabelStore, config: AuthConfig) -> User | None:
    """The labeler making ``request``: from the trusted proxy header, else from the session cookie.

    A proxy-identified labeler without a matching session gets one; its cookie is set on the
    response (``request.state.set_session``).
    """
    token = request.cookies.get(SESSION_COOKIE)
    session = store.session(token) if token else None
    proxied = _proxy_email(request, config)
    if proxied is not None:
        if session is not None and session[1] == proxied:
            return User(session[0], session[1], session[2])
        labeler_id = store.labeler_id(proxied)
        new_token, csrf = store.create_session(labeler_id)
        request.state.set_session = new_token
        return User(labeler_id, proxied, csrf)
    if session is None:
        return None
    return User(*session)


def _proxy_email(request: Request, config: AuthConfig) -> str | None:
    if not config.trusted_header:
        return None
    client = request.client.host if request.client else None
    if client not in config.trusted_proxies:
        return None
    raw = request.headers.get(config.trusted_header)
    return normalise_email(raw) if raw else None


def require_user(request: Request, store: LabelStore, config: AuthConfig) -> User:
    """:func:`current_user` or :class:`NotSignedIn`."""
    user = current_user(request, store, config)
    if user is None:
        raise NotSignedIn()
    return user


def check_csrf(user: User, given: str | None) -> None:
    """Raise :class:`CsrfFailed` unless ``given`` is the session's CSRF token."""
    if not given or not hmac.compare_digest(given.encode(), user.csrf.encode()):
        raise CsrfFailed()


def new_signin_nonce() -> str:
    """The double-submit token of the sign-in form (cookie + hidden field)."""
    return secrets.token_urlsafe(24)
