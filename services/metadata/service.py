"""The metadata service: per-dataset prismPYP tables, upserted as job outputs arrive.

Each discovered source (RELION CtfFind / MotionCorr / Extract job, CryoSPARC particles) is
parsed into a partial table and kept in the service's own JetStream KV bucket under
``<dataset>.<source>.<job>``; the dataset's tables are then rebuilt from every partial it has
(joined by ``micrograph_name``, never by row position) and written to the store:
``<dataset>/micrograph_metadata.csv`` (+ ``.parquet``), ``pixel_size.txt`` and
``all_micrographs_list.micrographs``, announced by ``artifact.stored`` and ``metadata.updated``.
For each source kind the newest job (highest job number) wins.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from cryobus.services.metadata import cryosparc_particles, prismpyp_layout, relion_table
from cryobus.shared.bus.service import HandlerContext, Service
from cryobus.shared.events import Envelope, JobDiscovered, MetadataUpdated

BUCKET = "cryobus_metadata"
service = Service(name="metadata", kv_buckets=[BUCKET])

_SOURCES = {("relion", "CtfFind"): "ctf", ("relion", "MotionCorr"): "motion", ("relion", "Extract"): "particles"}


def _kv_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _job_number(job_dir: str) -> int:
    m = re.search(r"(\d+)$", job_dir.rstrip("/"))
    return int(m.group(1)) if m else 0


@service.handler(JobDiscovered)
def on_job(event: Envelope[JobDiscovered], ctx: HandlerContext) -> None:
    """Parse one job's output into a partial table, store it, rebuild the dataset's tables."""
    job = event.data
    source = _SOURCES.get((job.software, job.job_type))
    if source is None and job.software == "cryosparc" and job.job_type == "particles":
        source = "particles"
    if source is None:
        return  # e.g. Class2D, AutoPick: nothing for the metadata table
    project = Path(job.project_dir)
    pixel_size: float | None = None
    if job.software == "cryosparc":
        frame = cryosparc_particles.particle_counts(Path(job.files["cs"]))
    elif source == "ctf":
        frame, pixel_size = relion_table.ctf_rows(Path(job.files["star"]), project)
    elif source == "motion":
        frame, missing = relion_table.motion_rows(Path(job.files["star"]), project)
        for path, referenced_by, field in missing:
            ctx.report_missing(dataset=job.dataset, path=str(path), referenced_by=str(referenced_by), field=field)
    else:
        frame = relion_table.particle_counts(Path(job.files["star"]))
    record = {
        "source": source,
        "file": job.files.get("star") or job.files.get("cs"),
        "job_number": _job_number(job.job_dir),
        "pixel_size_A": pixel_size,
    }
    key = f"{_kv_safe(job.dataset)}.{source}.{_kv_safe(Path(job.job_dir).name)}"
    ctx.kv_put(BUCKET, key, _encode_partial(record, frame))
    rebuild(ctx, job.dataset)


def _encode_partial(record: dict[str, Any], frame: pd.DataFrame) -> bytes:
    """One JSON line of facts, then the partial table as Parquet (exact floats, unlike JSON)."""
    return json.dumps(record).encode() + b"\n" + prismpyp_layout.table_parquet_bytes(frame)


def _decode_partial(value: bytes) -> tuple[dict[str, Any], pd.DataFrame]:
    head, _, body = value.partition(b"\n")
    return json.loads(head), pd.read_parquet(io.BytesIO(body))


def _load_partials(ctx: HandlerContext, dataset: str) -> dict[str, tuple[dict[str, Any], pd.DataFrame]]:
    """The newest partial (highest job number) of each source kind of ``dataset``."""
    newest: dict[str, tuple[dict[str, Any], pd.DataFrame]] = {}
    for _key, (value, _rev) in ctx.kv_items(BUCKET, f"{_kv_safe(dataset)}.").items():
        rec, frame = _decode_partial(value)
        if rec["source"] not in newest or rec["job_number"] > newest[rec["source"]][0]["job_number"]:
            newest[rec["source"]] = (rec, frame)
    return newest


def rebuild(ctx: HandlerContext, dataset: str) -> None:
    """Rebuild and write the dataset's tables from every stored partial."""
    partials = _load_partials(ctx, dataset)
    frames = {s: frame for s, (_rec, frame) in partials.items()}
    records = {s: rec for s, (rec, _frame) in partials.items()}
    table = relion_table.merge_sources(frames.get("ctf"), frames.get("motion"), frames.get("particles"))
    sources = sorted(r["file"] for r in records.values() if r.get("file"))
    csv = ctx.put_artifact(
        f"{dataset}/micrograph_metadata.csv", prismpyp_layout.table_csv_bytes(table),
        media_type="text/csv", role="metadata_table", dataset=dataset, inputs=sources,
    )
    ctx.put_artifact(
        f"{dataset}/micrograph_metadata.parquet", prismpyp_layout.table_parquet_bytes(table),
        media_type="application/vnd.apache.parquet", role="metadata_table_parquet", dataset=dataset, inputs=sources,
    )
    names = [str(n) for n in table["micrograph_name"]]
    lst = ctx.put_artifact(
        f"{dataset}/all_micrographs_list.micrographs", prismpyp_layout.micrographs_list_bytes(names),
        media_type="text/plain", role="micrographs_list", dataset=dataset, inputs=sources,
    )
    pixel_uri = None
    pixel_size = next((r["pixel_size_A"] for _s, r in sorted(records.items()) if r.get("pixel_size_A")), None)
    if pixel_size:
        pixel_uri = ctx.put_artifact(
            f"{dataset}/pixel_size.txt", prismpyp_layout.pixel_size_txt(float(pixel_size)),
            media_type="text/plain", role="pixel_size", dataset=dataset, inputs=sources,
        ).uri
    ctx.emit(
        MetadataUpdated(
            dataset=dataset, table_uri=csv.uri, pixel_size_uri=pixel_uri, micrographs_list_uri=lst.uri,
            micrographs=names, sources=sources,
        ),
        dedup_key=csv.sha256,
    )
