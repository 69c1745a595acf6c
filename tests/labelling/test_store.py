"""The label store, on SQLite and on PostgreSQL: classes imported once under their stable ids,
images kept bit for bit, exactly one current grade per (class, labeler) with the history kept,
undo, queues per labeler, newer iterations retiring older ones, and no grade lost when many
labelers grade at once."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sqlalchemy as sa

from cryobus.services.labelling import queue
from cryobus.services.labelling.service import read_job
from cryobus.services.labelling.store import GradeRow, LabelStore

from .conftest import discover


@pytest.fixture
def relion_set(relion_event):
    return read_job(relion_event)


def test_import_is_idempotent_and_keeps_images_bit_for_bit(store: LabelStore, relion_set):
    first = store.import_class_set(relion_set)
    again = store.import_class_set(relion_set)
    assert (first.added, again.added, again.already_there) == (50, 0, 50)
    assert store.counts()["classes"] == 50
    ids = {v.uid: v.id for v in queue.job_views(store, first.job_id, store.labeler_id("x@lab.org"))}
    for c in relion_set.classes:
        got = store.class_image(ids[relion_set.uid(c.number)])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, c.image)


def test_one_current_grade_per_class_and_labeler_with_history(store: LabelStore, relion_set):
    store.import_class_set(relion_set)
    ana, ben = store.labeler_id("ana@lab.org"), store.labeler_id("ben@lab.org")
    cid = queue.next_ungraded(store, ana)
    assert store.record_grade(ana, cid, "A").changed
    assert not store.record_grade(ana, cid, "A").changed  # the same grade again records nothing
    assert store.record_grade(ana, cid, "C").previous == "A"
    store.record_grade(ben, cid, "F")
    with store.read() as s:
        rows = s.execute(sa.select(GradeRow.labeler_id, GradeRow.grade).where(GradeRow.class_id == cid)).all()
    assert sorted(rows) == sorted([(ana, "C"), (ben, "F")])
    hist = store.history(labeler_id=ana, class_id=cid)
    assert [(h.action, h.previous_grade, h.grade) for h in hist] == [("graded", None, "A"), ("graded", "A", "C")]
    with pytest.raises(sa.exc.IntegrityError), store.write() as s:  # the schema itself forbids a second one
        s.add(GradeRow(class_id=cid, labeler_id=ana, grade="B", revision=99))


def test_undo_walks_back_one_labelers_actions_only(store: LabelStore, relion_set):
    store.import_class_set(relion_set)
    ana, ben = store.labeler_id("ana@lab.org"), store.labeler_id("ben@lab.org")
    c1 = queue.next_ungraded(store, ana)
    store.record_grade(ana, c1, "B")
    c2 = queue.next_ungraded(store, ana, c1)
    store.record_grade(ana, c2, "D")
    store.record_grade(ana, c2, "A")
    store.record_grade(ben, c2, "F")

    assert (store.undo(ana).class_id, queue.class_view(store, c2, ana).my_grade) == (c2, "D")
    assert queue.class_view(store, c2, ana).my_grade == "D"
    store.undo(ana)
    assert queue.class_view(store, c2, ana).my_grade is None
    store.undo(ana)
    assert queue.class_view(store, c1, ana).my_grade is None
    assert store.undo(ana) is None
    assert queue.class_view(store, c2, ben).my_grade == "F"  # ben's grade untouched
    actions = [h.action for h in store.history(labeler_id=ana)]
    assert actions.count("graded") == 3 and actions.count("undone") == 3  # nothing deleted


def test_every_grade_action_is_in_the_outbox(store: LabelStore, relion_set):
    store.import_class_set(relion_set)
    ana = store.labeler_id("ana@lab.org")
    cid = queue.next_ungraded(store, ana)
    store.record_grade(ana, cid, "B")
    store.record_grade(ana, cid, "B")  # no change, no event
    store.undo(ana)
    rows = store.pending_outbox()
    payloads = [json.loads(r.payload) for r in rows]
    assert [r.event_type for r in rows] == ["cryobus.label.recorded.v1"] * 2
    assert [(p["action"], p["grade"], p["previous_grade"]) for p in payloads] == [("graded", "B", None), ("undone", None, "B")]
    assert payloads[0]["class_uid"] == relion_set.uid(1) and payloads[0]["labeler"] == "ana@lab.org"
    assert len({r.event_id for r in rows}) == 2
    store.mark_published([r.id for r in rows])
    assert store.pending_outbox() == []


def test_queue_is_per_labeler_stable_and_resumes_after_skips(store: LabelStore, relion_set):
    store.import_class_set(relion_set)
    ana, ben = store.labeler_id("ana@lab.org"), store.labeler_id("ben@lab.org")
    order = [v.id for v in queue.job_views(store, 1, ana)]
    first = queue.next_ungraded(store, ana)
    assert first == order[0]
    store.record_grade(ana, first, "A")
    store.set_position(ana, order[1])  # skipped the second class
    assert queue.next_ungraded(store, ana) == order[2]
    assert queue.next_ungraded(store, ben) == order[0]  # ben's queue is his own
    assert queue.progress(store, ana) == (1, 50) and queue.progress(store, ben) == (0, 50)
    for cid in order[2:]:
        store.record_grade(ana, cid, "C")
    assert queue.next_ungraded(store, ana) == order[1]  # the skipped class comes back last
    store.record_grade(ana, order[1], "D")
    assert queue.next_ungraded(store, ana) is None


def test_newer_iteration_retires_the_older_from_queues(store: LabelStore, cryosparc_project, job010):
    older = [j for j in discover(cryosparc_project) if j.job_type == "class_averages"][0].model_copy(
        update={"iteration": 19, "files": {
            "cs": str(cryosparc_project / "J7/J7_019_class_averages.cs"),
            "mrc": str(cryosparc_project / "J7/J7_019_class_averages.mrc"),
        }}
    )  # fmt: skip
    newer = [j for j in discover(cryosparc_project) if j.job_type == "class_averages"][0]
    ana = store.labeler_id("ana@lab.org")
    r19 = store.import_class_set(read_job(older))
    store.record_grade(ana, queue.next_ungraded(store, ana), "B")
    r20 = store.import_class_set(read_job(newer))
    assert r20.superseded_jobs == 1
    assert queue.progress(store, ana) == (0, 50)  # only iteration 20 is queued
    assert {s.id for s in queue.job_summaries(store, ana)} == {r20.job_id}
    assert store.counts()["grades"] == 1  # the grade on iteration 19 is kept
    assert r19.job_id != r20.job_id


def test_many_labelers_grading_at_once_lose_nothing(store: LabelStore, relion_set):
    store.import_class_set(relion_set)
    labelers = [store.labeler_id(f"l{i}@lab.org") for i in range(8)]
    given: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def work(lid: int) -> None:
        after = None
        for k in range(12):
            cid = queue.next_ungraded(store, lid, after)
            grade = "ABCDF"[(lid + k) % 5]
            store.record_grade(lid, cid, grade)
            with lock:
                given.append((lid, cid, grade))
            after = cid

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, labelers))
    with store.read() as s:
        stored = set(s.execute(sa.select(GradeRow.labeler_id, GradeRow.class_id, GradeRow.grade)).all())
    assert stored == set(given) and len(stored) == 8 * 12
    assert store.counts()["history"] == 8 * 12
