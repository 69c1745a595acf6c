"""The labelling service on a real nats-server: a Class2D job and a CryoSPARC 2D job arrive as
ingest announces them → their classes are queued; grades given in the web app are announced
with ``label.recorded`` (also those given while the bus was away); an export is announced with
``artifact.stored`` and ``training_set.exported``; a corrupt job is dead-lettered with
``labelling.failed`` naming the file; a busy web port does not stop the imports."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import httpx2 as httpx
import pytest

from cryobus.services.labelling.service import label_store, service
from cryobus.shared.bus.topology import EVENTS_STREAM
from cryobus.shared.config import Settings
from cryobus.summary import read_events
from tests.runtime_harness import publish, run_service, test_settings, until

from .conftest import discover

TOKEN = "service-test-token"


def settings_for(server, tmp_path: Path, **kw) -> Settings:
    return test_settings(server, tmp_path, **{"labelling_port": 0, "labelling_access_token": TOKEN, **kw})


async def consumer_idle(js) -> bool:
    info = await js.consumer_info(EVENTS_STREAM, "labelling")
    return info.num_pending == 0 and info.num_ack_pending == 0


def run(server, settings: Settings, scenario):
    return run_service(service, settings, scenario)


class Browser:
    """A labeler's HTTP session (sign in, then JSON API calls with the CSRF token)."""

    def __init__(self, url: str, email: str):
        self.http = httpx.AsyncClient(base_url=url, follow_redirects=False)
        self.email = email
        self.csrf = ""

    async def sign_in(self) -> None:
        form = (await self.http.get("/signin")).text
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', form)[1]
        r = await self.http.post("/signin", data={"email": self.email, "token": TOKEN, "csrf_token": nonce})
        assert r.status_code == 303, r.text
        page = await self.http.get("/label", follow_redirects=True)
        self.csrf = re.search(r'data-csrf="([^"]+)"', page.text)[1]

    async def post(self, path: str, body: dict) -> dict:
        r = await self.http.post(path, json=body, headers={"X-CSRF-Token": self.csrf})
        assert r.status_code == 200, r.text
        return r.json()


def test_classes_in_grades_and_exports_out(nats_server, tmp_path, relion_project, cryosparc_project):
    settings = settings_for(nats_server, tmp_path)
    relion = [j for j in discover(relion_project) if j.job_type == "Class2D"][0]
    cs2d = [j for j in discover(cryosparc_project, "cs-data") if j.job_type == "class_averages"][0]

    async def scenario(js, rt):
        await publish(js, relion)
        assert await until(lambda: consumer_idle(js))  # imported first: its classes get ids 1..50
        await publish(js, cs2d)
        await publish(js, relion.model_copy(update={"fingerprint": "rescanned"}))  # re-announced: nothing new
        store = label_store(settings)
        assert await until(lambda: consumer_idle(js))
        assert store.counts()["classes"] == 100 and store.counts()["jobs"] == 2

        url = (Path(settings.state_dir) / "http" / "labelling-web.url").read_text().strip()
        ana = Browser(url, "ana@lab.org")
        await ana.sign_in()
        first = await ana.post("/api/grade", {"class_id": 1, "grade": "B"})
        await ana.post("/api/grade", {"class_id": 2, "grade": "F"})
        await ana.post("/api/undo", {})
        assert first["next_url"] == "/label/2"

        async def recorded():
            return [e for e in await read_events(js, 0, "cryobus.events.label.recorded")]

        assert await until(lambda: _n(recorded, 3))
        events = await recorded()
        assert [(e.data.action, e.data.grade, e.data.class_number) for e in events] == [
            ("graded", "B", 1), ("graded", "F", 2), ("undone", None, 2),
        ]  # fmt: skip
        assert {e.data.labeler for e in events} == {"ana@lab.org"} and events[0].source == "/cryobus/labelling"
        assert events[0].data.class_uid == f"{relion.dataset}/Conecsion__sppractice/Class2D/job010/it025/class_001"
        assert store.counts()["outbox_pending"] == 0

        form = (await ana.http.get("/export")).text
        assert "Export" in form
        r = await ana.http.post("/export", data={"include_partial": "1", "csrf_token": ana.csrf})
        assert r.status_code == 200 and "Exported" in r.text

        async def exported():
            return await read_events(js, 0, "cryobus.events.training_set.exported")

        assert await until(lambda: _n(exported, 1))
        (ex,) = await exported()
        assert ex.data.classes == 1 and ex.data.labelers == ["ana@lab.org"]
        stored = [e for e in await read_events(js, 0, "cryobus.events.artifact.stored") if e.data.producer == "labelling"]
        assert ex.data.manifest_uri in {e.data.uri for e in stored} and ex.data.table_uri in {e.data.uri for e in stored}
        assert Path(ex.data.manifest_uri.removeprefix("file://")).is_file()
        await ana.http.aclose()

    run(nats_server, settings, scenario)


async def _n(fetch, n: int) -> bool:
    return len(await fetch()) >= n


def test_grades_given_while_the_bus_is_away_are_announced_later(nats_server, tmp_path, relion_project):
    settings = settings_for(nats_server, tmp_path)
    relion = [j for j in discover(relion_project) if j.job_type == "Class2D"][0]
    from cryobus.services.labelling.service import read_job

    store = label_store(settings)  # the web app wrote these; the service (and its publisher) was down
    store.import_class_set(read_job(relion))
    ana = store.labeler_id("ana@lab.org")
    store.record_grade(ana, 5, "A")
    store.record_grade(ana, 6, "D")

    async def scenario(js, rt):
        async def recorded():
            return await read_events(js, 0, "cryobus.events.label.recorded")

        assert await until(lambda: _n(recorded, 2))
        assert [e.data.class_number for e in await recorded()] == [5, 6]

    run(nats_server, settings, scenario)
    assert store.counts()["outbox_pending"] == 0


def test_corrupt_job_is_dead_lettered_naming_the_file(nats_server, tmp_path, relion_project):
    project = tmp_path / "proj"
    shutil.copytree(relion_project / "Class2D", project / "Class2D")
    model = project / "Class2D/job010/run_it025_model.star"
    model.write_text(model.read_text().replace("_rlnReferenceImage", "_rlnNotTheReference"))
    (job,) = [j for j in discover(project) if j.job_type == "Class2D"]
    settings = settings_for(nats_server, tmp_path)

    async def scenario(js, rt):
        await publish(js, job)

        async def failed():
            return await read_events(js, 0, "cryobus.events.labelling.failed")

        assert await until(lambda: _n(failed, 1))
        (f,) = await failed()
        assert f.data.file == str(model) and f.data.field == "rlnReferenceImage" and f.data.error_class == "permanent"

    run(nats_server, settings, scenario)


def test_busy_web_port_does_not_stop_imports(nats_server, tmp_path, relion_project, caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        settings = settings_for(nats_server, tmp_path, labelling_port=busy.getsockname()[1])
        (job,) = [j for j in discover(relion_project) if j.job_type == "Class2D"]

        async def said_so() -> bool:
            return any("cannot listen" in r.getMessage() for r in caplog.records)

        async def scenario(js, rt):
            await publish(js, job)
            assert await until(lambda: consumer_idle(js))
            assert label_store(settings).counts()["classes"] == 50
            assert await until(said_so)  # and the log says why grading is unavailable

        run(nats_server, settings, scenario)


@pytest.fixture(autouse=True)
def _fresh_stores():
    """Each test gets its own label store (the service caches one per URL and process)."""
    from cryobus.services.labelling import service as svc

    yield
    for s in svc._stores.values():
        s.close()
    svc._stores.clear()
