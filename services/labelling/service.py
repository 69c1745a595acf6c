"""The labelling service: imports class averages from ``job.discovered`` and runs the web app.

Consumes ``job.discovered`` for

* RELION ``Class2D`` (files ``model_star``, ``classes_mrcs``, ``data_star``), and
* CryoSPARC ``class_averages`` (files ``cs``, ``mrc``; the ``JXXX_YYY_particles.cs`` of the same
  iteration is read from beside them for particle counts — without it the classes are imported
  with unknown counts and the missing file is announced with ``input.missing``),

and imports every class into the label store (idempotent: a redelivered or re-announced job adds
nothing). Other job types are acknowledged and ignored. A bad file is an ``InputError``: the
event is dead-lettered with ``labelling.failed`` naming the file and field.

In the same process, a background task serves the web app (uvicorn in its own thread, on
``labelling_host``:``labelling_port``, default 127.0.0.1:8080) and publishes the label store's
outbox: ``label.recorded`` for every grade, ``artifact.stored`` + ``training_set.exported`` for
every export. A grade is committed before it is announced, so a grade given while NATS is down
is published when it is back. If the port cannot be bound the service says so in its log and
goes on importing (the web app is then unavailable).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from cryobus.shared.class_averages.model import ClassSet
from cryobus.shared.class_averages.cryosparc import particles_cs_for, read_class_averages
from cryobus.shared.class_averages.relion import read_class2d
from cryobus.services.labelling.store import LabelStore, default_url
from cryobus.shared.bus.reprocess import enable_reprocessing
from cryobus.shared.bus.service import HandlerContext, Service
from cryobus.shared.config import Settings
from cryobus.shared.errors import InputError, TransientError
from cryobus.shared.events import Envelope, JobDiscovered, event_class_for_type

log = logging.getLogger("cryobus.labelling")

service = Service(name="labelling")
# `cryobus reprocess --stage labelling`: its handlers re-run on the replayed events.
enable_reprocessing(service)

OUTBOX_POLL_S = 1.0
OUTBOX_BATCH = 200

_stores: dict[str, LabelStore] = {}
_stores_lock = threading.Lock()


def db_url(settings: Settings) -> str:
    """The label store URL: ``labelling_db_url`` or the SQLite file under ``state_dir``."""
    if settings.labelling_db_url is not None:
        return settings.labelling_db_url.get_secret_value()
    return default_url(settings.state_dir)


def label_store(settings: Settings) -> LabelStore:
    """The process's one :class:`LabelStore` for the configured URL (created, with its schema, on first use)."""
    url = db_url(settings)
    with _stores_lock:
        if url not in _stores:
            _stores[url] = LabelStore(url)
        return _stores[url]


def access_token_file(settings: Settings) -> Path:
    return Path(settings.state_dir).resolve() / "labelling" / "access_token"


def access_token(settings: Settings) -> str | None:
    """The sign-in form's shared token: ``labelling_access_token``, else the one kept in
    :func:`access_token_file` (generated there, readable by the owner only, on first use);
    ``None`` when a trusted proxy header is configured and no token is."""
    if settings.labelling_access_token is not None:
        return settings.labelling_access_token.get_secret_value()
    if settings.labelling_trusted_header:
        return None
    path = access_token_file(settings)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def web_banner(settings: Settings) -> str:
    """What ``cryobus up`` prints about the web app: its URL and how to sign in."""
    host = f"[{settings.labelling_host}]" if ":" in settings.labelling_host else settings.labelling_host
    where = (
        f"http://{host}:{settings.labelling_port}"
        if settings.labelling_port
        else f"a free port (see {Path(settings.state_dir).resolve() / 'http' / 'labelling-web.url'})"
    )
    if settings.labelling_access_token is not None:
        how = "sign in with your e-mail and CRYOBUS_LABELLING_ACCESS_TOKEN"
    elif settings.labelling_trusted_header:
        how = f"signed in by the proxy header {settings.labelling_trusted_header}"
    else:
        access_token(settings)
        how = f"sign in with your e-mail and the access token in {access_token_file(settings)}"
    return f"cryobus: labelling web app at {where} ({how})"


