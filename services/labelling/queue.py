"""Each labeler's queue: the classes they have not graded, across datasets, in one stable order.

The order is the import order of the classes (``classes.id``: oldest job first, then class
number), which never changes once a class is in the store. Only classes of jobs that are not
superseded by a newer iteration are queued. A labeler resumes after the class they last
graded or skipped (their ``position``), wrapping round to the start, so skipped classes come
back after the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Integer, Select, bindparam, exists, func, select

from cryobus.services.labelling.store import (
    ClassRow,
    DatasetRow,
    GradeRow,
    JobRow,
    LabelerRow,
    LabelStore,
)


@dataclass(frozen=True)
class ClassView:
    """What the web page shows about one class (everything but the image)."""

    id: int
    uid: str
    dataset: str
    job: str
    job_id: int
    iteration: int | None
    software: str
    number: int
    ny: int
    nx: int
    resolution_A: float | None
    particle_count: int | None
    class_distribution: float | None
    distribution_source: str
    soft_distribution: float | None
    pixel_size_A: float | None
    mass: float | None
    dmean_mass: float | None
    dmedian_mass: float | None
    dmode_mass: float | None
    superseded: bool
    my_grade: str | None = None


def _active() -> Select:
    return select(ClassRow.id).join(JobRow, JobRow.id == ClassRow.job_id).where(JobRow.superseded.is_(False))


def _ungraded(labeler_id) -> Select:
    graded = exists().where(GradeRow.class_id == ClassRow.id, GradeRow.labeler_id == labeler_id)
    return _active().where(~graded)


# Built once with bound parameters: the hot path then skips statement construction and caching.
_LID, _AFTER = bindparam("lid", type_=Integer), bindparam("after", type_=Integer)
_NEXT = _ungraded(_LID).where(ClassRow.id > _AFTER).order_by(ClassRow.id).limit(1)
_WRAP = _ungraded(_LID).where(ClassRow.id <= _AFTER).order_by(ClassRow.id).limit(1)
_POSITION = select(func.coalesce(LabelerRow.position_class_id, 0)).where(LabelerRow.id == _LID).scalar_subquery()
_NEXT_FROM_POSITION = _ungraded(_LID).where(ClassRow.id > func.coalesce(_POSITION, 0)).order_by(ClassRow.id).limit(1)
_PROGRESS = select(
    select(func.count())
    .select_from(GradeRow)
    .join(ClassRow, ClassRow.id == GradeRow.class_id)
    .join(JobRow, JobRow.id == ClassRow.job_id)
    .where(GradeRow.labeler_id == _LID, JobRow.superseded.is_(False))
    .scalar_subquery(),
    select(func.count()).select_from(_active().subquery()).scalar_subquery(),
)


def next_ungraded(store: LabelStore, labeler_id: int, after: int | None = None) -> int | None:
    """The next class the labeler has not graded, after class id ``after`` (default: their
    position), wrapping round; ``None`` when every queued class is graded by them.

    An indexed range query (a second one only to wrap round).
    """
    with store.connect() as conn:
        if after is None:
            found = conn.execute(_NEXT_FROM_POSITION, {"lid": labeler_id}).scalar()
            if found is not None:
                return found
            after = conn.execute(select(_POSITION), {"lid": labeler_id}).scalar() or 0
        else:
            found = conn.execute(_NEXT, {"lid": labeler_id, "after": after}).scalar()
            if found is not None:
                return found
        return conn.execute(_WRAP, {"lid": labeler_id, "after": after}).scalar()


def neighbour(store: LabelStore, class_id: int, step: int) -> int | None:
    """The queued class just before (``step=-1``) or after (``step=1``) ``class_id``, graded or not."""
    q = _active()
    q = q.where(ClassRow.id > class_id).order_by(ClassRow.id) if step > 0 else q.where(ClassRow.id < class_id).order_by(
        ClassRow.id.desc()
    )
    with store.connect() as conn:
        return conn.execute(q.limit(1)).scalar()


def progress(store: LabelStore, labeler_id: int) -> tuple[int, int]:
    """``(queued classes the labeler has graded, queued classes)``, in one query."""
    with store.connect() as conn:
        row = conn.execute(_PROGRESS, {"lid": labeler_id}).one()
    return int(row[0] or 0), int(row[1] or 0)


_VIEW_COLUMNS = (
    ClassRow.id, ClassRow.uid, DatasetRow.name.label("dataset"), JobRow.name.label("job"), JobRow.id.label("job_id"),
    JobRow.iteration, JobRow.software, ClassRow.number, ClassRow.ny, ClassRow.nx, ClassRow.resolution_A,
    ClassRow.particle_count, ClassRow.class_distribution, JobRow.distribution_source, ClassRow.soft_distribution,
    ClassRow.pixel_size_A, ClassRow.mass, ClassRow.dmean_mass, ClassRow.dmedian_mass, ClassRow.dmode_mass,
    JobRow.superseded,
)  # fmt: skip


def _views(store: LabelStore, labeler_id: int, where, order=ClassRow.id, limit: int | None = None) -> list[ClassView]:
    q = (
        select(*_VIEW_COLUMNS, GradeRow.grade.label("my_grade"))
        .join(JobRow, JobRow.id == ClassRow.job_id)
        .join(DatasetRow, DatasetRow.id == JobRow.dataset_id)
        .outerjoin(GradeRow, (GradeRow.class_id == ClassRow.id) & (GradeRow.labeler_id == labeler_id))
        .where(where)
        .order_by(order)
    )
    if limit is not None:
        q = q.limit(limit)
    with store.read() as s:
        return [ClassView(**row._mapping) for row in s.execute(q)]


def class_view(store: LabelStore, class_id: int, labeler_id: int) -> ClassView | None:
    """One class with the labeler's grade of it, or ``None``."""
    found = _views(store, labeler_id, ClassRow.id == class_id)
    return found[0] if found else None


def job_views(store: LabelStore, job_id: int, labeler_id: int) -> list[ClassView]:
    """Every class of one job (grid view), in class-number order."""
    return _views(store, labeler_id, ClassRow.job_id == job_id, order=ClassRow.number)


@dataclass(frozen=True)
class JobSummary:
    id: int
    dataset: str
    job: str
    iteration: int | None
    classes: int
    graded_by_me: int
    superseded: bool


def job_summaries(store: LabelStore, labeler_id: int, *, include_superseded: bool = False) -> list[JobSummary]:
    """Every job with its class count and how many of them the labeler has graded, in import order."""
    mine = (
        select(ClassRow.job_id, func.count().label("n"))
        .join(GradeRow, GradeRow.class_id == ClassRow.id)
        .where(GradeRow.labeler_id == labeler_id)
        .group_by(ClassRow.job_id)
        .subquery()
    )
    total = select(ClassRow.job_id, func.count().label("n")).group_by(ClassRow.job_id).subquery()
    q = (
        select(JobRow.id, DatasetRow.name, JobRow.name, JobRow.iteration, total.c.n, mine.c.n, JobRow.superseded)
        .join(DatasetRow, DatasetRow.id == JobRow.dataset_id)
        .join(total, total.c.job_id == JobRow.id)
        .outerjoin(mine, mine.c.job_id == JobRow.id)
        .order_by(JobRow.id)
    )
    if not include_superseded:
        q = q.where(JobRow.superseded.is_(False))
    with store.read() as s:
        return [JobSummary(r[0], r[1], r[2], r[3], r[4], r[5] or 0, r[6]) for r in s.execute(q)]
