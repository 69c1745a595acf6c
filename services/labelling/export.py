"""The training set: graded class averages, losslessly, with the model's features and a target.

Written to the artifact store under ``labelling/training_sets/<export_id>/``:

``images/<job>.mrcs``
    One float32 MRC stack per job (the values imported, unchanged; voxel size = pixel size).
    Section k of a stack is the row whose ``image_file`` names it and ``image_section`` is k.
``training_set.csv``, ``training_set.parquet``
    One row per class (columns in :data:`TABLE_COLUMNS`, then ``grade:<e-mail>`` per labeler).
    The six model features come first, in Magellon's order (``features.FEATURE_ORDER``), raw
    (Magellon scales the mass features by 1e-8 at training time). A missing value is empty in
    the CSV / null in Parquet (an empty class's resolution; counts without ``particles.cs``),
    never a sentinel such as 999.
``manifest.json``
    What the columns mean, the grade scale, the consensus rule, the labelers, and every file's
    key, size and sha256.

Which classes: by default only *fully labelled* ones, graded by every labeler who has graded
anything; with ``include_partial`` every class with at least one grade. Never an ungraded class.
``export_id`` is a digest of the rows and the option, so exporting the same labels again
writes the same keys and bytes (artifacts are immutable). Every file is announced by
``artifact.stored`` and the whole by ``training_set.exported`` — through the label store's
outbox, published by the running service.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass

import mrcfile
import numpy as np
import pandas as pd
from sqlalchemy import select

from cryobus.services.labelling.agreement import consensus
from cryobus.services.labelling.features import FEATURE_ORDER
from cryobus.services.labelling.store import (
    GRADE_NAMES,
    GRADE_VALUE,
    ClassRow,
    DatasetRow,
    ExportRow,
    GradeRow,
    JobRow,
    LabelerRow,
    LabelStore,
    add_outbox,
)
from cryobus.shared.events import ArtifactStored, TrainingSetExported, stable_event_id
from cryobus.shared.store import ArtifactStore, StoredObject, safe_key

PRODUCER = "labelling"
ARTIFACT_DATASET = "labelling"  # the `dataset` of the artifact.stored events: a training set spans datasets
PREFIX = "labelling/training_sets"

TABLE_COLUMNS = (
    *FEATURE_ORDER,
    "class_uid", "dataset", "software", "job", "iteration", "class_number", "image_file", "image_section",
    "box_size_px", "class_dist_source", "particle_count", "rln_class_distribution", "mass",
    "n_grades", "grade_mean", "consensus_grade", "target",
)  # fmt: skip

COLUMN_DOC = {
    "est_res_A": "estimated resolution of the class, Å (RELION rlnEstimatedResolution, CryoSPARC blob/res_A); empty when the source says inf",
    "class_dist": "fraction of the job's particles in the class; its definition is in class_dist_source",
    "pixel_size_A": "pixel size of the class average, Å/px",
    "dmean_mass": "|mass - mean mass of the job| (Magellon mass estimator, raw; the model scales by 1e-8)",
    "dmedian_mass": "|mass - median mass of the job|",
    "dmode_mass": "|mass - mode of the job's masses| (smallest value on ties, so in practice mass - min mass)",
    "class_uid": "stable class id <dataset>/<job>/it<NNN>/class_<KKK>",
    "class_number": "as the source numbers it: RELION 1-based, CryoSPARC 0-based",
    "image_file": "the MRC stack holding the image, relative to this manifest's folder",
    "image_section": "0-based section of image_file",
    "class_dist_source": "hard_assignments (count / all particles) or rlnClassDistribution (RELION's soft weight) or unavailable",
    "particle_count": "particles whose best class is this one (hard assignment); empty when unknown",
    "rln_class_distribution": "RELION's soft rlnClassDistribution (RELION only)",
    "mass": "estimated mass (Magellon's estimator, nominally Da)",
    "n_grades": "how many labelers graded the class",
    "grade_mean": "mean grade, A=1 ... F=5",
    "consensus_grade": "the grade nearest grade_mean (halves towards the better grade)",
    "target": "(5 - grade_mean) / 4: 1 = all A, 0 = all F",
    "grade:<email>": "that labeler's current grade (empty: not graded by them)",
}


class NothingToExport(ValueError):
    """No class qualifies (no grades yet, or none graded by every labeler)."""


@dataclass(frozen=True)
class ExportResult:
    export_id: str
    classes: int
    labelers: list[str]
    datasets: list[str]
    manifest: StoredObject
    table: StoredObject
    table_parquet: StoredObject
    images: list[StoredObject]


def _class_rows(store: LabelStore) -> tuple[dict[int, dict], dict[int, dict[str, str]]]:
    """Every graded class's facts, and its grades by labeler e-mail."""
    with store.read() as s:
        grades: dict[int, dict[str, str]] = defaultdict(dict)
        for class_id, email, grade in s.execute(
            select(GradeRow.class_id, LabelerRow.email, GradeRow.grade).join(LabelerRow, LabelerRow.id == GradeRow.labeler_id)
        ):
            grades[class_id][email] = grade
        facts = {}
        if grades:
            q = (
                select(ClassRow, JobRow, DatasetRow.name)
                .join(JobRow, JobRow.id == ClassRow.job_id)
                .join(DatasetRow, DatasetRow.id == JobRow.dataset_id)
                .where(ClassRow.id.in_(list(grades)))
            )
            for cls, job, dataset in s.execute(q):
                facts[cls.id] = {"cls": cls, "job": job, "dataset": dataset}
    return facts, grades


