"""``cryobus up``: one machine, one command.

Starts an embedded ``nats-server`` (unless ``--nats`` names one), then each service as its own
process through the same entry point a container uses (``cryobus run <service>``), restarts a
service that dies, and stops everything in order on Ctrl-C / SIGTERM. With
``exit_when_idle`` it waits until ingest has scanned every watched root and every service's
durable consumer has nothing pending or unacknowledged, then prints a summary and exits
(0, or 1 if anything failed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryobus.registry import load_service
from cryobus.shared.bus.connection import connect_with_retry
from cryobus.shared.bus.server import EmbeddedNatsServer
from cryobus.shared.bus.topology import COMMANDS_STREAM, EVENTS_STREAM, ensure_streams
from cryobus.shared.config import Settings
from cryobus.summary import RunSummary, collect_summary

log = logging.getLogger("cryobus.up")

IDLE_CHECK_INTERVAL_S = 0.5
IDLE_CONFIRMATIONS = 3  # consecutive quiet checks (stream sequence unchanged, nothing pending)


@dataclass
class Child:
    name: str
    replica: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    log_path: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.name}-{self.replica}"


@dataclass
class Supervisor:
    """Runs the services of one cryobus instance.

    Args:
        settings: shared settings; ``nats_url`` is replaced by the embedded server's when ``nats`` is None.
        services: service names to run.
        replicas: per-service replica count (default 1).
        nats: URL of an existing NATS; None starts an embedded one under ``settings.state_dir``.
        exit_when_idle: stop once every discovered input has been processed or dead-lettered.
    """

    settings: Settings
    services: list[str]
    replicas: dict[str, int] = field(default_factory=dict)
    nats: str | None = None
    exit_when_idle: bool = False
    idle_timeout_s: float = 3600.0
    children: list[Child] = field(default_factory=list)
    server: EmbeddedNatsServer | None = None
    _stopping: bool = False

    def run(self) -> int:
        """Run until stopped (or idle); returns the process exit code."""
        state = Path(self.settings.state_dir).resolve()
        (state / "logs").mkdir(parents=True, exist_ok=True)
        (state / "pids").mkdir(parents=True, exist_ok=True)
        for name in self.services:
            load_service(name)  # fail fast on an unknown name or a missing extra
        if self.nats is None:
            self.server = EmbeddedNatsServer(state / "nats")
            self.server.start()
            self.settings = self.settings.model_copy(update={"nats_url": self.server.url})
            print(f"cryobus: embedded NATS JetStream at {self.server.url} (data in {state / 'nats'})", flush=True)
        else:
            self.settings = self.settings.model_copy(update={"nats_url": self.nats})
        try:
            return asyncio.run(self._main(state))
        finally:
            self._stop_children()
            if self.server is not None:
                self.server.stop()

    # ------------------------------------------------------------------ children

    def _env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(
            {
                "CRYOBUS_NATS_URL": s.nats_url,
                "CRYOBUS_STORE_URL": s.store_url,
                "CRYOBUS_STATE_DIR": str(Path(s.state_dir).resolve()),
                "CRYOBUS_WATCH": json.dumps([str(Path(w).resolve()) for w in s.watch]),
                "CRYOBUS_ROOTS": json.dumps([str(Path(r).resolve()) for r in s.roots]),
                "CRYOBUS_HTTP_HOST": s.http_host,
                "CRYOBUS_LABELLING_HOST": s.labelling_host,
                "CRYOBUS_LABELLING_PORT": str(s.labelling_port),
                "CRYOBUS_LOG_LEVEL": s.log_level,
            }
        )
        if s.dataset:
            env["CRYOBUS_DATASET"] = s.dataset
        return env

    def _spawn(self, child: Child, state: Path) -> None:
        child.log_path = state / "logs" / f"{child.label}.log"
        with open(child.log_path, "ab") as logf:
            child.proc = subprocess.Popen(
                [sys.executable, "-m", "cryobus", "run", child.name],
                env=self._env(),
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C goes to us; we stop children in order
            )
        (state / "pids" / f"{child.label}.pid").write_text(f"{child.proc.pid}\n")

    def _watch_children(self, state: Path) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is None:
                if now >= child.next_start:
                    self._spawn(child, state)
                continue
            code = child.proc.poll()
            if code is None or self._stopping:
                continue
            child.restarts += 1
            delay = min(0.5 * 2 ** min(child.restarts - 1, 5), 10.0)
            print(f"cryobus: service {child.label} exited with {code}; restarting in {delay:.1f} s", flush=True)
            child.proc = None
            child.next_start = now + delay

    def _stop_children(self, grace_s: float | None = None) -> None:
        self._stopping = True
        grace = self.settings.shutdown_grace_s + 5 if grace_s is None else grace_s
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for c in running:
            c.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + grace
        for c in running:
            try:
                c.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                c.proc.kill()  # type: ignore[union-attr]
                c.proc.wait()  # type: ignore[union-attr]

    # ------------------------------------------------------------------ main loop

    async def _main(self, state: Path) -> int:
        nc = await connect_with_retry(self.settings, "cryobus-up")
        js = nc.jetstream()
        await ensure_streams(js, replicas=self.settings.stream_replicas)
        start_seq = (await js.stream_info(EVENTS_STREAM)).state.last_seq
        for name in self.services:
            for r in range(self.replicas.get(name, 1)):
                self.children.append(Child(name, r))
        self._watch_children(state)
        print(f"cryobus: started {', '.join(c.label for c in self.children)} (logs in {state / 'logs'})", flush=True)
        if "labelling" in self.services:
            from cryobus.services.labelling.service import web_banner

            print(web_banner(self.settings.model_copy(update={"state_dir": state})), flush=True)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        quiet = 0
        last_seq = -1
        deadline = time.monotonic() + self.idle_timeout_s
        exit_code = 0
        while not stop.is_set():
            self._watch_children(state)
            if self.exit_when_idle:
                idle, seq = await self._is_idle(js, start_seq)
                quiet = quiet + 1 if (idle and seq == last_seq) else 0
                last_seq = seq
                if quiet >= IDLE_CONFIRMATIONS:
                    break
                if time.monotonic() > deadline:
                    print("cryobus: --exit-when-idle timed out before the work was done", flush=True)
                    exit_code = 2
                    break
            try:
                await asyncio.wait_for(stop.wait(), timeout=IDLE_CHECK_INTERVAL_S)
            except TimeoutError:
                pass

        summary = await collect_summary(js, start_seq)
        await nc.close()
        self._stop_children()
        restarts = {c.label: c.restarts for c in self.children if c.restarts}
        print(summary.render(restarts=restarts), flush=True)
        if exit_code == 0 and self.exit_when_idle and summary.failures:
            exit_code = 1
        return exit_code

    async def _is_idle(self, js: object, start_seq: int) -> tuple[bool, int]:
        """True when every watched root was scanned and no consumer has pending or unacked messages."""
        from cryobus.summary import scanned_roots

        try:
            seq = (await js.stream_info(EVENTS_STREAM)).state.last_seq  # type: ignore[attr-defined]
            roots = await scanned_roots(js, start_seq)
            wanted = {str(Path(w).resolve()) for w in self.settings.watch}
            if not wanted <= roots:
                return False, seq
            for name in self.services:
                for stream, durable in ((EVENTS_STREAM, name), (COMMANDS_STREAM, f"{name}-commands")):
                    try:
                        info = await js.consumer_info(stream, durable)  # type: ignore[attr-defined]
                    except Exception:  # noqa: BLE001 - not (yet) created: the service is not bound
                        if durable == name and load_service(name).subjects("event"):
                            return False, seq
                        continue
                    if info.num_pending or info.num_ack_pending:
                        return False, seq
            return True, seq
        except Exception as exc:  # noqa: BLE001 - e.g. server restarting: not idle
            log.debug("idle check failed: %s", exc)
            return False, -1


__all__ = ["Supervisor", "RunSummary"]