def read_job(
    job: JobDiscovered, ctx: HandlerContext | None = None, *, max_bytes: int = 8 << 30, settle_s: float = 30.0
) -> ClassSet | None:
    """The class set a ``job.discovered`` announces, or ``None`` for any other kind of job.

    Raises:
        InputError: a file is missing or malformed (names file and field).
        TransientError: a CryoSPARC ``particles.cs`` modified less than ``settle_s`` ago cannot be
            read (it may still be being written; ingest only vouches for the files it names).
    """
    if job.software == "relion" and job.job_type == "Class2D":
        for role in ("model_star", "classes_mrcs"):
            if role not in job.files:
                raise InputError(f"job.discovered for Class2D lacks the {role} file", file=job.job_dir, field=role)
        return read_class2d(
            dataset=job.dataset, project_dir=job.project_dir, job_dir=job.job_dir,
            model_star=job.files["model_star"], classes_mrcs=job.files["classes_mrcs"],
            data_star=job.files.get("data_star"), iteration=job.iteration, max_bytes=max_bytes,
        )  # fmt: skip
    if job.software == "cryosparc" and job.job_type == "class_averages":
        for role in ("cs", "mrc"):
            if role not in job.files:
                raise InputError(f"job.discovered for class_averages lacks the {role} file", file=job.job_dir, field=role)
        particles: Path | None = particles_cs_for(job.files["cs"])
        if not particles.is_file():  # type: ignore[union-attr]
            if ctx is not None:
                ctx.report_missing(dataset=job.dataset, path=str(particles), referenced_by=job.files["cs"])
            particles = None
        try:
            return read_class_averages(
                dataset=job.dataset, project_dir=job.project_dir, job_dir=job.job_dir, cs=job.files["cs"],
                mrc_path=job.files["mrc"], particles_cs=particles, iteration=job.iteration, max_bytes=max_bytes,
            )  # fmt: skip
        except InputError as exc:
            # ingest vouched for the .cs and .mrc, not for particles.cs: one written moments ago
            # may still be in progress, so it is retried before it is called bad.
            if particles is not None and exc.file == str(particles) and _recent(particles, settle_s):
                raise TransientError(f"{particles} unreadable, probably still being written: {exc.reason}") from exc
            raise
    return None


def _recent(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


@service.handler(JobDiscovered)
def on_job(event: Envelope[JobDiscovered], ctx: HandlerContext) -> None:
    """A RELION Class2D / CryoSPARC 2D job → its classes in the label store (queued for grading)."""
    job = event.data
    class_set = read_job(job, ctx, max_bytes=ctx.settings.max_image_bytes, settle_s=ctx.settings.truncated_after_s)
    if class_set is None:
        return
    try:
        result = label_store(ctx.settings).import_class_set(class_set, fingerprint=job.fingerprint)
    except ValueError as exc:  # e.g. class averages of different sizes in one job
        raise InputError(str(exc), file=next(iter(class_set.sources.values())), field=None) from exc
    ctx.log.info(
        "imported %s %s: %d new classes (%d already there), %d older iteration(s) retired",
        class_set.dataset, class_set.job, result.added, result.already_there, result.superseded_jobs,
    )


async def publish_outbox(runtime, store: LabelStore) -> int:
    """Publish pending outbox events (with publish acks) and mark them; returns how many.

    An event published but not yet marked (crash in between) is published again with the same
    id, which the server's de-duplication drops.
    """
    rows = await asyncio.to_thread(store.pending_outbox, OUTBOX_BATCH)
    done: list[int] = []
    try:
        for row in rows:
            model = event_class_for_type(row.event_type)
            if model is None:  # written by a newer version: leave it for that version to publish
                continue
            env = Envelope.wrap(model.model_validate_json(row.payload), source=runtime.source, id=row.event_id)
            await runtime.publish_envelope(env)
            done.append(row.id)
    finally:
        await asyncio.to_thread(store.mark_published, done)
    return len(done)


@service.on_start
async def web_and_outbox(runtime) -> None:
    """Serve the web app and publish the outbox until the service stops."""
    from cryobus.services.labelling.web.app import create_app
    from cryobus.services.labelling.web.auth import AuthConfig
    from cryobus.services.labelling.web.server import WebServer

    settings: Settings = runtime.settings
    store = await asyncio.to_thread(label_store, settings)
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def nudge() -> None:
        loop.call_soon_threadsafe(wake.set)

    auth = AuthConfig(
        access_token=access_token(settings),
        trusted_header=settings.labelling_trusted_header,
        trusted_proxies=frozenset(settings.labelling_trusted_proxies),
        cookie_secure=settings.labelling_cookie_secure,
    )
    app = create_app(store, auth=auth, artifacts=runtime.store, on_change=nudge)
    web: WebServer | None = WebServer(app, settings.labelling_host, settings.labelling_port)
    url_file = Path(settings.state_dir) / "http" / "labelling-web.url"
    try:
        url = await asyncio.to_thread(web.start)  # type: ignore[union-attr]
        log.info("labelling web app at %s (label store %s)", url, sa.engine.make_url(store.url).render_as_string())
        try:
            url_file.parent.mkdir(parents=True, exist_ok=True)
            url_file.write_text(url + "\n")
        except OSError:
            pass
    except (OSError, RuntimeError) as exc:
        log.error(
            "labelling web app cannot listen on %s:%s (%s): grading is unavailable; class averages are still imported",
            settings.labelling_host, settings.labelling_port, exc,
        )
        web = None
    try:
        while True:
            try:
                await publish_outbox(runtime, store)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS or the database away: the rows wait in the outbox
                log.warning("outbox not published yet: %s", exc)
            try:
                await asyncio.wait_for(wake.wait(), timeout=OUTBOX_POLL_S)
            except TimeoutError:
                pass
            wake.clear()
    finally:
        if web is not None:
            await asyncio.to_thread(web.stop)
            url_file.unlink(missing_ok=True)
