"""Versioned event models and their CloudEvents envelope (see docs/events.md)."""

from cryobus.shared.events.envelope import Envelope, new_event_id, stable_event_id
from cryobus.shared.events.models import (
    EVENT_TYPES,
    ArtifactStored,
    EventData,
    ExposureDiscovered,
    IngestRequested,
    IngestScanCompleted,
    InputMissing,
    JobDiscovered,
    LabelRecorded,
    MetadataUpdated,
    PortalMetadataWritten,
    ProcessingFailed,
    RenderCompleted,
    RenderRequested,
    TrainingSetExported,
    event_class_for_type,
)

__all__ = [
    "EVENT_TYPES",
    "ArtifactStored",
    "Envelope",
    "EventData",
    "ExposureDiscovered",
    "IngestRequested",
    "IngestScanCompleted",
    "InputMissing",
    "JobDiscovered",
    "LabelRecorded",
    "MetadataUpdated",
    "PortalMetadataWritten",
    "ProcessingFailed",
    "RenderCompleted",
    "RenderRequested",
    "TrainingSetExported",
    "event_class_for_type",
    "new_event_id",
    "stable_event_id",
]
