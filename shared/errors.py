"""Error classes that decide what the bus runtime does with a failed message.

DESIGN.md, "Delivery semantics": bad input is *permanent* (dead-lettered at once with a
``*.failed`` event), infrastructure trouble is *transient* (nak with backoff, dead-lettered
after ``max_deliver``). Any exception that is neither is treated as transient, so a bug
cannot loop forever: it exhausts ``max_deliver`` and lands in the dead-letter stream.
"""

from __future__ import annotations


class CryobusError(Exception):
    """Base class of every error cryobus raises on purpose."""


class InputError(CryobusError):
    """The input itself is wrong (corrupt MRC, missing STAR column, path outside the roots).

    Retrying cannot help, so the message is dead-lettered at once.

    Args:
        reason: what is wrong, in words a facility user understands.
        file: the offending file (path or URI), if any.
        field: the offending field/column/header word, if any.
    """

    def __init__(self, reason: str, *, file: str | None = None, field: str | None = None):
        self.reason = reason
        self.file = None if file is None else str(file)
        self.field = field
        parts = [reason]
        if file is not None:
            parts.append(f"file={self.file}")
        if field is not None:
            parts.append(f"field={field}")
        super().__init__("; ".join(parts))


class TransientError(CryobusError):
    """The world is down for now (store unreachable, disk full, NATS hiccup): retry later."""
