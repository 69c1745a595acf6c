"""The metadata service: per-dataset prismPYP tables, upserted as job outputs arrive.

Each discovered source — RELION CtfFind / MotionCorr / Extract, CryoSPARC exposures and
particles, a CTFFIND output folder, a NextPYP ``pkl/`` folder — is parsed into a *partial*
table (``services/metadata/table.py``). The partial is written to the store under
``_state/metadata/<dataset>/<source>/<job>.parquet`` and indexed in the service's JetStream KV
bucket (``<dataset>.<source>.<job>`` → store key, sha256, facts), so any replica, or this one
after a restart, can rebuild the dataset. The dataset's tables are then rebuilt from every
partial it has, joined by ``micrograph_name`` (never row position), and written:
``<dataset>/micrograph_metadata.csv`` (+ ``.parquet``), ``pixel_size.txt`` and
``all_micrographs_list.micrographs`` — announced by ``artifact.stored`` and ``metadata.updated``
(which also reports, per source, the micrographs it lacks).

NextPYP writes one pkl per micrograph as it goes: only new or changed pkls are parsed (by
size and mtime), and the cached :class:`IncrementalTable` updates just their rows.

Partials of one source are ordered newest job first (a re-run replaces values, older jobs fill
gaps); among CryoSPARC exposure jobs, one with CTFFIND cross-correlations comes first, so a later
Curate Exposures job on Patch CTF output does not hide CTFFIND's scores.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cryobus.services.metadata import (
    cryosparc_exposures,
    cryosparc_particles,
    ctffind_folder,
    nextpyp,
    prismpyp_layout,
    relion_table,
)
from cryobus.services.metadata.incremental import IncrementalTable
from cryobus.services.metadata.table import (
    CRYOSPARC_EXPOSURES,
    CRYOSPARC_PARTICLES,
    CTF_FIT_CTFFIND_CC,
    CTFFIND_OUTPUTS,
    NEXTPYP_PKL,
    RELION_CTF,
    RELION_MOTION,
    RELION_PARTICLES,
    Partial,
    merge_partials,
)
from cryobus.shared.bus.reprocess import enable_reprocessing
from cryobus.shared.bus.service import HandlerContext, Service
from cryobus.shared.errors import InputError
from cryobus.shared.events import Envelope, JobDiscovered, MetadataUpdated
from cryobus.shared.micrograph_names import micrograph_name

BUCKET = "cryobus_metadata"
service = Service(name="metadata", kv_buckets=[BUCKET])
# `cryobus reprocess --stage metadata`: its handlers re-run on the replayed events.
enable_reprocessing(service)

SOURCES = {
    ("relion", "CtfFind"): RELION_CTF,
    ("relion", "MotionCorr"): RELION_MOTION,
    ("relion", "Extract"): RELION_PARTICLES,
    ("cryosparc", "exposures"): CRYOSPARC_EXPOSURES,
    ("cryosparc", "particles"): CRYOSPARC_PARTICLES,
    ("ctffind", "ctffind_outputs"): CTFFIND_OUTPUTS,
    ("nextpyp", "pkl"): NEXTPYP_PKL,
}
# NextPYP rows remember the pkl they came from, so only new or changed pkls are parsed again.
_SIG_COLUMNS = ["_pkl", "_size", "_mtime_ns"]


@dataclass(frozen=True)
class SourceRecord:
    """The KV index entry of one stored partial."""

    source: str
    job: str
    job_number: int
    file: str
    key: str
    sha256: str
    pixel_size_A: float | None
    has_ctffind_cc: bool

    def sort_key(self) -> tuple:
        return (self.source, not self.has_ctffind_cc, -self.job_number, self.job)


def _kv_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _job_number(job_dir: str) -> int:
    m = re.search(r"(\d+)$", job_dir.rstrip("/"))
    return int(m.group(1)) if m else 0


def _job_id(job: JobDiscovered) -> str:
    """A key part that tells jobs of one source apart (CryoSPARC: job + file, e.g. exported groups)."""
    main = job.files.get("cs") or job.files.get("star") or job.files.get("dir") or job.files.get("pkl_dir") or job.job_dir
    return _kv_safe(f"{Path(job.job_dir).name}__{Path(main).name}")


# ---------------------------------------------------------------------------------- parsing


def _parse_relion(ctx: HandlerContext, job: JobDiscovered, source: str) -> tuple[pd.DataFrame, float | None]:
    star, project = Path(job.files["star"]), Path(job.project_dir)
    if source == RELION_CTF:
        return relion_table.ctf_rows(star, project)
    if source == RELION_MOTION:
        frame, missing = relion_table.motion_rows(star, project)
        for path, referenced_by, field in missing:
            ctx.report_missing(dataset=job.dataset, path=str(path), referenced_by=str(referenced_by), field=field)
        return frame, None
    return relion_table.particle_counts(star), None


def _parse_cryosparc_exposures(ctx: HandlerContext, job: JobDiscovered) -> tuple[pd.DataFrame, float | None]:
    frame, pixel_size, missing = cryosparc_exposures.exposure_rows(job.files["cs"])
    for path, referenced_by, field in missing:
        ctx.report_missing(dataset=job.dataset, path=str(path), referenced_by=str(referenced_by), field=field)
    return frame, pixel_size


def _parse_cryosparc_particles(ctx: HandlerContext, job: JobDiscovered) -> pd.DataFrame:
    path = job.files["cs"]
    try:
        return cryosparc_particles.particle_counts(path)
    except InputError as exc:
        if exc.field != cryosparc_particles.UID_FIELD:
            raise
    # Only micrograph uids: resolve them through the dataset's exposures partials.
    names: dict[int, str] = {}
    for record in _records(ctx, job.dataset):
        if record.source == CRYOSPARC_EXPOSURES:
            names.update(cryosparc_exposures.uid_names(_load_frame(ctx, record)))
    frame, unknown = cryosparc_particles.resolve_uids(cryosparc_particles.particle_counts_by_uid(path), names)
    if unknown:
        ctx.log.warning("%d micrograph uid(s) in %s match no known exposure (first: %s)", len(unknown), path, unknown[0])
    return frame


def _parse_ctffind(ctx: HandlerContext, job: JobDiscovered) -> tuple[pd.DataFrame, float | None]:
    frame, pixel_size, failures = ctffind_folder.ctffind_folder_rows(job.files["dir"])
    for file, reason, field in failures:
        ctx.fail_item(reason, file=file, field=field, dataset=job.dataset)
    return frame, pixel_size


_POOL_LOCK = threading.Lock()
_POOL: ProcessPoolExecutor | None = None


def _pkl_executor(n: int, threshold: int) -> ProcessPoolExecutor | None:
    """A long-lived worker pool for big pkl batches (unpickling is CPU-bound, ≈ 0.5 ms per pkl);
    below ``threshold`` new pkls one thread is faster than handing work to processes."""
    global _POOL
    if n < threshold or (os.cpu_count() or 1) < 2:
        return None
    with _POOL_LOCK:
        if _POOL is None:
            # forkserver: never fork a process that runs threads (the event loop, handler threads).
            _POOL = ProcessPoolExecutor(max_workers=os.cpu_count(), mp_context=multiprocessing.get_context("forkserver"))
        return _POOL


def _pkl_signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _parse_nextpyp(
    ctx: HandlerContext, job: JobDiscovered, previous: pd.DataFrame | None
) -> tuple[pd.DataFrame, float | None, list[str], bool]:
    """Parse only new or changed pkls, keep the other rows from ``previous``.

    Returns:
        (the whole partial frame with ``_pkl``/``_size``/``_mtime_ns`` signature columns, its pixel
        size, the names whose rows were (re)parsed, whether a pkl disappeared).
    """
    folder = Path(job.files["pkl_dir"])
    current = {str(p): sig for p in sorted(folder.glob("*.pkl")) if (sig := _pkl_signature(p)) is not None}
    known: dict[str, tuple[int, int]] = {}
    if previous is not None and set(_SIG_COLUMNS) <= set(previous.columns):
        known = {str(r._1): (int(r._2), int(r._3)) for r in previous[_SIG_COLUMNS].itertuples()}
    todo = [p for p, sig in current.items() if known.get(p) != sig]
    removed = any(p not in current for p in known)
    frame, _pixel, failures = nextpyp.pkl_rows([Path(p) for p in todo], executor=_pkl_executor(len(todo), ctx.settings.metadata_pool_threshold))
    for file, reason, field in failures:
        ctx.fail_item(reason, file=file, field=field, dataset=job.dataset)
    # A pkl's row is named after the pkl (the first pkl in sorted order wins a clash).
    pkl_of: dict[str, str] = {}
    for p in todo:
        pkl_of.setdefault(micrograph_name(p), p)
    pkls = [pkl_of[str(n)] for n in frame["micrograph_name"]]
    frame = frame.assign(
        _pkl=pkls, _size=[current[p][0] for p in pkls], _mtime_ns=[current[p][1] for p in pkls]
    )
    changed = [str(n) for n in frame["micrograph_name"]]
    if previous is not None and len(previous):
        kept = previous[~previous["_pkl"].isin(set(todo)) & previous["_pkl"].isin(set(current))]
        kept = kept[~kept["micrograph_name"].isin(set(changed))]
        frame = pd.concat([kept, frame], ignore_index=True) if len(kept) else frame
    frame = frame.sort_values("micrograph_name", kind="stable").reset_index(drop=True)
    sizes = frame["pixel_size_A"].dropna()
    pixel_size = None if sizes.empty else float(sizes.mode().iloc[0])
    return frame, pixel_size, changed, removed


# ---------------------------------------------------------------------------------- state


def _records(ctx: HandlerContext, dataset: str) -> list[SourceRecord]:
    items = ctx.kv_items(BUCKET, f"{_kv_safe(dataset)}.")
    return sorted((SourceRecord(**json.loads(value)) for value, _rev in items.values()), key=SourceRecord.sort_key)


def _load_frame(ctx: HandlerContext, record: SourceRecord) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(ctx.store.get(record.key)))


def _save_partial(
    ctx: HandlerContext, job: JobDiscovered, source: str, frame: pd.DataFrame, pixel_size: float | None
) -> SourceRecord:
    job_id = _job_id(job)
    file = job.files.get("cs") or job.files.get("star") or job.files.get("dir") or job.files.get("pkl_dir") or job.job_dir
    stored = ctx.put_artifact(
        f"_state/metadata/{job.dataset}/{source}/{job_id}.parquet", prismpyp_layout.table_parquet_bytes(frame),
        media_type="application/vnd.apache.parquet", role="metadata_source", dataset=job.dataset, inputs=[file],
    )
    record = SourceRecord(
        source=source, job=job_id, job_number=_job_number(job.job_dir), file=str(file), key=stored.key,
        sha256=stored.sha256, pixel_size_A=pixel_size,
        has_ctffind_cc=bool("ctf_fit_source" in frame and (frame["ctf_fit_source"] == CTF_FIT_CTFFIND_CC).any()),
    )
    ctx.kv_put(BUCKET, f"{_kv_safe(job.dataset)}.{_kv_safe(source)}.{job_id}", json.dumps(record.__dict__).encode())
    return record


class _TableCache:
    """Per replica: the last table built for each dataset and the partial versions it was built from."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[str, tuple[tuple[tuple[str, str], ...], IncrementalTable]] = {}

    def get(self, dataset: str, versions: tuple[tuple[str, str], ...]) -> IncrementalTable | None:
        with self._lock:
            hit = self._tables.get(dataset)
        return hit[1] if hit and hit[0] == versions else None

    def put(self, dataset: str, versions: tuple[tuple[str, str], ...], table: IncrementalTable) -> None:
        with self._lock:
            self._tables[dataset] = (versions, table)


