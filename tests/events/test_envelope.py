"""The event contract: CloudEvents envelope, versioned types, stable ids, generated schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cryobus.shared.errors import InputError
from cryobus.shared.events import Envelope, ExposureDiscovered, JobDiscovered, ProcessingFailed, stable_event_id
from cryobus.shared.events.envelope import parse_envelope
from cryobus.shared.events.schema import event_schemas

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def _exposure(**kw) -> ExposureDiscovered:
    base = dict(dataset="grid1", path="/data/grid1/mic_001.mrc", micrograph_name="mic_001", file_format="mrc",
                size_bytes=1024, mtime_ns=1)
    base.update(kw)
    return ExposureDiscovered(**base)


def test_envelope_round_trips_with_cloudevents_attributes():
    env = Envelope.wrap(_exposure(), source="/cryobus/ingest", correlation_id="run-1", causation_id="cause-1")
    wire = json.loads(env.to_json())
    assert wire["specversion"] == "1.0" and wire["type"] == "cryobus.exposure.discovered.v1"
    assert wire["correlationid"] == "run-1" and wire["causationid"] == "cause-1"
    assert wire["subject"] == "grid1/mic_001" and wire["dataschema"] == "urn:cryobus:schema:cryobus.exposure.discovered.v1"
    back = parse_envelope(env.to_json())
    assert isinstance(back.data, ExposureDiscovered) and back.data == env.data and back.id == env.id
    assert back.nats_subject == "cryobus.events.exposure.discovered"


def test_failed_events_are_typed_per_service():
    failed = ProcessingFailed(service="render", reason="truncated", file="/x.mrc", error_class="permanent",
                              failed_subject="cryobus.events.exposure.discovered", deliveries=1)
    env = Envelope.wrap(failed, source="/cryobus/render")
    assert env.type == "cryobus.render.failed.v1" and env.nats_subject == "cryobus.events.render.failed"
    assert isinstance(parse_envelope(env.to_json()).data, ProcessingFailed)


@pytest.mark.parametrize(
    "raw, field",
    [
        (b"not json", None),
        (b'{"type": "cryobus.nope.v1"}', "type"),
        (json.dumps({"specversion": "1.0", "id": "1", "source": "/t", "type": "cryobus.exposure.discovered.v1",
                     "correlationid": "1", "data": {"dataset": "d"}}).encode(), "data.path"),
    ],
)
def test_malformed_events_are_input_errors_naming_the_field(raw, field):
    with pytest.raises(InputError) as info:
        parse_envelope(raw)
    assert info.value.field == field


def test_unknown_payload_fields_are_refused():
    with pytest.raises(ValueError):
        JobDiscovered(dataset="d", software="relion", job_type="CtfFind", project_dir="/p", job_dir="/p/CtfFind/job005",
                      files={}, fingerprint="x", surprise=1)


def test_stable_ids_depend_only_on_their_parts():
    assert stable_event_id("d", "/p", 1, 2) == stable_event_id("d", "/p", 1, 2)
    assert stable_event_id("d", "/p", 1, 2) != stable_event_id("d", "/p", 1, 3)


def test_committed_schemas_are_the_generated_ones():
    generated = event_schemas()
    committed = {p.stem.replace("SERVICE", "<service>"): json.loads(p.read_text()) for p in SCHEMAS.glob("*.json")}
    assert committed == generated, "run `make schema` and commit docs/schemas"
