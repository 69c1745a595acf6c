"""Structured JSON logs on stderr, one object per line (DESIGN.md, "Operations").

Each line carries ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``service``
and, while an :func:`event_context` is active, ``event_id``, ``correlation_id`` and
``event_type``; ``exc`` holds the formatted traceback of a record logged with ``exc_info``,
and keys passed through ``extra=`` are kept. The event fields come from contextvars, so they
follow asyncio tasks and reach worker threads started with ``asyncio.to_thread`` or
``contextvars.copy_context().run`` (both copy the context).

Secrets never reach the log: :func:`redact` masks ``user:password@`` in URLs, values of
password/secret/token-like keys (``password=``, ``AWS_SECRET_ACCESS_KEY=``...) and NATS nkey
seeds, in messages, their arguments, tracebacks and extras.

Usage::

    configure_logging("render", level="INFO")
    with event_context(env.id, env.correlation_id, env.type):
        log.info("rendered %s", key)
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

_EVENT_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("cryobus_event_id", default=None)
_CORRELATION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("cryobus_correlation_id", default=None)
_EVENT_TYPE: contextvars.ContextVar[str | None] = contextvars.ContextVar("cryobus_event_type", default=None)
_CONTEXT_FIELDS = (("event_id", _EVENT_ID), ("correlation_id", _CORRELATION_ID), ("event_type", _EVENT_TYPE))

# ---------------------------------------------------------------------------------- redaction

_MASK = "***"
# Words that make a key name a secret (AWS_SECRET_ACCESS_KEY, nats_password, api-key...).
_SECRET_WORDS = (
    r"(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|credential|nkey[_-]?seed|authorization)"
)
_SECRET_KEY = re.compile(rf"(?i){_SECRET_WORDS}")
_REDACTIONS: tuple[tuple[re.Pattern[str], Any], ...] = (
    # scheme://user:password@host → scheme://user:***@host (nats, tls, s3, http, redis...).
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+@"), rf"\1{_MASK}@"),
    # A bare userinfo in a NATS URL is a token (nats://s3cr3t@host).
    (re.compile(r"(\b(?:nats|tls|ws|wss)://)[^\s:/@]+@"), rf"\1{_MASK}@"),
    # NKey seeds: 'S' + key-type letter + 56 base32 chars (user seeds start "SU"); nkeys spec.
    (re.compile(r"\bS[UAONCXP][A-Z2-7]{56}\b"), _MASK),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), rf"\1{_MASK}"),
    # key=value / key: value / "key": "value" where the key names a secret; a quoted value is
    # masked up to its closing quote.
    (
        re.compile(
            rf"(?i)(\b[\w.-]*{_SECRET_WORDS}[\w-]*[\"']?\s*[=:]\s*)"
            r"(\"[^\"]*\"|'[^']*'|[^\s\"',;&)}\]]+)"
        ),
        lambda m: m.group(1) + _quote_like(m.group(2), _MASK),
    ),
)


def _quote_like(value: str, mask: str) -> str:
    # Keep the quotes of a quoted value so the surrounding text (JSON, a dict repr) stays well formed.
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[0] + mask + value[0]
    return mask


def redact(text: str) -> str:
    """Mask secrets in ``text``.

    Masks: the password of ``scheme://user:password@`` URLs (→ ``scheme://user:***@``), the
    token of ``nats://token@`` URLs, NATS nkey seeds (``SU`` + 56 base32 chars and the other
    seed types), values after keys naming a secret (password, passwd, pwd, secret, token,
    api_key, access_key, private_key, credential(s), nkey_seed, authorization: e.g.
    ``password=x``, ``AWS_SECRET_ACCESS_KEY: x``, ``"token": "x"``) and bearer tokens.
    Errs on the side of masking: a value after any key containing e.g. ``token`` is masked.

    Args:
        text: any string.

    Returns:
        The string with each secret replaced by ``***``.
    """
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (with its arguments merged in) through :func:`redact`.

    Attach it to a handler (not a logger) so it sees records from every logger.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is logging's own error to report
            return True
        record.msg, record.args = redact(message), None
        return True


# ---------------------------------------------------------------------------------- context


@contextlib.contextmanager
def event_context(event_id: str | None, correlation_id: str | None, event_type: str | None) -> Iterator[None]:
    """Tag every log line emitted inside the block with the event being handled.

    Sets contextvars, so the tags are per asyncio task and are inherited by worker threads
    started with ``asyncio.to_thread`` / ``contextvars.copy_context().run`` from inside the
    block. ``None`` leaves a field out. Blocks nest; leaving one restores the outer values.

    Args:
        event_id: the envelope's ``id``.
        correlation_id: the envelope's ``correlation_id`` (shared by an event and all it caused).
        event_type: the envelope's ``type``, e.g. ``"cryobus.micrograph.landed.v1"``.
    """
    tokens = (_EVENT_ID.set(event_id), _CORRELATION_ID.set(correlation_id), _EVENT_TYPE.set(event_type))
    try:
        yield
    finally:
        _EVENT_TYPE.reset(tokens[2])
        _CORRELATION_ID.reset(tokens[1])
        _EVENT_ID.reset(tokens[0])


class _ContextFilter(logging.Filter):
    # Runs in the emitting thread, so it reads that thread's context.
    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT_FIELDS:
            value = var.get()
            if value is not None and getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


# ---------------------------------------------------------------------------------- format

_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_CONTEXT_NAMES = tuple(name for name, _ in _CONTEXT_FIELDS)  # a tuple: fixed field order in the output


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, service, event fields, exc, extras.

    Args:
        service: the value of the ``service`` field.
    """

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        created = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        out: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "service": self.service,
        }
        for name in _CONTEXT_NAMES:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in _CONTEXT_NAMES and key not in out:
                out[key] = _redact_value(value, key)
        return json.dumps(out, ensure_ascii=False, default=lambda v: redact(str(v)))


def _redact_value(value: Any, key: str = "") -> Any:
    # Extras: a value under a key that names a secret is masked whole; the rest is scanned.
    if _SECRET_KEY.search(key) and not isinstance(value, dict | list | tuple | set | frozenset):
        return None if value is None else _MASK
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    return redact(str(value))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    # Looks sys.stderr up at each emit (like logging.lastResort), so a stream swapped later,
    # e.g. by pytest's capsys, still receives the lines.
    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send all logging to stderr as JSON lines tagged with ``service``; idempotent.

    Replaces every handler on the root logger with one JSON stderr handler carrying the
    event-context and redaction filters, sets the root level, and routes ``warnings`` through
    logging.

    Args:
        service: service name for the ``service`` field, e.g. ``"render"``.
        level: ``"DEBUG"``, ``"INFO"``, ``"WARNING"``, ``"ERROR"`` or ``"CRITICAL"``
            (case-insensitive).

    Raises:
        ValueError: ``level`` is not a logging level name.
    """
    levels = logging.getLevelNamesMapping()
    if level.upper() not in levels:
        raise ValueError(f"unknown log level {level!r}; expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    handler = _StderrHandler()
    handler.addFilter(_ContextFilter())
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, _StderrHandler):  # ours; others may still be held by their owner
            old.close()
    root.addHandler(handler)
    root.setLevel(levels[level.upper()])
    logging.captureWarnings(True)
