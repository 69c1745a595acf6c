"""CloudEvents 1.0 envelope around a typed pydantic payload.

Wire format: one JSON object per NATS message with the CloudEvents attributes ``specversion``,
``id``, ``source``, ``type``, ``time``, ``subject``, ``dataschema``, ``datacontenttype``, the
cryobus extensions ``correlationid`` / ``causationid`` (CloudEvents extension names must be
lower-case alphanumerics, so they are spelled without underscores on the wire) and ``data``.

The envelope ``id`` doubles as the ``Nats-Msg-Id`` header, so re-publishing the same fact is
de-duplicated by the server (DESIGN.md, "Events").
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from cryobus.shared.events.models import EventData, event_class_for_type

D = TypeVar("D", bound=EventData)

_NAMESPACE = uuid.UUID("6f0c7f4e-2b7e-4b8e-9a51-6372796f6275")


def new_event_id() -> str:
    """A fresh random id (for facts that must never be de-duplicated, e.g. reprocessing)."""
    return str(uuid.uuid4())


def stable_event_id(*parts: object) -> str:
    """A content-derived id: the same parts always give the same id (UUID v5 over ``parts``).

    Used for discovery (dataset, path, size, mtime) and for every follow-up event (cause id,
    key), so a rescan or a redelivered message publishes the same ids and the server drops the
    duplicates inside its ``duplicate_window``.
    """
    text = "\x1f".join(str(p) for p in parts)
    return str(uuid.uuid5(_NAMESPACE, text))


def content_digest(*parts: object) -> str:
    """Short hex digest of ``parts`` (12 hex chars), e.g. for parameter hashes in keys."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode())
    return h.hexdigest()[:12]


class Envelope(BaseModel, Generic[D]):
    """A cryobus event: CloudEvents 1.0 attributes plus a typed ``data`` payload.

    Attributes:
        id: unique id; also the ``Nats-Msg-Id`` used for server-side de-duplication.
        source: URI-reference of the producer, ``/cryobus/<service>``.
        type: ``cryobus.<domain>.<verb>.v<major>``; within a major version, changes are additive.
        time: when the fact happened (UTC).
        subject: what the event is about, e.g. ``<dataset>/<micrograph_name>``.
        dataschema: ``urn:cryobus:schema:<type>``; the schema is written by ``cryobus schema``.
        correlation_id: the run that caused this event (kept across a whole causal chain).
        causation_id: the id of the event that directly caused this one, if any.
        data: the typed payload.
    """

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str
    type: str
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = None
    dataschema: str | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    correlation_id: str = Field(alias="correlationid")
    causation_id: str | None = Field(default=None, alias="causationid")
    data: D

    @classmethod
    def wrap(
        cls,
        data: EventData,
        *,
        source: str,
        id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        subject: str | None = None,
    ) -> Envelope[Any]:
        """Build the envelope for ``data``; a new correlation id starts a new run."""
        event_id = id or new_event_id()
        return Envelope[type(data)](  # type: ignore[misc]
            id=event_id,
            source=source,
            type=data.event_type(),
            subject=subject if subject is not None else data.about(),
            dataschema=f"urn:cryobus:schema:{data.event_type()}",
            correlationid=correlation_id or event_id,
            causationid=causation_id,
            data=data,
        )

    def to_json(self) -> bytes:
        """Serialise with the wire (alias) names."""
        return self.model_dump_json(by_alias=True).encode()

    @property
    def nats_subject(self) -> str:
        """The NATS subject this event is published on."""
        return self.data.nats_subject()


def parse_envelope(raw: bytes) -> Envelope[Any]:
    """Parse one wire message into a typed envelope.

    Raises:
        cryobus.shared.errors.InputError: not JSON, unknown ``type``, or a payload that does not
            validate against the model of its type (the message names the bad field).
    """
    import json

    from pydantic import ValidationError

    from cryobus.shared.errors import InputError

    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"event is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InputError("event is not a JSON object")
    etype = obj.get("type")
    data_cls = event_class_for_type(etype) if isinstance(etype, str) else None
    if data_cls is None:
        raise InputError(f"unknown event type {etype!r}", field="type")
    try:
        return Envelope[data_cls].model_validate(obj)  # type: ignore[valid-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise InputError(f"invalid {etype} event: {first['msg']}", field=loc) from exc
