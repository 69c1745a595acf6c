"""Reading back what a run did from the events stream: the ``cryobus up`` summary.

Everything is learned from events (artifacts are announced, never found by listing): the
artifacts written, the inputs reported missing, the failures and their reasons.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from cryobus.shared.bus.replay import replay
from cryobus.shared.bus.topology import EVENTS_STREAM
from cryobus.shared.events import (
    ArtifactStored,
    Envelope,
    IngestScanCompleted,
    InputMissing,
    MetadataUpdated,
    ProcessingFailed,
)


async def read_events(js: Any, start_seq: int, subject: str = "cryobus.events.>") -> list[Envelope[Any]]:
    """All events on ``subject`` with stream sequence > ``start_seq``, in stream order."""
    return await replay(js, EVENTS_STREAM, [subject], after_seq=start_seq)


async def scanned_roots(js: Any, start_seq: int) -> set[str]:
    """Roots that ingest reported fully scanned since ``start_seq``."""
    events = await read_events(js, start_seq, IngestScanCompleted.static_subject())
    return {e.data.root for e in events if isinstance(e.data, IngestScanCompleted)}


@dataclass
class RunSummary:
    """What one run produced, by dataset."""

    artifacts: dict[str, dict[str, ArtifactStored]] = field(default_factory=lambda: defaultdict(dict))
    missing: dict[str, InputMissing] = field(default_factory=dict)
    failures: list[ProcessingFailed] = field(default_factory=list)
    tables: dict[str, MetadataUpdated] = field(default_factory=dict)
    discovered: int = 0

    def render(self, *, restarts: dict[str, int] | None = None) -> str:
        lines = ["", "cryobus run summary", "==================="]
        lines.append(f"inputs discovered: {self.discovered}")
        for dataset, arts in sorted(self.artifacts.items()):
            by_role: dict[str, list[ArtifactStored]] = defaultdict(list)
            for a in arts.values():
                by_role[a.role].append(a)
            lines.append(f"dataset {dataset}: {len(arts)} artifacts")
            for role, items in sorted(by_role.items()):
                items.sort(key=lambda a: a.key)
                folder = items[0].uri.rsplit("/", 1)[0]
                lines.append(f"  {role}: {len(items)} in {folder}/")
                for a in items[:3] if len(items) > 3 else items:
                    lines.append(f"    {a.uri}")
                if len(items) > 3:
                    lines.append(f"    ... and {len(items) - 3} more")
        if self.missing:
            lines.append(f"missing referenced files: {len(self.missing)} (reported once each)")
            for m in sorted(self.missing.values(), key=lambda m: m.path)[:10]:
                lines.append(f"  {m.path} (referenced by {m.referenced_by}, {m.field})")
            if len(self.missing) > 10:
                lines.append(f"  ... and {len(self.missing) - 10} more")
        lines.append(f"failures: {len(self.failures)}")
        for f in self.failures:
            where = f" file={f.file}" if f.file else ""
            fld = f" field={f.field}" if f.field else ""
            lines.append(f"  [{f.service}] {f.error_class}: {f.reason}{where}{fld}")
        if restarts:
            lines.append("service restarts: " + ", ".join(f"{k}={v}" for k, v in sorted(restarts.items())))
        return "\n".join(lines)


def summarise(events: list[Envelope[Any]]) -> RunSummary:
    s = RunSummary()
    seen_failures: set[str] = set()
    for e in events:
        d = e.data
        if isinstance(d, ArtifactStored):
            s.artifacts[d.dataset][d.key] = d  # latest version of each key
        elif isinstance(d, InputMissing):
            s.missing.setdefault(d.path, d)
        elif isinstance(d, ProcessingFailed):
            if e.id not in seen_failures:
                seen_failures.add(e.id)
                s.failures.append(d)
        elif isinstance(d, MetadataUpdated):
            s.tables[d.dataset] = d
        elif e.type in ("cryobus.exposure.discovered.v1", "cryobus.job.discovered.v1"):
            s.discovered += 1
    return s


async def collect_summary(js: Any, start_seq: int) -> RunSummary:
    return summarise(await read_events(js, start_seq))
