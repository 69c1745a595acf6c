"""A discovered tilt series → its CryoET Data Portal metadata in the artifact store.

Ingest announces each tilt series as ``job.discovered`` (software ``serialem``, job type
``tilt_series``) with its files by role: ``mdoc``, ``rawtlt``, ``tlt``, ``xf``, ``tilt_series``,
``tomogram_0``… and ``config``, the dataset's ``cryoet_dataset.yaml``. This module loads the
config, derives what the files tell (:mod:`cryobus.services.metadata.cryoet.derive`), writes the
portal layout (:func:`~cryobus.services.metadata.cryoet.layout.write_portal_layout`) into a
temporary folder, then copies every file into the store under ``<dataset>/cryoet/`` (the portal
bucket root), each announced by ``artifact.stored``, and ends with ``cryoet.written``.

Nothing reaches the store unless the whole run is valid: a missing config, a config that lacks
fields the files cannot supply, an mdoc section without ``TiltAngle``… raise ``InputError`` naming
the file and the field, which the service turns into ``metadata.failed``. See docs/cryoet-portal.md.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

from cryobus.services.metadata.cryoet import derive, load_config, missing_config_fields, write_portal_layout
from cryobus.services.metadata.cryoet.layout import ManifestEntry
from cryobus.shared.bus.service import HandlerContext
from cryobus.shared.errors import InputError
from cryobus.shared.events import JobDiscovered, PortalMetadataWritten

SOFTWARE, JOB_TYPE = "serialem", "tilt_series"
# The name ingest looks for in the tilt-series folder and its parents (services/ingest/tilt_series.py).
CONFIG_NAME = "cryoet_dataset.yaml"
STORE_PREFIX = "cryoet"  # <dataset>/cryoet/ is the portal's bucket root
_VOXEL_FOLDER = re.compile(r"/VoxelSpacing(\d+\.\d{3})/")
_ZARR_ROOT = re.compile(r"^(.*?\.zarr)/")


def handles(job: JobDiscovered) -> bool:
    """Is ``job`` a tilt series for this module?"""
    return job.software == SOFTWARE and job.job_type == JOB_TYPE


def artifact_role(key: str) -> str:
    """The ``artifact.stored`` role of a portal file, from its key (e.g. ``cryoet_tomogram_metadata``)."""
    name = key.rsplit("/", 1)[-1]
    if _ZARR_ROOT.match(key):
        return "cryoet_omezarr"
    if "/Annotations/" in key:
        return "cryoet_annotation_points" if name.endswith(".ndjson") else "cryoet_annotation_metadata"
    if name.endswith(".rawtlt"):
        return "cryoet_rawtlt"
    if name.endswith("_metadata.json"):
        return f"cryoet_{name[: -len('_metadata.json')]}_metadata"
    return "cryoet_file"


def _tomograms(files: dict[str, str]) -> list[str]:
    roles = [r for r in files if re.fullmatch(r"tomogram_\d+", r)]
    return [files[r] for r in sorted(roles, key=lambda r: int(r.split("_")[1]))]


def claim_run(ctx: HandlerContext, dataset: str, portal_dataset_id: int, run_name: str, folder: Path) -> None:
    """Make ``folder`` the one source of portal run ``run_name`` in ``dataset``'s portal dataset.

    Run names are file stems, and two folders of one portal dataset can share a stem (``s1/TS_01``
    and ``s2/TS_01``); both would write the same run folder and the last would win. The first
    folder to write a run claims it in the metadata KV bucket (create-if-absent, atomic across
    replicas); the same folder may rewrite its run (a redelivery, or its files changed).

    Raises:
        InputError: another folder holds the run (``file`` = this folder, ``field="run_name"``).
    """
    from cryobus.services.metadata.service import BUCKET  # the service module imports this one

    token = hashlib.sha256(f"{dataset}\0{portal_dataset_id}\0{run_name}".encode()).hexdigest()[:32]
    owner = ctx.kv_claim(BUCKET, f"portal-run.{token}", str(folder).encode())
    if owner is not None and owner.decode() != str(folder):
        raise InputError(
            f"portal run {run_name!r} of portal dataset {portal_dataset_id} already comes from {owner.decode()}; "
            f"two tilt series of one portal dataset need different file names (run names are their stems)",
            file=str(folder), field="run_name",
        )


def write_tilt_series(ctx: HandlerContext, job: JobDiscovered) -> PortalMetadataWritten:
    """Write one tilt series' portal metadata into the store and queue ``cryoet.written``.

    Args:
        ctx: the handler context (store writes go through ``ctx.put_artifact``).
        job: a ``job.discovered`` for which :func:`handles` is true.

    Returns:
        the :class:`PortalMetadataWritten` payload that was queued.

    Raises:
        InputError: no config (``field="config"``, ``file`` = the ``cryoet_dataset.yaml`` it
            should be); a config that is not valid YAML, has a wrong value or lacks fields
            (``file`` = the config, ``field`` = the first missing field, the reason lists all of
            them, derivable ones only when the files lack them too); a malformed acquisition file
            (``file`` = it, ``field`` e.g. ``TiltAngle``); a document the portal models refuse;
            a run name another folder of the same portal dataset already writes
            (``field="run_name"``, see :func:`claim_run`).
    """
    folder, files = Path(job.job_dir), job.files
    config_path = files.get("config")
    if config_path is None:
        raise InputError(
            f"no {CONFIG_NAME} in the tilt-series folder or a parent folder up to the watched root",
            file=str(folder / CONFIG_NAME), field="config",
        )
    config = load_config(config_path)
    derived = derive(
        folder, mdoc=files.get("mdoc"), tilt_angles=files.get("rawtlt") or files.get("tlt"), xf=files.get("xf"),
        tilt_series=files.get("tilt_series"), tomograms=_tomograms(files), search=False,
    )
    missing = missing_config_fields(config, derived)
    if missing:
        raise InputError(
            f"dataset config lacks required field(s), not derivable from {folder.name}'s files either: {', '.join(missing)}",
            file=config_path, field=missing[0],
        )
    claim_run(ctx, job.dataset, config.dataset.dataset_identifier, derived.run_name, folder)
    inputs = sorted(files.values())
    uris: list[str] = []
    zarr_roots: dict[str, str] = {}
    prefix = f"{job.dataset}/{STORE_PREFIX}"
    with tempfile.TemporaryDirectory(prefix="cryobus-cryoet-") as tmp:
        # Validated in full before the first byte reaches the store.
        manifest: list[ManifestEntry] = write_portal_layout(tmp, config, derived)
        for entry in manifest:
            stored = ctx.put_artifact(
                f"{prefix}/{entry.key}", (Path(tmp) / entry.key).read_bytes(), media_type=entry.media_type,
                role=artifact_role(entry.key), dataset=job.dataset, inputs=inputs,
            )
            root = _ZARR_ROOT.match(entry.key)
            if root:
                zarr_roots.setdefault(root[1], ctx.store.uri_for(f"{prefix}/{root[1]}"))
            else:
                uris.append(stored.uri)
    written = PortalMetadataWritten(
        dataset=job.dataset,
        portal_dataset_id=config.dataset.dataset_identifier,
        deposition_id=config.deposition_id,
        run_name=derived.run_name,
        source_dir=str(folder),
        config=str(config_path),
        voxel_spacings_A=sorted({float(m[1]) for e in manifest if (m := _VOXEL_FOLDER.search(e.key))}),
        artifact_uris=uris,
        omezarr_uris=[zarr_roots[k] for k in sorted(zarr_roots)],
        files_written=len(manifest),
        missing_config_fields=[],
        derived_from=derived.sources,
        warnings=derived.warnings,
    )
    for warning in derived.warnings:
        ctx.log.warning("%s: %s", folder, warning)
    ctx.emit(written)
    return written
