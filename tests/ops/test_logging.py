"""A service's log lines: one JSON object each, tagged with the event being handled, no secrets."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import json
import logging
import secrets
import subprocess
import sys
import threading
import warnings

import pytest

from cryobus.shared.logging import configure_logging, event_context, redact

LANDED = "cryobus.micrograph.landed.v1"
B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


pytestmark = pytest.mark.usefixtures("restore_root_logger")  # configure_logging swaps the root handlers


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    """Every stderr line so far, each parsed as JSON (fails on a line that is not one object)."""
    err = capsys.readouterr().err
    return [json.loads(line) for line in err.splitlines()]


def nkey_seed() -> str:
    """A user nkey seed in the real format: "SU" + 56 base32 characters."""
    return "SU" + "".join(secrets.choice(B32) for _ in range(56))


def test_each_line_is_a_json_object_with_the_standard_fields(capsys):
    configure_logging("render")
    logging.getLogger("cryobus.render").info("rendered %d previews", 3)
    logging.getLogger("cryobus.render.fft").warning("odd box size")
    first, second = lines(capsys)
    assert first["message"] == "rendered 3 previews"
    assert first["level"] == "INFO" and first["logger"] == "cryobus.render" and first["service"] == "render"
    assert second["level"] == "WARNING" and second["logger"] == "cryobus.render.fft"
    stamp = dt.datetime.fromisoformat(first["time"])
    assert stamp.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 3600
    for line in (first, second):  # no event is being handled: no event fields
        assert not {"event_id", "correlation_id", "event_type", "exc"} & line.keys()


def test_configuring_twice_leaves_one_handler_and_the_new_settings(capsys):
    configure_logging("render")
    configure_logging("convert", level="warning")
    log = logging.getLogger("cryobus.convert")
    log.info("not shown at WARNING")
    log.error("shown once")
    (only,) = lines(capsys)
    assert only["message"] == "shown once" and only["service"] == "convert"
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("convert", level="LOUD")


def test_event_context_reaches_a_worker_thread_started_with_to_thread(capsys):
    configure_logging("metadata")
    log = logging.getLogger("cryobus.metadata")

    def handler() -> str:
        log.info("parsed STAR table")
        return threading.current_thread().name

    async def main() -> str:
        with event_context("ev-1", "corr-9", LANDED):
            thread_name = await asyncio.to_thread(handler)
        log.info("after the event")
        return thread_name

    thread_name = asyncio.run(main())
    assert thread_name != threading.main_thread().name  # really ran in another thread
    inside, after = lines(capsys)
    assert (inside["event_id"], inside["correlation_id"], inside["event_type"]) == ("ev-1", "corr-9", LANDED)
    assert not {"event_id", "correlation_id", "event_type"} & after.keys()


def test_concurrent_tasks_keep_their_own_event_ids(capsys):
    configure_logging("render")
    log = logging.getLogger("cryobus.render")

    async def handle(event_id: str) -> None:
        with event_context(event_id, f"corr-{event_id}", LANDED):
            for step in range(3):
                log.info("step %d", step)
                await asyncio.sleep(0)  # let the other task log in between

    async def main() -> None:
        await asyncio.gather(handle("a"), handle("b"))

    asyncio.run(main())
    got = lines(capsys)
    assert len(got) == 6
    assert [line["event_id"] for line in got] != ["a"] * 3 + ["b"] * 3  # they did interleave
    for line in got:
        assert line["correlation_id"] == f"corr-{line['event_id']}"


def test_copy_context_run_carries_the_event_and_nested_blocks_restore(capsys):
    configure_logging("labelling")
    log = logging.getLogger("cryobus.labelling")
    with event_context("outer", "corr", LANDED):
        with event_context("inner", None, None):
            ctx = contextvars.copy_context()
        worker = threading.Thread(target=ctx.run, args=(log.info, "from a plain thread"))
        worker.start()
        worker.join()
        log.info("back in the outer event")
    threaded, outer = lines(capsys)
    assert threaded["event_id"] == "inner" and "correlation_id" not in threaded
    assert (outer["event_id"], outer["correlation_id"]) == ("outer", "corr")


def test_exceptions_become_an_exc_field(capsys):
    configure_logging("convert")
    try:
        raise ValueError("box size 0 in header field nx")
    except ValueError:
        logging.getLogger("cryobus.convert").exception("conversion failed")
    (line,) = lines(capsys)
    assert line["level"] == "ERROR" and line["message"] == "conversion failed"
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert "ValueError: box size 0 in header field nx" in line["exc"]


def test_secrets_are_redacted_everywhere_in_the_line(capsys):
    configure_logging("ingest")
    log = logging.getLogger("cryobus.ingest")
    seed = nkey_seed()
    log.info("connecting to %s", "nats://cryobus:hunter2@nats.facility:4222")
    log.info("loaded seed %s", seed)
    log.info("env AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG password=s3cr3t AWS_ACCESS_KEY_ID=AKIAEXAMPLE")
    log.info("settings", extra={"store_options": {"secret_access_key": "wJalrXUtnFEMI", "bucket": "raw"}})
    log.info("connected", extra={"nats_password": "s3cr3t", "nats_user": "cryobus"})
    try:
        raise ConnectionError("cannot reach nats://cryobus:hunter2@nats.facility:4222")
    except ConnectionError:
        log.warning("retrying", exc_info=True)
    err = capsys.readouterr().err
    for secret in ("hunter2", seed, "wJalrXUtnFEMI", "s3cr3t"):
        assert secret not in err
    url, seed_line, env, extra, top_extra, exc = [json.loads(line) for line in err.splitlines()]
    assert url["message"] == "connecting to nats://cryobus:***@nats.facility:4222"
    assert seed_line["message"] == "loaded seed ***"
    assert "password=***" in env["message"] and "AWS_SECRET_ACCESS_KEY=***" in env["message"]
    assert extra["store_options"] == {"secret_access_key": "***", "bucket": "raw"}
    assert (top_extra["nats_password"], top_extra["nats_user"]) == ("***", "cryobus")
    assert "nats://cryobus:***@nats.facility:4222" in exc["exc"]


def test_redact_leaves_ordinary_text_alone():
    text = "wrote s3://cryobus/raw/FoilHole_1_Data.mrc key=render/a.png event_id=01J9 user@facility.org"
    assert redact(text) == text
    assert redact("nats://s3cr3ttoken@nats:4222") == "nats://***@nats:4222"
    assert redact('{"password": "two words"}') == '{"password": "***"}'


def test_warnings_go_through_the_json_handler(capsys):
    configure_logging("render")
    warnings.warn("pixel size missing, assuming 1.0 Å/px", UserWarning, stacklevel=1)
    (line,) = lines(capsys)
    assert line["logger"] == "py.warnings" and "assuming 1.0 Å/px" in line["message"]


def test_a_fresh_process_logs_json_to_stderr_only():
    code = (
        "import logging; from cryobus.shared.logging import configure_logging, event_context\n"
        "configure_logging('render', 'DEBUG')\n"
        "with event_context('ev-7', 'corr-7', 'cryobus.micrograph.landed.v1'):\n"
        "    logging.getLogger('cryobus.render').debug('multi\\nline message')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout == ""
    (line,) = [json.loads(raw) for raw in proc.stderr.splitlines()]
    assert line["message"] == "multi\nline message" and line["level"] == "DEBUG" and line["event_id"] == "ev-7"
