"""The label store: class averages, labelers, grades (current + history), sessions and the outbox.

SQLAlchemy 2 ORM over SQLite (default, a file under the state folder) or PostgreSQL (give a
``postgresql://`` URL; the psycopg 3 driver is used). The schema is created on first use.

Tables
======

``datasets``, ``jobs``, ``classes``
    One ``classes`` row per class average, unique by its stable id (dataset, job, iteration,
    class number; see :mod:`cryobus.shared.class_averages.model`), holding the float32 image exactly as read (``image``,
    little-endian, ``ny × nx``), its 8-bit display PNG, the statistics and the mass features.
    A job imported again (redelivery, rescan) adds nothing. When a newer iteration of the same
    job arrives, the older iterations are marked ``superseded``: they leave the labelers'
    queues (a running RELION job announces every iteration) but keep their grades.
``labelers``
    One row per e-mail identity, with the queue position they resume from.
``grades``
    The *current* grade, exactly one per (class, labeler) (unique constraint).
``grade_history``
    Every grade action, append-only: ``graded`` (grade, previous grade) and ``undone``
    (the action it reverted). An undo never deletes history.
``sessions``
    Web sessions: sha256 of the cookie token (the token itself is never stored) and the
    session's CSRF token.
``outbox``
    Events to publish (``label.recorded``, ``artifact.stored``, ``training_set.exported``),
    written in the same transaction as the change they announce; the service publishes and
    marks them (at-least-once, the envelope id de-duplicates).
``exports``
    Training sets written.

Concurrency: the current grade is written with ``INSERT … ON CONFLICT DO UPDATE`` (both
databases), so two requests for the same (class, labeler) cannot make two rows. On SQLite every
write transaction starts with ``BEGIN IMMEDIATE`` (one writer at a time, never failing half-way on
a lock upgrade), the writers of one process queue on a lock rather than in SQLite's sleeping busy
handler, and the database runs in WAL mode so reads never wait for writes.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from cryobus.services.labelling import display
from cryobus.shared.class_averages.model import ClassSet, class_uid, iteration_tag
from cryobus.services.labelling.features import mass_features
from cryobus.shared.events import EventData, LabelRecorded, stable_event_id

GRADES = ("A", "B", "C", "D", "F")
GRADE_VALUE = {g: i + 1 for i, g in enumerate(GRADES)}  # A=1 (best) … F=5 (unusable), tkteach's order
GRADE_NAMES = {"A": "Best", "B": "Decent", "C": "Acceptable", "D": "Bad", "F": "Unusable"}
SESSION_LIFETIME = timedelta(days=30)
SESSION_CACHE_S = 10.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class DatasetRow(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(512), unique=True)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("dataset_id", "name", "iteration_tag"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    name: Mapped[str] = mapped_column(String(1024))
    iteration: Mapped[int | None] = mapped_column(Integer, nullable=True)
    iteration_tag: Mapped[str] = mapped_column(String(16))
    software: Mapped[str] = mapped_column(String(16))
    distribution_source: Mapped[str] = mapped_column(String(32))
    sources: Mapped[str] = mapped_column(Text)  # JSON {role: path}
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ClassRow(Base):
    __tablename__ = "classes"
    __table_args__ = (UniqueConstraint("job_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    uid: Mapped[str] = mapped_column(String(1600), unique=True)
    ny: Mapped[int] = mapped_column(Integer)
    nx: Mapped[int] = mapped_column(Integer)
    image: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian, ny*nx
    display_png: Mapped[bytes] = mapped_column(LargeBinary)
    resolution_A: Mapped[float | None] = mapped_column(Float, nullable=True)
    particle_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    class_distribution: Mapped[float | None] = mapped_column(Float, nullable=True)
    soft_distribution: Mapped[float | None] = mapped_column(Float, nullable=True)
    pixel_size_A: Mapped[float | None] = mapped_column(Float, nullable=True)
    mass: Mapped[float | None] = mapped_column(Float, nullable=True)
    dmean_mass: Mapped[float | None] = mapped_column(Float, nullable=True)
    dmedian_mass: Mapped[float | None] = mapped_column(Float, nullable=True)
    dmode_mass: Mapped[float | None] = mapped_column(Float, nullable=True)


class LabelerRow(Base):
    __tablename__ = "labelers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    position_class_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class GradeRow(Base):
    __tablename__ = "grades"
    __table_args__ = (
        UniqueConstraint("class_id", "labeler_id"),
        Index("ix_grades_labeler_class", "labeler_id", "class_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("classes.id"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"))
    grade: Mapped[str] = mapped_column(String(1))
    revision: Mapped[int] = mapped_column(Integer)  # grade_history.id of the action that set it
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class GradeHistoryRow(Base):
    __tablename__ = "grade_history"
    __table_args__ = (Index("ix_history_labeler", "labeler_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("classes.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"))
    action: Mapped[str] = mapped_column(String(16))  # graded | undone
    grade: Mapped[str | None] = mapped_column(String(1), nullable=True)  # grade after the action
    previous_grade: Mapped[str | None] = mapped_column(String(1), nullable=True)
    reverts: Mapped[int | None] = mapped_column(Integer, nullable=True)  # for "undone": the action reverted
    undone: Mapped[bool] = mapped_column(Boolean, default=False)  # a "graded" action an undo reverted
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SessionRow(Base):
    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OutboxRow(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "published_at", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_type: Mapped[str] = mapped_column(String(128))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ExportRow(Base):
    __tablename__ = "exports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    export_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    requested_by: Mapped[str | None] = mapped_column(String(320), nullable=True)
    include_partial: Mapped[bool] = mapped_column(Boolean, default=False)
    classes: Mapped[int] = mapped_column(Integer)
    manifest_uri: Mapped[str] = mapped_column(Text)


# The grade path's statements, built once with bound parameters.
_FACTS = (
    select(ClassRow.uid, ClassRow.number, JobRow.name, JobRow.iteration, DatasetRow.name.label("dataset"),
           LabelerRow.email, GradeRow.grade, GradeRow.revision)  # fmt: skip
    .join(JobRow, JobRow.id == ClassRow.job_id)
    .join(DatasetRow, DatasetRow.id == JobRow.dataset_id)
    .join(LabelerRow, LabelerRow.id == sa.bindparam("lid", type_=Integer))
    .outerjoin(GradeRow, (GradeRow.class_id == ClassRow.id) & (GradeRow.labeler_id == sa.bindparam("lid", type_=Integer)))
    .where(ClassRow.id == sa.bindparam("cid", type_=Integer))
)
_SESSION = (
    select(SessionRow.labeler_id, LabelerRow.email, SessionRow.csrf_token, SessionRow.expires_at)
    .join(LabelerRow, LabelerRow.id == SessionRow.labeler_id)
    .where(SessionRow.token_sha256 == sa.bindparam("h"))
)
_MOVE = (
    sa.update(LabelerRow)
    .where(LabelerRow.id == sa.bindparam("lid", type_=Integer))
    .values(position_class_id=sa.bindparam("cid", type_=Integer))
)


@dataclass(frozen=True)
class ImportResult:
    """What importing one :class:`ClassSet` did."""

    job_id: int
    added: int
    already_there: int
    superseded_jobs: int


@dataclass(frozen=True)
class GradeResult:
    """One grade action.

    Attributes:
        class_id: the class graded.
        grade: the labeler's grade now (``None`` after an undo removed it).
        previous: the grade before.
        revision: the ``grade_history`` id (0 when nothing changed).
        changed: False when the same grade was given again (nothing recorded).
    """

    class_id: int
    grade: str | None
    previous: str | None
    revision: int
    changed: bool


def normalise_url(url: str) -> str:
    """``postgres://`` / ``postgresql://`` → ``postgresql+psycopg://`` (psycopg 3); others unchanged."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def default_url(state_dir: str | Path) -> str:
    """The SQLite file the service uses when no URL is configured: ``<state_dir>/labelling/labels.sqlite``."""
    path = Path(state_dir).resolve() / "labelling" / "labels.sqlite"
    return f"sqlite:///{path}"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LabelStore:
    """The label database. Thread-safe; one instance per process and URL.

    Args:
        url: SQLAlchemy URL: ``sqlite:///path/labels.sqlite`` or ``postgresql://user@host/db``.
        create: create missing tables.

    Raises:
        sqlalchemy.exc.OperationalError: the database cannot be reached or opened.
    """

    def __init__(self, url: str, *, create: bool = True):
        self.url = normalise_url(url)
        parsed = sa.engine.make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database in (None, "", ":memory:"):
                raise ValueError("the label store needs a SQLite file (sqlite:///path), not an in-memory database")
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(self.url, connect_args={"timeout": 30, "check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_on_connect)
            event.listen(self.engine, "begin", _sqlite_on_begin)
        else:
            # No pre-ping (a round trip per checkout): a connection the server dropped fails one
            # request, and SQLAlchemy then replaces the pool's connections.
            self.engine = sa.create_engine(self.url, pool_size=10, max_overflow=40, pool_recycle=3600)
        self._write_engine = self.engine.execution_options(cryobus_write=True)
        # Reads run without BEGIN/ROLLBACK round trips on PostgreSQL (each query sees committed data).
        self._read_engine = self.engine if self.is_sqlite else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._sessions: dict[str, tuple[float, tuple[int, str, str], datetime]] = {}
        if create:
            Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session (rolled back at the end)."""
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A plain connection for the hot read queries (no ORM bookkeeping), rolled back at the end."""
        with self._read_engine.connect() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, committed when the block ends (rolled back on an exception)."""
        with self._writer(), Session(self._write_engine, expire_on_commit=False) as s, s.begin():
            yield s

    @contextmanager
    def _write_conn(self) -> Iterator[sa.Connection]:
        """A Core write transaction (the grade path), committed when the block ends."""
        with self._writer(), self._write_engine.begin() as conn:
            yield conn

    def _writer(self):
        # SQLite has one writer at a time; a writer waiting on SQLite's busy handler sleeps in
        # growing steps (up to 100 ms), so writers of this process queue on a lock instead.
        return self._write_lock if self._write_lock is not None else nullcontext()

    # ------------------------------------------------------------------ import

    def import_class_set(self, cs: ClassSet, *, fingerprint: str | None = None) -> ImportResult:
        """Add a job's classes (idempotent) and retire older iterations of the same job from the queues.

        Mass features are computed over the whole set (see :mod:`features`), display PNGs per class.

        Returns:
            :class:`ImportResult`; importing the same set again adds 0 classes.

        Raises:
            ValueError: the set holds classes of different image sizes (one stack per job).
        """
        if not cs.classes:
            raise ValueError("a class set without classes")
        shapes = {c.image.shape for c in cs.classes}
        if len(shapes) != 1:
            raise ValueError(f"class averages of one job differ in size: {sorted(shapes)}")
        stack = np.stack([c.image for c in cs.classes])
        apix = np.array([np.nan if c.pixel_size_A is None else c.pixel_size_A for c in cs.classes])
        feats = mass_features(stack, apix)
        pngs = [display.png_bytes(c.image) for c in cs.classes]
        tag = iteration_tag(cs.iteration)

        with self.write() as s:
            ds = s.scalar(select(DatasetRow).where(DatasetRow.name == cs.dataset))
            if ds is None:
                ds = DatasetRow(name=cs.dataset)
                s.add(ds)
                s.flush()
            job = s.scalar(
                select(JobRow).where(JobRow.dataset_id == ds.id, JobRow.name == cs.job, JobRow.iteration_tag == tag)
            )
            if job is None:
                job = JobRow(
                    dataset_id=ds.id, name=cs.job, iteration=cs.iteration, iteration_tag=tag, software=cs.software,
                    distribution_source=cs.distribution_source, sources=json.dumps(cs.sources, sort_keys=True),
                    fingerprint=fingerprint, superseded=False,
                )
                s.add(job)
                s.flush()
            have = set(s.scalars(select(ClassRow.number).where(ClassRow.job_id == job.id)))
            added = 0
            for i, c in enumerate(cs.classes):
                if c.number in have:
                    continue
                s.add(
                    ClassRow(
                        job_id=job.id, number=c.number, uid=class_uid(cs.dataset, cs.job, cs.iteration, c.number),
                        ny=int(c.image.shape[0]), nx=int(c.image.shape[1]),
                        image=np.ascontiguousarray(c.image, dtype="<f4").tobytes(), display_png=pngs[i],
                        resolution_A=c.resolution_A, particle_count=c.particle_count,
                        class_distribution=c.class_distribution, soft_distribution=c.soft_distribution,
                        pixel_size_A=c.pixel_size_A, mass=_f(feats.mass[i]), dmean_mass=_f(feats.dmean[i]),
                        dmedian_mass=_f(feats.dmedian[i]), dmode_mass=_f(feats.dmode[i]),
                    )
                )
                added += 1
            superseded = self._supersede(s, ds.id, cs.job)
        return ImportResult(job_id=job.id, added=added, already_there=len(have), superseded_jobs=superseded)

    @staticmethod
    def _supersede(s: Session, dataset_id: int, name: str) -> int:
        """Mark every iteration of a job but the highest as superseded; returns how many are."""
        jobs = list(s.scalars(select(JobRow).where(JobRow.dataset_id == dataset_id, JobRow.name == name)))
        newest = max(jobs, key=lambda j: -1 if j.iteration is None else j.iteration)
        for j in jobs:
            j.superseded = j.id != newest.id
        return len(jobs) - 1

    # ------------------------------------------------------------------ labelers & sessions

    def labeler_id(self, email: str) -> int:
        """The id of the labeler ``email`` (created on first sign-in)."""
        with self.read() as s:
            found = s.scalar(select(LabelerRow.id).where(LabelerRow.email == email))
        if found is not None:
            return found
        try:
            with self.write() as s:
                row = LabelerRow(email=email)
                s.add(row)
                s.flush()
                return row.id
        except sa.exc.IntegrityError:  # created concurrently
            with self.read() as s:
                return s.scalar(select(LabelerRow.id).where(LabelerRow.email == email))  # type: ignore[return-value]

    def create_session(self, labeler_id: int) -> tuple[str, str]:
        """A new web session: ``(cookie token, csrf token)``; only the token's sha256 is stored."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self.write() as s:
            s.add(
                SessionRow(
                    token_sha256=_token_hash(token), labeler_id=labeler_id, csrf_token=csrf,
                    expires_at=utcnow() + SESSION_LIFETIME,
                )
            )
        return token, csrf

    def session(self, token: str) -> tuple[int, str, str] | None:
        """``(labeler id, email, csrf token)`` of a live session, or ``None``.

        Answers are cached in this process for :data:`SESSION_CACHE_S` (every page and API call
        asks); a sign-out in this process takes effect at once, one in another replica sharing
        the database within that time.
        """
        key = _token_hash(token)
        now = time.monotonic()
        hit = self._sessions.get(key)
        if hit is not None and now - hit[0] < SESSION_CACHE_S and _aware(hit[2]) > utcnow():
            return hit[1]
        with self.connect() as conn:
            row = conn.execute(_SESSION, {"h": key}).first()
        if row is None or _aware(row.expires_at) < utcnow():
            self._sessions.pop(key, None)
            return None
        found = (row.labeler_id, row.email, row.csrf_token)
        if len(self._sessions) > 10_000:
            self._sessions.clear()
        self._sessions[key] = (now, found, row.expires_at)
        return found

    def end_session(self, token: str) -> None:
        key = _token_hash(token)
        self._sessions.pop(key, None)
        with self.write() as s:
            s.execute(sa.delete(SessionRow).where(SessionRow.token_sha256 == key))

    # ------------------------------------------------------------------ grades

    def record_grade(self, labeler_id: int, class_id: int, grade: str) -> GradeResult:
        """Save ``grade`` as the labeler's current grade of the class, in history and in the outbox.

        One transaction; the same grade given again changes nothing. The labeler's queue
        position moves to the class.

        Raises:
            ValueError: ``grade`` is not one of A, B, C, D, F.
            LookupError: no such class or labeler.
        """
        if grade not in GRADE_VALUE:
            raise ValueError(f"grade must be one of {', '.join(GRADES)}, got {grade!r}")
        with self._write_conn() as conn:
            facts = conn.execute(_FACTS, {"cid": class_id, "lid": labeler_id}).first()
            if facts is None:
                raise LookupError(f"no class {class_id} or labeler {labeler_id}")
            if facts.grade == grade:
                conn.execute(_MOVE, {"lid": labeler_id, "cid": class_id})
                return GradeResult(class_id, grade, grade, facts.revision, changed=False)
            revision = self._record(conn, facts, class_id, labeler_id, "graded", grade, facts.grade, None)
            return GradeResult(class_id, grade, facts.grade, revision, changed=True)

    def undo(self, labeler_id: int) -> GradeResult | None:
        """Revert the labeler's latest grade action not yet undone; ``None`` when there is none.

        The class gets back the grade it had before (or none); the reverted action stays in
        history, marked undone, and the undo itself is recorded and announced.
        """
        with self._write_conn() as conn:
            last = conn.execute(
                select(GradeHistoryRow.id, GradeHistoryRow.class_id, GradeHistoryRow.grade, GradeHistoryRow.previous_grade)
                .where(
                    GradeHistoryRow.labeler_id == labeler_id,
                    GradeHistoryRow.action == "graded",
                    GradeHistoryRow.undone.is_(False),
                )
                .order_by(GradeHistoryRow.id.desc())
                .limit(1)
            ).first()
            if last is None:
                return None
            facts = conn.execute(_FACTS, {"cid": last.class_id, "lid": labeler_id}).one()
            conn.execute(sa.update(GradeHistoryRow).where(GradeHistoryRow.id == last.id).values(undone=True))
            revision = self._record(conn, facts, last.class_id, labeler_id, "undone", last.previous_grade, last.grade, last.id)
            return GradeResult(last.class_id, last.previous_grade, last.grade, revision, changed=True)

    def _record(
        self, conn: sa.Connection, facts, class_id: int, labeler_id: int, action: str, grade: str | None,
        previous: str | None, reverts: int | None,
    ) -> int:
        """Append one history row, make ``grade`` current (none: delete), move the position, announce."""
        now = utcnow()
        revision = conn.execute(
            sa.insert(GradeHistoryRow)
            .values(class_id=class_id, labeler_id=labeler_id, action=action, grade=grade, previous_grade=previous,
                    reverts=reverts, undone=False, at=now)  # fmt: skip
            .returning(GradeHistoryRow.id)
        ).scalar_one()
        if grade is None:
            conn.execute(sa.delete(GradeRow).where(GradeRow.class_id == class_id, GradeRow.labeler_id == labeler_id))
        else:
            self._set_current(conn, class_id, labeler_id, grade, revision, now)
        conn.execute(_MOVE, {"lid": labeler_id, "cid": class_id})
        data = LabelRecorded(
            dataset=facts.dataset, class_uid=facts.uid, job=facts.name, iteration=facts.iteration,
            class_number=facts.number, labeler=facts.email, grade=grade, previous_grade=previous,  # type: ignore[arg-type]
            action=action, revision=revision, recorded_at=now.isoformat(),  # type: ignore[arg-type]
        )  # fmt: skip
        # The history id is unique in this database: no earlier copy of this event can be queued.
        add_outbox(conn, data, stable_event_id("label.recorded", facts.uid, facts.email, revision, now.isoformat()), check=False)
        return revision

    def set_position(self, labeler_id: int, class_id: int) -> None:
        """Move the labeler's resume position to ``class_id`` (a skipped class)."""
        with self.write() as s:
            s.execute(sa.update(LabelerRow).where(LabelerRow.id == labeler_id).values(position_class_id=class_id))

    def history(self, labeler_id: int | None = None, class_id: int | None = None) -> list[GradeHistoryRow]:
        """Grade actions in order, optionally of one labeler and/or one class."""
        q = select(GradeHistoryRow).order_by(GradeHistoryRow.id)
        if labeler_id is not None:
            q = q.where(GradeHistoryRow.labeler_id == labeler_id)
        if class_id is not None:
            q = q.where(GradeHistoryRow.class_id == class_id)
        with self.read() as s:
            return list(s.scalars(q))

    def _set_current(self, s: Session | sa.Connection, class_id: int, labeler_id: int, grade: str, revision: int, now: datetime) -> None:
        """Upsert the one current grade of (class, labeler)."""
        values = dict(class_id=class_id, labeler_id=labeler_id, grade=grade, revision=revision, updated_at=now)
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(GradeRow).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["class_id", "labeler_id"], set_=dict(grade=grade, revision=revision, updated_at=now)
        )
        s.execute(stmt)

    # ------------------------------------------------------------------ outbox

    def pending_outbox(self, limit: int = 200) -> list[OutboxRow]:
        """Events not yet published, oldest first."""
        with self.read() as s:
            return list(
                s.scalars(select(OutboxRow).where(OutboxRow.published_at.is_(None)).order_by(OutboxRow.id).limit(limit))
            )

    def mark_published(self, ids: list[int]) -> None:
        if not ids:
            return
        with self.write() as s:
            s.execute(sa.update(OutboxRow).where(OutboxRow.id.in_(ids)).values(published_at=utcnow()))

    # ------------------------------------------------------------------ reading

    def grade_rows(self) -> list[tuple[int, str, str, str]]:
        """Every current grade as ``(class id, class uid, labeler e-mail, grade)``, by class id."""
        q = (
            select(GradeRow.class_id, ClassRow.uid, LabelerRow.email, GradeRow.grade)
            .join(ClassRow, ClassRow.id == GradeRow.class_id)
            .join(LabelerRow, LabelerRow.id == GradeRow.labeler_id)
            .order_by(GradeRow.class_id, LabelerRow.email)
        )
        with self.read() as s:
            return [tuple(r) for r in s.execute(q)]  # type: ignore[misc]

    def class_image(self, class_id: int) -> np.ndarray:
        """The float32 (ny, nx) image of a class, exactly as imported.

        Raises:
            LookupError: no such class.
        """
        with self.read() as s:
            row = s.execute(select(ClassRow.image, ClassRow.ny, ClassRow.nx).where(ClassRow.id == class_id)).first()
        if row is None:
            raise LookupError(f"no class {class_id}")
        return np.frombuffer(row.image, dtype="<f4").reshape(row.ny, row.nx).astype(np.float32)

    def display_png(self, class_id: int) -> bytes | None:
        with self.read() as s:
            return s.scalar(select(ClassRow.display_png).where(ClassRow.id == class_id))

    def counts(self) -> dict[str, int]:
        """Rows per table (datasets, jobs, classes, labelers, grades, history, outbox pending)."""
        with self.read() as s:
            return {
                "datasets": s.scalar(select(func.count()).select_from(DatasetRow)) or 0,
                "jobs": s.scalar(select(func.count()).select_from(JobRow)) or 0,
                "classes": s.scalar(select(func.count()).select_from(ClassRow)) or 0,
                "labelers": s.scalar(select(func.count()).select_from(LabelerRow)) or 0,
                "grades": s.scalar(select(func.count()).select_from(GradeRow)) or 0,
                "history": s.scalar(select(func.count()).select_from(GradeHistoryRow)) or 0,
                "outbox_pending": s.scalar(
                    select(func.count()).select_from(OutboxRow).where(OutboxRow.published_at.is_(None))
                ) or 0,
            }


def add_outbox(s: Session | sa.Connection, data: EventData, event_id: str, *, check: bool = True) -> None:
    """Queue ``data`` for publication in the current transaction (same id → queued once;
    ``check=False`` when the id cannot have been queued before)."""
    if not check or s.scalar(select(OutboxRow.id).where(OutboxRow.event_id == event_id)) is None:
        s.execute(
            sa.insert(OutboxRow).values(
                event_id=event_id, event_type=data.event_type(), payload=data.model_dump_json(), created_at=utcnow()
            )
        )


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _aware(t: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns: they are UTC."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    # Let SQLAlchemy's "begin" hook emit BEGIN itself (pysqlite's implicit BEGIN is deferred).
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_on_begin(conn) -> None:
    # Writers take the write lock up front: a deferred transaction that reads and then writes can
    # fail with SQLITE_BUSY on the lock upgrade, without waiting on busy_timeout.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("cryobus_write") else "BEGIN")
