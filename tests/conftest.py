"""Fixtures every test area shares: the team's real data folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.s3_fixtures import s3_client, s3_env, s3_prefix, s3_server  # noqa: F401  (shared fixtures)

SHARED_DATA = Path(os.environ.get("CRYOBUS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real cryo-EM files (../shared/data, see its PROVENANCE.md).

    Under CI (CI=true) a missing folder is an error, never a skip.
    """
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"real test data folder {SHARED_DATA} is missing (CI=true)")
        pytest.skip(f"real test data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def relion_project(shared_data: Path) -> Path:
    """The complete small RELION 5 SPA run (Import → MotionCorr → CtfFind → AutoPick → Extract → Class2D)."""
    return shared_data / "Conecsion__sppractice"


@pytest.fixture
def nats_server(tmp_path: Path):
    """A real nats-server with JetStream (file storage) on a random loopback port."""
    from cryobus.shared.bus.server import EmbeddedNatsServer

    server = EmbeddedNatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def restore_root_logger():
    """For tests that call ``configure_logging``, which replaces the root logger's handlers:
    put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
