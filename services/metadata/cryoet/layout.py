"""Write a run in the CryoET Data Portal's current folder layout, every JSON validated.

Layout (reference §2.1; keys relative to ``out_dir``, which plays the bucket root)::

    <dataset_id>/dataset_metadata.json
    <dataset_id>/<run>/run_metadata.json
    <dataset_id>/<run>/TiltSeries/<id>/tiltseries_metadata.json, <run>.rawtlt
    <dataset_id>/<run>/Reconstructions/VoxelSpacing<vs:.3f>/Tomograms/<id>/tomogram_metadata.json, <run>.zarr/
    <dataset_id>/<run>/Reconstructions/VoxelSpacing<vs:.3f>/Annotations/<id>/<obj>-<version>.json,
                                                                       <obj>-<version>_point.ndjson

Ids are integers from 100, per run (tilt series, tomograms) and per run + voxel spacing
(annotations), in input order. Paths inside the JSON (``omezarr_dir``, ``files[].path`` …) are
relative to the bucket root, i.e. they start with the dataset id, as the portal writes them.
``VoxelSpacing`` is ``"{:.3f}".format(round(vs, 3))``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cryobus.services.metadata.cryoet.config import AnnotationSection, DatasetConfig, missing_config_fields
from cryobus.services.metadata.cryoet.derive import DerivedFacts, VolumeFacts, volume_facts
from cryobus.services.metadata.cryoet.omezarr import write_multiscale
from cryobus.services.metadata.cryoet.validation import validate_metadata
from cryobus.shared.errors import InputError

FIRST_ID = 100
IDENTITY_4x4 = [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)]
_MEDIA_TYPES = {
    ".json": "application/json",
    ".ndjson": "application/x-ndjson",
    ".rawtlt": "text/plain",
    ".zarray": "application/json",
    ".zattrs": "application/json",
    ".zgroup": "application/json",
}
_SAFE_RUN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class PointAnnotation:
    """Points to publish as one portal point annotation.

    Attributes:
        annotation: its metadata (an entry of the config's ``annotations`` list).
        points_xyz: float array (N, 3), x, y, z in voxels of the tomogram at ``voxel_spacing_A``
            (portal convention, reference §2.4; multiply by the voxel spacing for Å).
        voxel_spacing_A: which VoxelSpacing folder (Å); default the first tomogram's.
    """

    annotation: AnnotationSection
    points_xyz: np.ndarray
    voxel_spacing_A: float | None = None


@dataclass(frozen=True)
class ManifestEntry:
    """One written file: ``key`` relative to ``out_dir`` (posix), size in bytes, sha256 hex."""

    key: str
    size: int
    sha256: str
    media_type: str


def voxel_spacing_name(voxel_spacing_A: float) -> str:
    """Folder name part of a voxel spacing: ``13.48`` → ``"13.480"`` (portal ``{:.3f}`` rule)."""
    return "{:.3f}".format(round(voxel_spacing_A, 3))


def annotation_prefix(annotation: AnnotationSection) -> str:
    """``<obj>-<version>`` file prefix (portal rule, reference §2.1).

    obj = the object description when present and ≤ 50 characters, else its name; lowercased,
    every character outside ``[0-9a-z]`` → ``_``. version = ``str(version)`` lowercased, outside
    ``[0-9a-z.]`` → ``_``. E.g. ``cytosolic ribosome`` v1.0 → ``cytosolic_ribosome-1.0``.
    """
    obj = annotation.annotation_object
    text = obj.description if obj.description and len(obj.description) <= 50 else obj.name
    name = re.sub(r"[^0-9a-z]", "_", text.lower())
    version = re.sub(r"[^0-9a-z.]", "_", str(annotation.version).lower())
    return f"{name}-{version}"


def _media_type(path: Path) -> str:
    return _MEDIA_TYPES.get(path.suffix, "application/octet-stream")


class _Writer:
    """Atomic file writes under ``out_dir``, remembering every file for the manifest."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.files: list[Path] = []

    def bytes(self, key: str, data: bytes) -> None:
        path = self.out_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.files.append(path)

    def json(self, key: str, kind: str, data: dict[str, Any]) -> None:
        validate_metadata(kind, data, file=key)  # never write a file the portal would refuse
        self.bytes(key, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))

    def tree(self, path: Path) -> None:
        self.files.extend(sorted(p for p in path.rglob("*") if p.is_file()))

    def manifest(self) -> list[ManifestEntry]:
        entries = []
        for path in self.files:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            entries.append(
                ManifestEntry(path.relative_to(self.out_dir).as_posix(), path.stat().st_size, digest.hexdigest(), _media_type(path))
            )
        return sorted(entries, key=lambda e: e.key)


