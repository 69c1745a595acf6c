"""JSON Schema of every event, generated from the models (never written by hand)."""

from __future__ import annotations

import json
from pathlib import Path

from cryobus.shared.events.envelope import Envelope
from cryobus.shared.events.models import EVENT_TYPES, ProcessingFailed


def event_schemas() -> dict[str, dict]:
    """``{type: JSON Schema of its envelope}``; failures are keyed ``cryobus.<service>.failed.v1``."""
    out = {}
    for model in EVENT_TYPES:
        name = "cryobus.<service>.failed.v1" if model is ProcessingFailed else model.static_type()
        schema = Envelope[model].model_json_schema(by_alias=True)  # type: ignore[valid-type]
        schema["title"] = name
        schema["description"] = (model.__doc__ or "").strip()
        schema["x-nats-subject"] = (
            "cryobus.events.<service>.failed" if model is ProcessingFailed else model.static_subject()
        )
        out[name] = schema
    return out


def write_schemas(folder: Path) -> list[Path]:
    """Write one ``<type>.json`` per event into ``folder``; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in event_schemas().items():
        path = folder / f"{name.replace('<service>', 'SERVICE')}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths
