"""A poison message — an exposure whose path is a folder, so rendering it fails the same way on
every attempt without being bad input the handler can recognise — is retried, dead-lettered
after ``max_deliver`` attempts with the error as its reason, and never holds up the others."""

from __future__ import annotations

import time

import pytest

from cryobus.shared.events import Envelope, ExposureDiscovered
from cryobus.shared.events.envelope import parse_envelope

from .harness import (
    Landing,
    all_done,
    assert_previews_complete,
    consumer_state,
    count,
    dead_letters,
    elapsed,
    log_records,
    publish,
    record,
    start_up,
    transient_retries,
    wait_for,
)

pytestmark = pytest.mark.slow

N_EXPOSURES = 60
MAX_DELIVER = 3


def test_poison_exposure_is_dead_lettered_after_max_deliver_while_the_rest_flows(nats_server, tmp_path):
    url = nats_server.url
    landing = Landing(tmp_path / "staging", tmp_path / "watched", N_EXPOSURES, interval_s=0.05)
    folder = tmp_path / "poison_0001.mrc"  # a folder where a micrograph should be
    folder.mkdir()
    poison = Envelope.wrap(
        ExposureDiscovered(dataset="watched", path=str(folder), micrograph_name="poison_0001", file_format="mrc",
                           size_bytes=4096, mtime_ns=folder.stat().st_mtime_ns),
        source="/faults/producer",
    )
    up = start_up(tmp_path, url, services="ingest,render", watched=landing.watched, env={
        "CRYOBUS_MAX_DELIVER": str(MAX_DELIVER), "CRYOBUS_NAK_BACKOFF_S": "[0.5]", "CRYOBUS_ACK_WAIT_S": "5",
    })
    try:
        wait_for(lambda: consumer_state(url, "render") is not None, 60, "render bound", up.tail)
        landing.start()
        wait_for(lambda: count(url, "cryobus.events.render.completed") >= 4, 60, "first previews", up.tail)
        publish(url, [poison])
        t0 = time.monotonic()
        wait_for(lambda: dead_letters(url), 60, "the dead letter", up.tail, interval=0.1)
        t_dead = elapsed(t0)
        done_meanwhile = count(url, "cryobus.events.render.completed")
        landing.join()
        wait_for(lambda: count(url, "cryobus.events.render.completed") >= 2 * N_EXPOSURES and all_done(url, ["render"]),
                 120, "every other exposure previewed", up.tail)
        t_done = elapsed(t0)
    finally:
        rc = up.stop()
    assert rc == 0, up.tail()

    letters = dead_letters(url)
    assert len(letters) == 1, [dl.headers for dl in letters]
    letter = letters[0]
    assert letter.service == "render"
    assert parse_envelope(letter.data).id == poison.id  # the original bytes, replayable
    assert letter.headers["Cryobus-Deliveries"] == str(MAX_DELIVER)
    assert letter.headers["Cryobus-Error-Class"] == "retries_exhausted"
    assert "IsADirectoryError" in letter.reason and str(folder) in letter.reason, letter.reason

    v = assert_previews_complete(url, up.store, "watched", landing.names, failures_ok=1)
    (failed,) = v.of_type("render.failed.v1")
    assert failed.data.failed_event_id == poison.id and failed.data.deliveries == MAX_DELIVER
    assert failed.data.error_class == "retries_exhausted" and "Is a directory" in failed.data.reason
    assert not [k for k in v.stored if "poison" in k]
    attempts = transient_retries(log_records(up.state / "logs" / "render-0.log"))
    assert attempts == MAX_DELIVER - 1  # the last failure dead-letters instead of retrying
    record("poison", exposures=N_EXPOSURES, max_deliver=MAX_DELIVER, nak_backoff_s=[0.5],
           seconds_to_dead_letter=t_dead, previews_done_meanwhile=done_meanwhile, seconds_to_all_done=t_done,
           retries_before_dead_letter=attempts, dead_letters=len(letters), reason=letter.reason)