_cache = _TableCache()


def _versions(records: list[SourceRecord]) -> tuple[tuple[str, str], ...]:
    return tuple((f"{r.source}/{r.job}", r.sha256) for r in records)


def _partials(ctx: HandlerContext, records: list[SourceRecord]) -> list[Partial]:
    return [Partial(r.source, _load_frame(ctx, r), r.file, r.pixel_size_A) for r in records]


# ---------------------------------------------------------------------------------- handler


@service.handler(JobDiscovered)
def on_job(event: Envelope[JobDiscovered], ctx: HandlerContext) -> None:
    """Parse one source into a partial, store it, and bring the dataset's tables up to date."""
    job = event.data
    from cryobus.services.metadata import tomography  # tilt series: CryoET portal metadata, not the table

    if tomography.handles(job):
        tomography.write_tilt_series(ctx, job)
        return
    source = SOURCES.get((job.software, job.job_type))
    if source is None:
        return  # e.g. Class2D, AutoPick: nothing for the metadata table
    records_before = _records(ctx, job.dataset)
    table: IncrementalTable | None = None
    if source == NEXTPYP_PKL:
        previous_record = next((r for r in records_before if r.source == source and r.job == _job_id(job)), None)
        cached = _cache.get(job.dataset, _versions(records_before))
        previous = _load_frame(ctx, previous_record) if previous_record else None
        frame, pixel_size, changed, removed = _parse_nextpyp(ctx, job, previous)
        record = _save_partial(ctx, job, source, frame, pixel_size)
        if cached is not None and previous_record is not None and not removed:
            rows = frame[frame["micrograph_name"].isin(changed)]
            if len(rows):
                cached.upsert(source, rows, file=record.file, pixel_size_A=pixel_size)
            table = cached
            ctx.log.info("table of %s updated in place: %d NextPYP row(s)", job.dataset, len(rows))
    else:
        if job.software == "relion":
            frame, pixel_size = _parse_relion(ctx, job, source)
        elif source == CRYOSPARC_EXPOSURES:
            frame, pixel_size = _parse_cryosparc_exposures(ctx, job)
        elif source == CRYOSPARC_PARTICLES:
            frame, pixel_size = _parse_cryosparc_particles(ctx, job), None
        else:
            frame, pixel_size = _parse_ctffind(ctx, job)
        _save_partial(ctx, job, source, frame, pixel_size)
    records = _records(ctx, job.dataset)
    if table is None:
        table = IncrementalTable(_partials(ctx, records))
    _cache.put(job.dataset, _versions(records), table)
    write_tables(ctx, job.dataset, table, records)