def _mrc_bytes(stack: np.ndarray, pixel_size_A: float | None) -> bytes:
    """A float32 MRC2014 stack as bytes (mrcfile writes files, so through a temporary one)."""
    fd, path = tempfile.mkstemp(suffix=".mrcs")
    os.close(fd)
    try:
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(np.ascontiguousarray(stack, dtype=np.float32))
            m.set_image_stack()
            if pixel_size_A:
                m.voxel_size = pixel_size_A
            # mrcfile stamps its label with the time: same images must give the same bytes.
            m.header.label[0] = "cryobus labelling training set: float32 class averages as imported"
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def export_training_set(
    store: LabelStore,
    artifacts: ArtifactStore,
    *,
    include_partial: bool = False,
    requested_by: str | None = None,
) -> ExportResult:
    """Write a training set (see the module docstring) and queue its announcements.

    Returns:
        :class:`ExportResult` with every file written.

    Raises:
        NothingToExport: no class qualifies.
        TransientError: the artifact store failed.
    """
    facts, grades = _class_rows(store)
    labelers = sorted({e for g in grades.values() for e in g})
    chosen = [cid for cid in sorted(grades) if include_partial or len(grades[cid]) == len(labelers)]
    if not chosen:
        raise NothingToExport(
            "no class graded yet" if not grades else "no class is graded by every labeler (ask for partial ones to include them)"
        )
    by_job: dict[int, list[int]] = defaultdict(list)
    for cid in chosen:
        by_job[facts[cid]["job"].id].append(cid)
    for cids in by_job.values():
        cids.sort(key=lambda c: facts[c]["cls"].number)

    rows = []
    stacks: dict[str, tuple[np.ndarray, float | None]] = {}
    for job_id in sorted(by_job):
        first = facts[by_job[job_id][0]]
        job = first["job"]
        tag = hashlib.sha256(f"{first['dataset']}\x1f{job.name}\x1f{job.iteration_tag}".encode()).hexdigest()[:8]
        image_file = safe_key("images", f"{first['dataset']}__{job.name.replace('/', '_')}__{job.iteration_tag}__{tag}.mrcs")
        images = []
        for section, cid in enumerate(by_job[job_id]):
            cls = facts[cid]["cls"]
            images.append(np.frombuffer(cls.image, dtype="<f4").reshape(cls.ny, cls.nx))
            mean, letter, target = consensus(grades[cid])
            row = {
                "est_res_A": cls.resolution_A, "class_dist": cls.class_distribution, "pixel_size_A": cls.pixel_size_A,
                "dmean_mass": cls.dmean_mass, "dmedian_mass": cls.dmedian_mass, "dmode_mass": cls.dmode_mass,
                "class_uid": cls.uid, "dataset": first["dataset"], "software": job.software, "job": job.name,
                "iteration": job.iteration, "class_number": cls.number, "image_file": image_file,
                "image_section": section, "box_size_px": cls.ny, "class_dist_source": job.distribution_source,
                "particle_count": cls.particle_count, "rln_class_distribution": cls.soft_distribution,
                "mass": cls.mass, "n_grades": len(grades[cid]), "grade_mean": mean, "consensus_grade": letter,
                "target": target,
            }  # fmt: skip
            for email in labelers:
                row[f"grade:{email}"] = grades[cid].get(email)
            rows.append(row)
        apix = {facts[c]["cls"].pixel_size_A for c in by_job[job_id]}
        stacks[image_file] = (np.stack(images), apix.pop() if len(apix) == 1 else None)

    table = pd.DataFrame(rows, columns=[*TABLE_COLUMNS, *(f"grade:{e}" for e in labelers)])
    for col in ("iteration", "particle_count"):
        table[col] = table[col].astype("Int64")
    digest = hashlib.sha256(
        json.dumps({"partial": include_partial, "rows": table.to_dict(orient="records")}, sort_keys=True, default=str).encode()
    )
    for name in sorted(stacks):
        digest.update(stacks[name][0].tobytes())
    export_id = digest.hexdigest()[:16]
    base = f"{PREFIX}/{export_id}"

    written: list[tuple[StoredObject, str, str]] = []  # (object, media type, role)

    def put(rel: str, data: bytes, media_type: str, role: str) -> StoredObject:
        obj = artifacts.put(f"{base}/{rel}", data, media_type=media_type)
        written.append((obj, media_type, role))
        return obj

    image_objs = [put(name, _mrc_bytes(*stacks[name]), "application/octet-stream", "training_set_images") for name in sorted(stacks)]
    csv = put("training_set.csv", table.to_csv(index=False).encode(), "text/csv", "training_set_table")
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    parquet = put("training_set.parquet", buf.getvalue(), "application/vnd.apache.parquet", "training_set_table_parquet")
    datasets = sorted(set(table["dataset"]))
    manifest = {
        # Nothing here depends on when or by whom: the same labels give the same bytes.
        "export_id": export_id,
        "include_partial": include_partial,
        "classes": len(table),
        "labelers": labelers,
        "datasets": datasets,
        "grades": {g: {"value": GRADE_VALUE[g], "name": GRADE_NAMES[g]} for g in GRADE_VALUE},
        "feature_order": list(FEATURE_ORDER),
        "columns": COLUMN_DOC,
        "files": [
            {"key": o.key, "file": o.key[len(base) + 1 :], "size_bytes": o.size_bytes, "sha256": o.sha256, "role": role}
            for o, _, role in written
        ],
    }
    man = put("manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode(), "application/json", "training_set_manifest")

    with store.write() as s:
        for obj, media_type, role in written:
            add_outbox(
                s,
                ArtifactStored(
                    dataset=ARTIFACT_DATASET, uri=obj.uri, key=obj.key, size_bytes=obj.size_bytes, sha256=obj.sha256,
                    media_type=media_type, producer=PRODUCER, role=role, inputs=[],
                ),
                stable_event_id("artifact", artifacts.url, obj.key, obj.sha256),
            )
        add_outbox(
            s,
            TrainingSetExported(
                export_id=export_id, manifest_uri=man.uri, table_uri=csv.uri, table_parquet_uri=parquet.uri,
                image_uris=[o.uri for o in image_objs], classes=len(table), labelers=labelers, datasets=datasets,
                include_partial=include_partial, requested_by=requested_by,
            ),
            stable_event_id("training_set.exported", artifacts.url, export_id),
        )
        if s.scalar(select(ExportRow.id).where(ExportRow.export_id == export_id)) is None:
            s.add(
                ExportRow(
                    export_id=export_id, requested_by=requested_by, include_partial=include_partial,
                    classes=len(table), manifest_uri=man.uri,
                )
            )
    return ExportResult(export_id, len(table), labelers, datasets, man, csv, parquet, image_objs)
