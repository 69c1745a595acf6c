"""The web app's guards: only signed-in labelers grade, nobody changes another labeler's grade,
every state-changing request needs the session's CSRF token, a proxy header counts only from
the trusted proxy, and names from the file system are shown as text."""

from __future__ import annotations

import re
import shutil

import pytest
from fastapi.testclient import TestClient

from cryobus.services.labelling import queue
from cryobus.services.labelling.service import read_job
from cryobus.services.labelling.store import LabelStore
from cryobus.services.labelling.web.app import create_app
from cryobus.services.labelling.web.auth import AuthConfig

from .conftest import discover

TOKEN = "facility-token-123"
XSS = '<img src=x onerror="document.title=1">'


@pytest.fixture
def store(tmp_path, relion_project, job010):
    # The dataset is a folder whose name is an XSS payload, discovered by ingest like any other.
    root = tmp_path / XSS
    shutil.copytree(job010, root / "Class2D" / "job010")
    (job, ) = [j for j in discover(root) if j.job_type == "Class2D"]
    assert job.dataset == XSS
    s = LabelStore(f"sqlite:///{tmp_path / 'labels.sqlite'}")
    s.import_class_set(read_job(job))
    yield s
    s.close()


def client(store, **auth) -> TestClient:
    return TestClient(create_app(store, auth=AuthConfig(access_token=TOKEN, **auth)), follow_redirects=False)


def signin(c: TestClient, email: str, token: str = TOKEN):
    form = c.get("/signin").text
    nonce = re.search(r'name="csrf_token" value="([^"]+)"', form)[1]
    return c.post("/signin", data={"email": email, "token": token, "csrf_token": nonce})


def csrf_of(c: TestClient) -> str:
    return re.search(r'data-csrf="([^"]+)"', c.get("/label/1").text)[1]


def test_unauthenticated_requests_cannot_grade(store):
    c = client(store)
    assert c.get("/label/1").status_code == 303 and c.get("/label/1").headers["location"] == "/signin"
    assert c.post("/api/grade", json={"class_id": 1, "grade": "A"}).status_code == 401
    assert c.post("/label/1/grade", data={"grade": "A"}).status_code == 401
    assert c.post("/api/undo", json={}).status_code == 401
    assert c.get("/class/1/image.png").status_code == 303
    assert store.counts()["grades"] == 0


def test_wrong_token_or_bad_email_or_stale_form_do_not_sign_in(store):
    c = client(store)
    assert signin(c, "ana@lab.org", "guess").status_code == 403
    assert signin(c, "not-an-email").status_code == 400
    assert c.post("/signin", data={"email": "ana@lab.org", "token": TOKEN, "csrf_token": "forged"}).status_code == 403
    assert c.get("/label/1").status_code == 303
    assert signin(c, "Ana@Lab.org").headers["location"] == "/label"
    assert c.get("/label/1").status_code == 200


def test_csrf_is_enforced_on_every_state_change(store):
    c = client(store)
    signin(c, "ana@lab.org")
    token = csrf_of(c)
    assert c.post("/api/grade", json={"class_id": 1, "grade": "A"}).status_code == 403
    assert c.post("/api/grade", json={"class_id": 1, "grade": "A"}, headers={"X-CSRF-Token": "x" * 43}).status_code == 403
    assert c.post("/label/1/grade", data={"grade": "A"}).status_code == 403
    assert c.post("/label/1/skip", data={}).status_code == 403
    assert c.post("/undo", data={}).status_code == 403
    assert c.post("/export", data={}).status_code == 403
    assert c.post("/signout", data={}).status_code == 403
    assert store.counts()["grades"] == 0
    assert c.post("/api/grade", json={"class_id": 1, "grade": "A"}, headers={"X-CSRF-Token": token}).status_code == 200
    assert c.post("/label/2/grade", data={"grade": "3", "csrf_token": token}).status_code == 303
    assert store.counts()["grades"] == 2
    # Another session's token is no good either.
    other = client(store)
    signin(other, "ben@lab.org")
    assert other.post("/api/grade", json={"class_id": 1, "grade": "F"}, headers={"X-CSRF-Token": token}).status_code == 403


def test_a_labeler_cannot_change_another_labelers_grade(store):
    ana, ben = client(store), client(store)
    signin(ana, "ana@lab.org")
    signin(ben, "ben@lab.org")
    ana_csrf, ben_csrf = csrf_of(ana), csrf_of(ben)
    assert ana.post("/api/grade", json={"class_id": 1, "grade": "A"}, headers={"X-CSRF-Token": ana_csrf}).status_code == 200
    # Naming someone else in the request is refused outright...
    forged = {"class_id": 1, "grade": "F", "labeler": "ana@lab.org"}
    assert ben.post("/api/grade", json=forged, headers={"X-CSRF-Token": ben_csrf}).status_code == 422
    # ...and grading the same class, or undoing, only ever touches ben's own grade.
    assert ben.post("/api/grade", json={"class_id": 1, "grade": "F"}, headers={"X-CSRF-Token": ben_csrf}).status_code == 200
    assert ben.post("/api/undo", json={}, headers={"X-CSRF-Token": ben_csrf}).json()["undone"]
    assert ben.post("/api/undo", json={}, headers={"X-CSRF-Token": ben_csrf}).json() == {"undone": False}
    ana_id = store.labeler_id("ana@lab.org")
    assert queue.class_view(store, 1, ana_id).my_grade == "A"
    assert [r[2:] for r in store.grade_rows()] == [("ana@lab.org", "A")]


def test_signing_out_ends_the_session(store):
    c = client(store)
    signin(c, "ana@lab.org")
    assert c.post("/signout", data={"csrf_token": csrf_of(c)}).status_code == 303
    assert c.get("/label/1").status_code == 303


def test_proxy_header_counts_only_from_the_trusted_proxy(store):
    untrusted = client(store, trusted_header="X-Forwarded-Email")  # TestClient's address is not loopback
    assert untrusted.get("/label/1", headers={"X-Forwarded-Email": "ana@lab.org"}).status_code == 303
    trusted = client(store, trusted_header="X-Forwarded-Email", trusted_proxies=frozenset({"testclient"}))
    page = trusted.get("/label/1", headers={"X-Forwarded-Email": "Ana@Lab.org"})
    assert page.status_code == 200 and "ana@lab.org" in page.text
    csrf = re.search(r'data-csrf="([^"]+)"', page.text)[1]
    r = trusted.post("/api/grade", json={"class_id": 1, "grade": "B"}, headers={"X-CSRF-Token": csrf, "X-Forwarded-Email": "ana@lab.org"})
    assert r.status_code == 200
    # A different identity from the proxy gets a different session: the old CSRF token is no good.
    r = trusted.post("/api/grade", json={"class_id": 2, "grade": "B"}, headers={"X-CSRF-Token": csrf, "X-Forwarded-Email": "ben@lab.org"})
    assert r.status_code == 403


def test_names_from_the_file_system_are_escaped(store):
    c = client(store)
    signin(c, "ana@lab.org")
    for path in ("/label/1", "/grid", "/grid/1"):
        page = c.get(path)
        assert page.status_code == 200
        assert XSS not in page.text
        assert "&lt;img src=x onerror=&#34;document.title=1&#34;&gt;" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
    token = csrf_of(c)
    c.post("/api/grade", json={"class_id": 1, "grade": "A"}, headers={"X-CSRF-Token": token})
    page = c.get("/agreement").text
    assert XSS not in page and "&lt;img src=x" in page
