"""The ingest service: turns files landing under the watched roots into discovery events.

Two ways in: a background loop that scans every root at start, then again whenever the
watcher (inotify, plus a polling rescan for NFS/GPFS) reports a change; and the
``cryobus.commands.ingest.requested`` command that ``cryobus ingest PATH`` sends.

Each complete input is announced once: its event id is derived from its content
(dataset, path, size, mtime), the stream de-duplicates a re-publish inside its window, and a
local ledger remembers announced ids beyond it. Refused paths (outside the roots, symlinks
leading out, MRCs that stay shorter than their header promises) are announced once as
``cryobus.events.ingest.failed`` naming the file and the reason. After a scan of a root has
nothing pending, ingest says so (``ingest.scanned``) — which is how ``cryobus up
--exit-when-idle`` knows discovery is complete.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from cryobus.services.ingest.ledger import Ledger
from cryobus.services.ingest.recognise import MRC_LIKE_SUFFIXES, ScanResult, discovery_id, scan_tree
from cryobus.services.ingest.roots import AllowedRoots, dataset_name
from cryobus.services.ingest.stability import StabilityTracker
from cryobus.shared.bus.service import HandlerContext, Service
from cryobus.shared.errors import InputError
from cryobus.shared.events import Envelope, IngestRequested, IngestScanCompleted, ProcessingFailed, stable_event_id

log = logging.getLogger(__name__)
service = Service(name="ingest")


class Ingest:
    """Ingest's state in one replica: roots, stability tracker and ledger."""

    def __init__(self, watched: list[Path], *, state_dir: Path, settle_s: float, truncated_after_s: float,
                 dataset: str | None, extra_roots: list[Path] = ()):
        roots = [*watched, *extra_roots]
        self.allowed = AllowedRoots(roots) if roots else None
        self.watched = [Path(w).resolve() for w in watched]
        self.tracker = StabilityTracker(settle_s)
        self.ledger = Ledger(Path(state_dir) / "ingest" / "ledger.sqlite")
        self.truncated_after_s = truncated_after_s
        self.dataset = dataset

    def scan(self, path: Path, dataset: str | None = None) -> ScanResult:
        """One scan of ``path`` (a root, or anything inside one)."""
        if self.allowed is None:
            raise InputError("ingest has no configured roots (set --watch / --root)", file=str(path))
        root = self.allowed.root_of(path)
        name = dataset or dataset_name(root, self.dataset)
        return scan_tree(path, dataset=name, allowed=self.allowed, is_stable=self.tracker.is_stable)

    def truncated(self, result: ScanResult) -> list[tuple[Path, str]]:
        """Pending MRCs that stopped changing long ago while still shorter than their header promises."""
        from cryobus.shared.formats.mrc import read_header

        out = []
        now = time.time()
        for path in result.pending:
            if path.suffix.lower() not in MRC_LIKE_SUFFIXES:
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if now - st.st_mtime < self.truncated_after_s:
                continue
            try:
                read_header(path)
            except InputError as exc:
                out.append((path, exc.reason))
        return out


def _failure(path: Path, reason: str, dataset: str) -> tuple[ProcessingFailed, str]:
    try:
        st = os.lstat(path)
        version = (st.st_size, st.st_mtime_ns)
    except OSError:
        version = (None, None)
    event = ProcessingFailed(
        service="ingest", reason=reason, file=str(path), error_class="permanent",
        failed_subject=IngestRequested.static_subject(), deliveries=1, dataset=dataset,
    )
    return event, stable_event_id("ingest-refused", str(path), *version, reason)


async def _announce(rt, ingest: Ingest, result: ScanResult) -> int:
    """Publish what a scan found (and refused) that was not announced before; returns how many are new."""
    new = 0
    for discovery in result.found:
        event_id = discovery_id(discovery)
        if ingest.ledger.seen(event_id):
            continue
        await rt.publish(discovery, id=event_id)
        ingest.ledger.add(event_id)
        new += 1
    for path, reason in [*result.refused, *ingest.truncated(result)]:
        event, event_id = _failure(path, reason, result.dataset)
        if ingest.ledger.seen(event_id):
            continue
        log.warning("refused %s: %s", path, reason)
        await rt.publish(event, id=event_id)
        ingest.ledger.add(event_id)
        new += 1
    return new


def _ingest(rt) -> Ingest:
    if not hasattr(rt, "_ingest"):
        s = rt.settings
        rt._ingest = Ingest(
            [Path(w) for w in s.watch], state_dir=s.state_dir, settle_s=s.settle_s,
            truncated_after_s=s.truncated_after_s, dataset=s.dataset, extra_roots=[Path(r) for r in s.roots],
        )
    return rt._ingest


@service.on_start
async def watch_roots(rt) -> None:
    """Scan every root, then rescan a root whenever the watcher reports a change under it."""
    from cryobus.services.ingest.watcher import FolderWatcher

    ingest = _ingest(rt)
    if not ingest.watched:
        log.info("no folders to watch; serving `cryobus ingest` requests only")
        return
    roots = list(ingest.watched)
    loop = asyncio.get_running_loop()
    dirty: set[Path] = set(roots)
    wake = asyncio.Event()

    def on_change(path: Path) -> None:
        def mark() -> None:
            for root in roots:
                if Path(path) == root or Path(path).is_relative_to(root):
                    dirty.add(root)
                    break
            wake.set()

        loop.call_soon_threadsafe(mark)

    watcher = FolderWatcher(roots, on_change, poll_interval_s=rt.settings.poll_interval_s)
    watcher.start()
    reported: dict[Path, bool] = {}
    try:
        while True:
            for root in sorted(dirty):
                dirty.discard(root)
                try:
                    result = await asyncio.to_thread(ingest.scan, root)
                except InputError as exc:
                    log.error("cannot scan %s: %s", root, exc)
                    continue
                new = await _announce(rt, ingest, result)
                waiting = [p for p in result.pending if p not in {t for t, _ in ingest.truncated(result)}]
                if waiting:
                    dirty.add(root)  # look again once they settle
                elif new or not reported.get(root):
                    await rt.publish(
                        IngestScanCompleted(
                            dataset=result.dataset, root=str(root), inputs_announced=len(result.found),
                            inputs_refused=len(result.refused),
                        )
                    )
                    reported[root] = True
            wake.clear()
            timeout = rt.settings.settle_s if dirty else rt.settings.poll_interval_s
            try:
                await asyncio.wait_for(wake.wait(), timeout=max(timeout, 0.1))
            except TimeoutError:
                if not dirty:
                    dirty.update(roots)  # periodic full rescan: cheap, and catches what watchers miss
    finally:
        watcher.stop()


@service.handler(IngestRequested)
def on_request(event: Envelope[IngestRequested], ctx: HandlerContext) -> None:
    """``cryobus ingest PATH``: scan the paths once and announce what is new."""
    ingest = _ingest(ctx._runtime)
    for raw in event.data.paths:
        result = ingest.scan(Path(raw), event.data.dataset)  # InputError (outside roots...) → ingest.failed
        for discovery in result.found:
            event_id = discovery_id(discovery)
            if not ingest.ledger.seen(event_id):
                ctx.emit(discovery, event_id=event_id)
        for path, reason in [*result.refused, *ingest.truncated(result)]:
            failure, event_id = _failure(path, reason, result.dataset)
            ctx.emit(failure, event_id=event_id)
        if result.pending:
            ctx.log.info("%d file(s) under %s are still being written; the watcher will pick them up",
                         len(result.pending), raw)