def write_tables(ctx: HandlerContext, dataset: str, table: IncrementalTable, records: list[SourceRecord]) -> None:
    """Write the dataset's prismPYP files from ``table`` and announce them."""
    merged = table.table()
    sources = sorted({r.file for r in records})
    csv = ctx.put_artifact(
        f"{dataset}/micrograph_metadata.csv", table.csv_bytes(),
        media_type="text/csv", role="metadata_table", dataset=dataset, inputs=sources,
    )
    parquet = ctx.put_artifact(
        f"{dataset}/micrograph_metadata.parquet", table.parquet_bytes(),
        media_type="application/vnd.apache.parquet", role="metadata_table_parquet", dataset=dataset, inputs=sources,
    )
    names = [str(n) for n in merged["micrograph_name"]]
    lst = ctx.put_artifact(
        f"{dataset}/all_micrographs_list.micrographs", prismpyp_layout.micrographs_list_bytes(names),
        media_type="text/plain", role="micrographs_list", dataset=dataset, inputs=sources,
    )
    pixel_uri = None
    if table.pixel_size_A:
        pixel_uri = ctx.put_artifact(
            f"{dataset}/pixel_size.txt", prismpyp_layout.pixel_size_txt(float(table.pixel_size_A)),
            media_type="text/plain", role="pixel_size", dataset=dataset, inputs=sources,
        ).uri
    unmatched = _unmatched(table.partials(), names)
    for source, missing in unmatched.items():
        ctx.log.warning("%d micrograph(s) of %s are not in %s (first: %s)", len(missing), dataset, source, missing[0])
    ctx.emit(
        MetadataUpdated(
            dataset=dataset, table_uri=csv.uri, pixel_size_uri=pixel_uri, micrographs_list_uri=lst.uri,
            micrographs=names, sources=sources, unmatched=unmatched, table_parquet_uri=parquet.uri,
        ),
        dedup_key=csv.sha256,
    )


def _unmatched(partials: list[Partial], names: list[str]) -> dict[str, list[str]]:
    """Per source (``source:file`` when a source has several partials), the names it lacks."""
    everyone = set(names)
    counts: dict[str, int] = {}
    for p in partials:
        counts[p.source] = counts.get(p.source, 0) + 1
    out: dict[str, list[str]] = {}
    for p in partials:
        lacking = sorted(everyone - set(p.frame["micrograph_name"].astype(str)))
        if lacking:
            out[p.source if counts[p.source] == 1 else f"{p.source}:{p.file}"] = lacking
    return out


def rebuild(ctx: HandlerContext, dataset: str) -> None:
    """Rebuild a dataset's tables from every stored partial (reprocessing entry point)."""
    records = _records(ctx, dataset)
    table = IncrementalTable(_partials(ctx, records))
    _cache.put(dataset, _versions(records), table)
    write_tables(ctx, dataset, table, records)


__all__ = ["service", "on_job", "rebuild", "write_tables", "merge_partials"]