def _dump(model) -> Any:
    if model is None:
        return None
    if isinstance(model, list):
        return [_dump(m) for m in model]
    return model.model_dump(mode="json", exclude_none=True)


def _clean(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _first_set(*values):
    return next((v for v in values if v is not None), None)


def write_portal_layout(
    out_dir: str | os.PathLike,
    config: DatasetConfig,
    derived: DerivedFacts,
    *,
    dataset_id: int | None = None,
    run_name: str | None = None,
    tomograms: Sequence[VolumeFacts | str | os.PathLike] | None = None,
    point_annotations: Sequence[PointAnnotation] = (),
    last_updated_at: float | None = None,
    write_zarr: bool = True,
) -> list[ManifestEntry]:
    """Write dataset / run / tilt-series / tomogram / annotation metadata of one run.

    Args:
        out_dir: the bucket root (a local folder); files are replaced atomically.
        config: the dataset config (:func:`~cryobus.services.metadata.cryoet.config.load_config`).
        derived: facts from :func:`~cryobus.services.metadata.cryoet.derive.derive`.
        dataset_id: the portal dataset id (folder name); default the config's
            ``dataset.dataset_identifier``.
        run_name: the run folder; default ``derived.run_name``.
        tomograms: tomogram MRCs to publish (default ``derived.tomograms``); each gets an
            OME-Zarr copy with 3 scales (100/50/25 %) unless ``write_zarr`` is false.
        point_annotations: point sets to publish as NDJSON + metadata.
        last_updated_at: POSIX seconds for ``last_updated_at``; default the newest input file's
            mtime, so a redelivered job rewrites identical bytes.
        write_zarr: skip the OME-Zarr copies (metadata only) when false.

    Returns:
        one :class:`ManifestEntry` per written file (zarr chunks included), sorted by key.

    Raises:
        InputError: config fields missing (``field`` = the first, see
            :func:`~cryobus.services.metadata.cryoet.config.missing_config_fields`), an unsafe
            run name, no tilt-series size, a point outside its tomogram, a tomogram without a
            voxel size, or a JSON document the validated models refuse (``field`` = its path).
    """
    out = Path(out_dir)
    vols = [v if isinstance(v, VolumeFacts) else volume_facts(v) for v in (derived.tomograms if tomograms is None else tomograms)]
    facts = derived.model_copy(update={"tomograms": vols})
    missing = missing_config_fields(config, facts)
    if missing:
        raise InputError(f"dataset config lacks required field(s): {', '.join(missing)}", file=str(derived.folder), field=missing[0])
    run = run_name or derived.run_name
    if not _SAFE_RUN.match(run):
        raise InputError(f"run name {run!r} is not a safe folder name", file=str(derived.folder), field="run_name")
    if dataset_id is None:
        dataset_id = config.dataset.dataset_identifier
    stamp = float(_first_set(last_updated_at, derived.newest_input_mtime or None, time.time()))
    common = {"deposition_id": config.deposition_id, "last_updated_at": stamp}
    ds_key, run_key = f"{dataset_id}", f"{dataset_id}/{run}"
    writer = _Writer(out)

    writer.json(f"{ds_key}/dataset_metadata.json", "dataset", _dataset_doc(config, dataset_id) | common)
    writer.json(f"{run_key}/run_metadata.json", "run", {"run_name": run} | common)
    _write_tiltseries(writer, config, facts, run_key, run, common)
    placed = _write_tomograms(writer, config, vols, run_key, run, common, write_zarr)
    _write_annotations(writer, config, point_annotations, placed, run_key, common)
    return writer.manifest()


def _dataset_doc(config: DatasetConfig, dataset_id: int) -> dict[str, Any]:
    d = config.dataset
    return _clean(
        {
            "dataset_identifier": dataset_id,
            "dataset_title": d.title,
            "dataset_description": d.description,
            "dates": _dump(d.dates),
            "authors": _dump(d.authors),
            "funding": _dump(d.funding) or None,
            "cross_references": _dump(d.cross_references),
            "sample_type": d.sample_type,
            "sample_preparation": d.sample_preparation,
            "grid_preparation": d.grid_preparation,
            "other_setup": d.other_setup,
            "organism": _dump(d.organism),
            "tissue": _dump(d.tissue),
            "cell_type": _dump(d.cell_type),
            "cell_strain": _dump(d.cell_strain),
            "cell_component": _dump(d.cell_component),
            "assay": _dump(d.assay),
            "development_stage": _dump(d.development_stage),
            "disease": _dump(d.disease),
            "key_photos": _dump(d.key_photos),
        }
    )


def _write_tiltseries(writer: _Writer, config: DatasetConfig, facts: DerivedFacts, run_key: str, run: str, common: dict) -> None:
    t = config.tiltseries
    if facts.tiltseries_size is None:
        raise InputError("no tilt-series MRC and no mdoc ImageSize: tilt-series size unknown", file=str(facts.folder), field="size")
    x, y, z = facts.tiltseries_size
    key = f"{run_key}/TiltSeries/{FIRST_ID}"
    doc = {
        "acceleration_voltage": _first_set(t.acceleration_voltage, facts.acceleration_voltage_V),
        "spherical_aberration_constant": t.spherical_aberration_constant,
        "camera": _dump(t.camera),
        "microscope": _dump(t.microscope),
        "microscope_optical_setup": _dump(t.microscope_optical_setup),
        "data_acquisition_software": _first_set(t.data_acquisition_software, facts.data_acquisition_software),
        "is_aligned": t.is_aligned,
        "pixel_spacing": _first_set(t.pixel_spacing, facts.pixel_spacing_A),
        "tilt_axis": _first_set(t.tilt_axis, facts.tilt_axis_deg),
        "tilt_range": _dump(t.tilt_range) or {"min": facts.tilt_min_deg, "max": facts.tilt_max_deg},
        "tilt_step": _first_set(t.tilt_step, facts.tilt_step_deg),
        "tilting_scheme": t.tilting_scheme,
        "tilt_series_quality": t.tilt_series_quality,
        "total_flux": _first_set(t.total_flux, facts.total_flux_e_per_A2),
        "size": {"x": x, "y": y, "z": z},
        "frames_count": facts.frames_count,
        "related_empiar_entry": t.related_empiar_entry,
        "tilt_alignment_software": t.tilt_alignment_software,
        "aligned_tiltseries_binning": t.aligned_tiltseries_binning,
        "binning_from_frames": t.binning_from_frames,
        "run_name": run,
    }
    angles = facts.tilt_angles_deg
    if angles:
        order = facts.acquisition_order if len(facts.acquisition_order) == len(angles) else list(range(len(angles)))
        doc["per_section_parameter"] = [
            {"z_index": i, "frame_acquisition_order": order[i], "raw_angle": a} for i, a in enumerate(angles)
        ]
        raw_key = f"{key}/{run}.rawtlt"
        writer.bytes(raw_key, "".join(f"{a:.2f}\n" for a in angles).encode("ascii"))
        doc["raw_tlt_path"] = raw_key
    writer.json(f"{key}/tiltseries_metadata.json", "tiltseries", _clean(doc) | common)


@dataclass(frozen=True)
class _Placed:
    """A published tomogram: where it went and its level-0 size (x, y, z)."""

    vs_name: str
    tomogram_id: int
    size_xyz: tuple[int, int, int]


def _write_tomograms(
    writer: _Writer, config: DatasetConfig, vols: list[VolumeFacts], run_key: str, run: str, common: dict, write_zarr: bool
) -> list[_Placed]:
    placed: list[_Placed] = []
    if not vols:
        return placed
    tc = config.tomogram
    authors = tc.authors or config.dataset.authors
    dates = tc.dates or config.dataset.dates
    for n, vol in enumerate(vols):
        vs = _first_set(tc.voxel_spacing, vol.voxel_size_A)
        if not vs:
            raise InputError("tomogram has no voxel size (header 0, none in config)", file=vol.path, field="voxel_spacing")
        vs_name = voxel_spacing_name(vs)
        tomo_id = FIRST_ID + n
        key = f"{run_key}/Reconstructions/VoxelSpacing{vs_name}/Tomograms/{tomo_id}"
        doc: dict[str, Any] = {
            "voxel_spacing": float(vs_name),
            "fiducial_alignment_status": tc.fiducial_alignment_status,
            "reconstruction_method": tc.reconstruction_method,
            "reconstruction_software": tc.reconstruction_software,
            "processing": tc.processing,
            "processing_software": tc.processing_software,
            "align_software": tc.align_software,
            "ctf_corrected": tc.ctf_corrected,
            "tomogram_version": tc.tomogram_version,
            "offset": _dump(tc.offset),
            "is_visualization_default": tc.is_visualization_default and n == 0,
            "affine_transformation_matrix": tc.affine_transformation_matrix or IDENTITY_4x4,
            "cross_references": _dump(tc.cross_references),
            "authors": _dump(authors),
            "dates": _dump(dates),
            "run_name": run,
            "size": {"x": vol.x, "y": vol.y, "z": vol.z},
        }
        if write_zarr:
            zarr_key = f"{key}/{run}.zarr"
            shapes = write_multiscale(vol.path, writer.out_dir / zarr_key, float(vs_name))
            writer.tree(writer.out_dir / zarr_key)
            doc["scales"] = [{"x": s[2], "y": s[1], "z": s[0]} for s in shapes]
            doc["omezarr_dir"] = zarr_key
        writer.json(f"{key}/tomogram_metadata.json", "tomogram", _clean(doc) | common)
        placed.append(_Placed(vs_name, tomo_id, (vol.x, vol.y, vol.z)))
    return placed


def _write_annotations(
    writer: _Writer, config: DatasetConfig, annotations: Sequence[PointAnnotation], placed: list[_Placed], run_key: str, common: dict
) -> None:
    next_id: dict[str, int] = defaultdict(lambda: FIRST_ID)
    for pa in annotations:
        label = pa.annotation.annotation_ingest_id or pa.annotation.annotation_object.name
        vs_name = voxel_spacing_name(pa.voxel_spacing_A) if pa.voxel_spacing_A else (placed[0].vs_name if placed else None)
        tomo = next((p for p in placed if p.vs_name == vs_name), None)
        if tomo is None:
            raise InputError(
                f"annotation {label!r}: no tomogram at voxel spacing {vs_name} to place its points in",
                file=str(writer.out_dir / run_key),
                field="voxel_spacing",
            )
        pts = np.asarray(pa.points_xyz, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3 or not np.all(np.isfinite(pts)):
            raise InputError(f"annotation {label!r}: points must be a finite (N, 3) array", field="location")
        upper = np.asarray(tomo.size_xyz, dtype=np.float64) - 1
        outside = np.flatnonzero(np.any((pts < 0) | (pts > upper), axis=1))
        if outside.size:
            i = int(outside[0])
            raise InputError(
                f"annotation {label!r}: point {i} {pts[i].tolist()} outside tomogram {tomo.tomogram_id} "
                f"(0..{upper.tolist()} voxels)",
                field="location",
            )
        ann_id = next_id[vs_name]
        next_id[vs_name] += 1
        prefix = annotation_prefix(pa.annotation)
        key = f"{run_key}/Reconstructions/VoxelSpacing{vs_name}/Annotations/{ann_id}"
        nd_key = f"{key}/{prefix}_point.ndjson"
        lines = [
            json.dumps({"type": "point", "location": {"x": float(px), "y": float(py), "z": float(pz)}})
            for px, py, pz in pts
        ]
        writer.bytes(nd_key, ("".join(line + "\n" for line in lines)).encode("utf-8"))
        a = pa.annotation
        doc = {
            "annotation_object": _dump(a.annotation_object),
            "annotation_method": a.annotation_method,
            "method_type": a.method_type,
            "annotation_ingest_id": a.annotation_ingest_id,
            "version": a.version,
            "object_count": len(lines),
            "ground_truth_status": a.ground_truth_status,
            "is_curator_recommended": a.is_curator_recommended,
            "annotation_publications": a.annotation_publications,
            "annotation_software": a.annotation_software,
            "confidence": _dump(a.confidence),
            "method_links": _dump(a.method_links),
            "files": [{"format": "ndjson", "shape": "Point", "path": nd_key, "is_visualization_default": a.is_visualization_default}],
            "authors": _dump(a.authors or config.dataset.authors),
            "dates": _dump(a.dates or config.dataset.dates),
        }
        writer.json(f"{key}/{prefix}.json", "annotation", _clean(doc) | common)


__all__ = [
    "ManifestEntry",
    "PointAnnotation",
    "annotation_prefix",
    "voxel_spacing_name",
    "write_portal_layout",
]
