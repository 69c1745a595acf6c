"""A lab grades class averages in a real browser (Playwright driving Debian's Chromium): sign in,
grade three classes by keyboard, reload — the grades are there; a second labeler gets their own
queue; the agreement view shows both; undo, arrows and the grid work from the keyboard; a
dataset named like an XSS payload is only ever text."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cryobus.services.labelling import queue
from cryobus.services.labelling.service import read_job
from cryobus.services.labelling.store import LabelStore
from cryobus.services.labelling.web.app import create_app
from cryobus.services.labelling.web.auth import AuthConfig
from cryobus.services.labelling.web.server import WebServer

from .conftest import discover

CHROMIUM = Path(os.environ.get("CRYOBUS_CHROMIUM", "/usr/bin/chromium"))
TOKEN = "browser-test-token"
XSS = '<img src=x onerror="document.title=1">'


@pytest.fixture
def site(tmp_path, job010):
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} missing (CI=true): apt-get install chromium chromium-driver")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium chromium-driver)")
    root = tmp_path / XSS
    shutil.copytree(job010, root / "Class2D" / "job010")
    (job,) = [j for j in discover(root) if j.job_type == "Class2D"]
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.sqlite'}")
    store.import_class_set(read_job(job))
    server = WebServer(create_app(store, auth=AuthConfig(access_token=TOKEN)), "127.0.0.1", 0)
    url = server.start()
    try:
        yield url, store
    finally:
        server.stop()
        store.close()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield b
        finally:
            b.close()


def new_labeler(browser, url: str, email: str):
    page = browser.new_context().new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(f"{url}/label")
    assert page.url.endswith("/signin")
    page.fill("#email", email)
    page.fill("#token", TOKEN)
    page.click("#signin")
    page.wait_for_url("**/label/*")
    return page, errors


def test_grading_in_the_browser(site, browser):
    from playwright.sync_api import expect

    url, store = site
    ana, ana_errors = new_labeler(browser, url, "ana@lab.org")
    assert ana.url == f"{url}/label/1"
    assert ana.inner_text("#stat-dataset") == XSS  # the folder name, as text
    assert ana.title() != "1"  # ...and never run

    for key, next_class in (("a", 2), ("3", 3), ("f", 4)):
        ana.keyboard.press(key)
        ana.wait_for_url(f"{url}/label/{next_class}")
    ana.reload()
    assert ana.inner_text("#progress-text") == "3 / 50 graded"
    for class_id, grade in ((1, "A"), (2, "C"), (3, "F")):
        ana.goto(f"{url}/label/{class_id}")
        assert ana.inner_text("#my-grade") == grade
    ana_id = store.labeler_id("ana@lab.org")
    assert [queue.class_view(store, i, ana_id).my_grade for i in (1, 2, 3, 4)] == ["A", "C", "F", None]

    ana.goto(f"{url}/label")  # resumes at the first class not yet graded
    assert ana.url == f"{url}/label/4"

    ben, ben_errors = new_labeler(browser, url, "ben@lab.org")
    assert ben.url == f"{url}/label/1"  # his own queue starts at the beginning
    assert ben.inner_text("#progress-text") == "0 / 50 graded"
    ben.keyboard.press("b")
    ben.wait_for_url(f"{url}/label/2")

    ana.goto(f"{url}/agreement")
    row = ana.locator("#agreement tr[data-class-id='1']")
    assert row.locator("td.grade-cell").all_inner_texts() == ["A", "B"]
    assert ana.locator("#agreement th.labeler").all_inner_texts() == ["ana@lab.org", "ben@lab.org"]
    assert "Fleiss' kappa over 1 classes" in ana.inner_text("#kappa")

    # Undo (U) takes back the last grade and shows that class; arrows move through the job.
    ana.goto(f"{url}/label/4")
    ana.keyboard.press("u")
    ana.wait_for_url(f"{url}/label/3")
    assert ana.inner_text("#my-grade") == "—"
    ana.keyboard.press("ArrowLeft")
    ana.wait_for_url(f"{url}/label/2")
    ana.keyboard.press("ArrowRight")
    ana.wait_for_url(f"{url}/label/3")

    # The grid: the first class ana has not graded is selected; a key grades it at once.
    ana.goto(f"{url}/grid/1")
    assert ana.inner_text("#grid-dataset") == XSS
    ana.keyboard.press("d")
    expect(ana.locator("#grid .tile.graded")).to_have_count(3)  # saved and shown
    ana.reload()
    assert queue.class_view(store, 3, ana_id).my_grade == "D"
    assert ana.locator("#grid .tile[data-class-id='3'] .badge").inner_text() == "D"

    assert ana.title() != "1"
    assert ana_errors == [] and ben_errors == []  # no script error, no CSP violation
