"""Export: a training set of fully labelled classes (partial ones on request), images bit for bit,
the six model features, each labeler's grade and a consensus target; files in the artifact store,
listed with their sha256 in the manifest, announced through the outbox; the same labels give the
same export."""

from __future__ import annotations

import hashlib
import io
import json

import mrcfile
import numpy as np
import pandas as pd
import pytest

from cryobus.services.labelling import queue
from cryobus.services.labelling.export import NothingToExport, export_training_set
from cryobus.services.labelling.features import FEATURE_ORDER
from cryobus.services.labelling.service import read_job
from cryobus.shared.store import open_store

from .conftest import discover


@pytest.fixture
def graded(store, relion_event, cryosparc_project):
    """Two jobs imported; ana grades 6 classes, ben 4 of the same; cy none."""
    store.import_class_set(read_job(relion_event))
    cs_job = [j for j in discover(cryosparc_project, "cs-data") if j.job_type == "class_averages"][0]
    store.import_class_set(read_job(cs_job))
    ana, ben = store.labeler_id("ana@lab.org"), store.labeler_id("ben@lab.org")
    store.labeler_id("cy@lab.org")  # signed in, graded nothing: not a labeler of the set
    relion_ids = [v.id for v in queue.job_views(store, 1, ana)]
    cs_ids = [v.id for v in queue.job_views(store, 2, ana)]
    picks = relion_ids[:4] + cs_ids[:2]
    for cid, g in zip(picks, "ABCDFA", strict=True):
        store.record_grade(ana, cid, g)
    for cid, g in zip(picks[:3] + picks[4:5], "BBCF", strict=True):
        store.record_grade(ben, cid, g)
    return store, picks


def test_only_fully_labelled_classes_by_default(graded, tmp_path):
    store, picks = graded
    artifacts = open_store((tmp_path / "artifacts").as_uri())
    result = export_training_set(store, artifacts, requested_by="ana@lab.org")
    table = pd.read_csv(io.BytesIO(artifacts.get(result.table.key)))
    assert result.classes == len(table) == 4  # graded by both ana and ben
    assert result.labelers == ["ana@lab.org", "ben@lab.org"]
    assert list(table.columns[:6]) == list(FEATURE_ORDER)
    assert table[["grade:ana@lab.org", "grade:ben@lab.org"]].notna().all().all()
    row = table.set_index("class_uid").loc[queue.class_view(store, picks[0], 1).uid]
    assert (row["grade:ana@lab.org"], row["grade:ben@lab.org"], row["consensus_grade"]) == ("A", "B", "A")
    assert row["target"] == pytest.approx((5 - 1.5) / 4)
    view = queue.class_view(store, picks[0], 1)
    assert row["est_res_A"] == pytest.approx(view.resolution_A) and row["class_dist"] == pytest.approx(view.class_distribution)
    assert row["dmode_mass"] == pytest.approx(view.dmode_mass) and row["pixel_size_A"] == pytest.approx(3.54)


def test_partial_export_images_are_lossless_and_listed(graded, tmp_path):
    store, picks = graded
    artifacts = open_store((tmp_path / "artifacts").as_uri())
    result = export_training_set(store, artifacts, include_partial=True)
    table = pd.read_parquet(io.BytesIO(artifacts.get(result.table_parquet.key)))
    assert len(table) == 6 and set(table["n_grades"]) == {1, 2}
    assert set(table["dataset"]) == set(result.datasets) and len(result.datasets) == 2
    base = result.manifest.key.rsplit("/", 1)[0]
    for _, row in table.iterrows():
        raw = artifacts.get(f"{base}/{row['image_file']}")
        with mrcfile.open(_tmp(tmp_path, raw), permissive=True) as m:
            image = np.array(m.data[row["image_section"]])
            assert m.voxel_size.x == pytest.approx(row["pixel_size_A"], rel=1e-6)
        cid = next(c for c in picks if queue.class_view(store, c, 1).uid == row["class_uid"])
        np.testing.assert_array_equal(image, store.class_image(cid))
    manifest = json.loads(artifacts.get(result.manifest.key))
    for f in manifest["files"]:
        assert hashlib.sha256(artifacts.get(f["key"])).hexdigest() == f["sha256"]
    assert {f["role"] for f in manifest["files"]} == {"training_set_images", "training_set_table", "training_set_table_parquet"}
    pending = store.pending_outbox()
    types = [r.event_type for r in pending]
    assert types.count("cryobus.artifact.stored.v1") == len(manifest["files"]) + 1  # + the manifest itself
    assert types.count("cryobus.training_set.exported.v1") == 1
    exported = json.loads(next(r.payload for r in pending if r.event_type.startswith("cryobus.training_set")))
    assert exported["export_id"] == result.export_id and exported["include_partial"] is True


def _tmp(tmp_path, raw: bytes):
    path = tmp_path / "read.mrcs"
    path.write_bytes(raw)
    return path


def test_same_labels_same_export(graded, tmp_path):
    store, picks = graded
    artifacts = open_store((tmp_path / "artifacts").as_uri())
    one = export_training_set(store, artifacts)
    two = export_training_set(store, artifacts, requested_by="someone@else.org")
    assert one.export_id == two.export_id and one.table.sha256 == two.table.sha256 and one.manifest.sha256 == two.manifest.sha256
    store.record_grade(store.labeler_id("ben@lab.org"), picks[0], "D")
    assert export_training_set(store, artifacts).export_id != one.export_id


def test_nothing_to_export(store, relion_event, tmp_path):
    artifacts = open_store((tmp_path / "artifacts").as_uri())
    store.import_class_set(read_job(relion_event))
    with pytest.raises(NothingToExport):
        export_training_set(store, artifacts)
    ana, ben = store.labeler_id("ana@lab.org"), store.labeler_id("ben@lab.org")
    store.record_grade(ana, 1, "A")
    store.record_grade(ben, 2, "A")
    with pytest.raises(NothingToExport):  # no class graded by both
        export_training_set(store, artifacts)
    assert export_training_set(store, artifacts, include_partial=True).classes == 2
