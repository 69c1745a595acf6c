"""`cryobus up` runs the labelling service and prints where its web app is and how to sign in."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_cryobus_up_prints_the_web_app_url(nats_server, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYOBUS_LABELLING_")}
    proc = subprocess.run(
        [sys.executable, "-m", "cryobus", "up", "--services", "labelling", "--nats", nats_server.url,
         "--state-dir", str(tmp_path / "state"), "--store", (tmp_path / "store").as_uri(),
         "--http-port", str(port), "--exit-when-idle", "--idle-timeout", "60"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    token_file = tmp_path / "state" / "labelling" / "access_token"
    assert f"labelling web app at http://127.0.0.1:{port} " in proc.stdout
    assert str(token_file) in proc.stdout
    assert token_file.stat().st_mode & 0o077 == 0 and len(token_file.read_text().strip()) >= 24
