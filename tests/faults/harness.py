"""What every fault-injection scenario shares: run cryobus as a facility would (``cryobus up`` or
``cryobus run <service>``), break something, then read back from the bus and the store whether
anything was lost, duplicated or left undone — and record the figures.

Figures go to stdout (``FAULTS {...}`` lines, shown with ``pytest -s``) and, when
``CRYOBUS_FAULTS_REPORT`` names a file, are appended to it as JSON lines (docs/reliability.md
quotes them).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import psutil

from cryobus.dlq import DeadLetter, read_dead_letters
from cryobus.shared.bus.topology import DLQ_STREAM, EVENTS_STREAM, ensure_streams
from cryobus.shared.events import Envelope
from tests.e2e.helpers import REPO, events_from, sha256_file, wait_until

# ---------------------------------------------------------------------------------- figures


def record(scenario: str, **figures: Any) -> None:
    """Print one scenario's measured figures and append them to ``$CRYOBUS_FAULTS_REPORT``."""
    line = json.dumps({"scenario": scenario, **figures}, sort_keys=True, default=str)
    print(f"\nFAULTS {line}", flush=True)
    target = os.environ.get("CRYOBUS_FAULTS_REPORT")
    if target:
        with open(target, "a") as f:
            f.write(line + "\n")


# ---------------------------------------------------------------------------------- processes


def spawn(*args: str, env: dict[str, str], log: Path, preexec_fn: Any = None) -> subprocess.Popen[bytes]:
    """Start ``python -m cryobus ARGS`` (the console script's entry point), output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cryobus", *args], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, **env}, preexec_fn=preexec_fn,
        )


@dataclass
class Up:
    """One ``cryobus up`` run against an existing nats-server: its folders and its supervisor process."""

    proc: subprocess.Popen[bytes]
    store: Path
    state: Path
    log: Path

    def pid(self, service: str, replica: int = 0) -> int | None:
        """Pid of a service replica from the supervisor's pid file (None before its first start)."""
        try:
            return int((self.state / "pids" / f"{service}-{replica}.pid").read_text())
        except (OSError, ValueError):
            return None

    def pids(self) -> dict[str, int]:
        out = {}
        for f in sorted((self.state / "pids").glob("*.pid")):
            try:
                out[f.stem] = int(f.read_text())
            except (OSError, ValueError):
                continue
        return out

    def tail(self, n: int = 3000) -> str:
        """The end of the supervisor's and every service's log, for assertion messages."""
        parts = [self.log.read_text(errors="replace")[-n:]]
        for f in sorted((self.state / "logs").glob("*.log")):
            parts.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-n:])
        return "\n".join(parts)

    def stop(self, timeout: float = 60) -> int:
        """Ctrl-C the supervisor (it stops every service in order); its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


def start_up(
    tmp_path: Path, nats_url: str, *, services: str, watched: Path | None = None, env: dict[str, str] | None = None,
    preexec_fn: Any = None, store: Path | None = None,
) -> Up:
    """``cryobus up --nats URL --services ...`` with its store, state and log under ``tmp_path``."""
    store = store or tmp_path / "store"
    state = tmp_path / "state"
    log = tmp_path / "up.log"
    args = ["up", "--nats", nats_url, "--store", store.as_uri(), "--state-dir", str(state), "--services", services]
    if watched is not None:
        args += ["--watch", str(watched)]
    if "labelling" in services:
        args += ["--http-port", "0"]
    proc = spawn(*args, env={"CRYOBUS_SETTLE_S": "0.2", **(env or {})}, log=log, preexec_fn=preexec_fn)
    return Up(proc, store, state, log)


class RssSampler:
    """Samples the resident set size (psutil) of named processes in a background thread.

    ``pids`` is called at every sample, so a restarted replica's new pid is followed.
    """

    def __init__(self, pids: Any, interval_s: float = 0.2):
        self._pids = pids
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def sample(self) -> dict[str, int]:
        for name, pid in self._pids().items():
            try:
                rss = psutil.Process(pid).memory_info().rss
            except (psutil.Error, OSError):
                continue
            self.last[name] = rss
            self.peak[name] = max(self.peak.get(name, 0), rss)
        return dict(self.last)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def mib(n: int) -> float:
    return round(n / 2**20, 1)


# ---------------------------------------------------------------------------------- the bus


def on_bus(url: str, fn: Any, default: Any = None) -> Any:
    """Run ``await fn(js)`` on a fresh connection; ``default`` when the server cannot answer."""

    async def main() -> Any:
        try:
            nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False)
        except Exception:  # noqa: BLE001 - server down (on purpose, in these tests)
            return default
        try:
            return await fn(nc.jetstream())
        except Exception:  # noqa: BLE001 - stream/consumer not provisioned yet, server stopping...
            return default
        finally:
            await nc.close()

    return asyncio.run(main())


def count(url: str, subject: str) -> int:
    """How many messages of the events stream are on ``subject`` (0 when unknown)."""

    async def fn(js: Any) -> int:
        info = await js.stream_info(EVENTS_STREAM, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())

    return on_bus(url, fn, 0)


def consumer_state(url: str, durable: str, stream: str = EVENTS_STREAM) -> dict[str, int] | None:
    """pending / ack_pending / redelivered / delivered_seq (stream seq) / deliveries of a durable consumer, or None."""

    async def fn(js: Any) -> dict[str, int]:
        info = await js.consumer_info(stream, durable)
        return {
            "pending": info.num_pending or 0, "ack_pending": info.num_ack_pending or 0,
            "redelivered": info.num_redelivered or 0, "delivered_seq": info.delivered.stream_seq or 0,
            "deliveries": info.delivered.consumer_seq or 0,  # every delivery, redeliveries included
        }

    return on_bus(url, fn)


def all_done(url: str, durables: list[str], stream: str = EVENTS_STREAM) -> bool:
    """Every consumer bound, nothing pending, nothing unacknowledged."""
    for d in durables:
        st = consumer_state(url, d, stream)
        if st is None or st["pending"] or st["ack_pending"]:
            return False
    return True


def dead_letters(url: str) -> list[DeadLetter]:
    async def fn(js: Any) -> list[DeadLetter]:
        info = await js.stream_info(DLQ_STREAM)
        return await read_dead_letters(js) if info.state.messages else []

    return on_bus(url, fn, [])


def metric(http_url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter over the series matching ``labels`` from a replica's /metrics."""
    text = urllib.request.urlopen(f"{http_url}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def service_urls(state: Path, service: str) -> list[str]:
    """/metrics base URLs of a service's live replicas (``<state>/http/<service>-<pid>.url``)."""
    out = []
    for f in (state / "http").glob(f"{service}-*.url"):
        pid = f.stem.rsplit("-", 1)[1]
        if pid.isdigit() and psutil.pid_exists(int(pid)):
            out.append(f.read_text().strip())
    return out


# ---------------------------------------------------------------------------------- logs


def log_records(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a service log (all its restarts: the supervisor appends)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def handler_runs(records: list[dict[str, Any]]) -> Counter[str]:
    """Per event id, how many times a handler finished it (``processed ...`` log lines)."""
    return Counter(r.get("event_id") for r in records if str(r.get("message", "")).startswith("processed "))


def transient_retries(records: list[dict[str, Any]]) -> int:
    return sum(1 for r in records if str(r.get("message", "")).startswith("transient failure"))


# ---------------------------------------------------------------------------------- verdicts


@dataclass
class Verdict:
    """What a run announced for a set of micrographs."""

    events: list[Envelope[Any]]
    stored: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for e in self.events:
            if e.type == "cryobus.artifact.stored.v1":
                self.stored.setdefault(e.data.key, []).append(e.data.sha256)

    def of_type(self, suffix: str) -> list[Envelope[Any]]:
        return [e for e in self.events if e.type.endswith(suffix)]


def assert_previews_complete(url: str, store: Path, dataset: str, names: list[str], *, failures_ok: int = 0) -> Verdict:
    """Nothing lost, nothing duplicated in content, all work done, for plain micrographs.

    Every name was discovered exactly once; each of its two previews (``webp/<name>.webp`` and
    ``webp/<name>_ctffit.webp``) was announced by exactly one ``artifact.stored`` (one sha256,
    matching the bytes in the store) and one ``render.completed``; no key of any artifact was
    announced with two different sha256; exactly ``failures_ok`` ``*.failed`` events.
    """
    v = Verdict(events_from(url))
    discovered = Counter(e.data.micrograph_name for e in v.of_type("exposure.discovered.v1") if e.data.dataset == dataset)
    assert set(discovered) >= set(names), f"lost discoveries: {sorted(set(names) - set(discovered))[:10]}"
    assert max(discovered.values()) == 1, f"announced twice: {[n for n, c in discovered.items() if c > 1][:10]}"
    completed = Counter((e.data.name, e.data.image_kind) for e in v.of_type("render.completed.v1") if e.data.dataset == dataset)
    for name in names:
        for key, kind in ((f"{dataset}/webp/{name}.webp", "micrograph"), (f"{dataset}/webp/{name}_ctffit.webp", "power_spectrum")):
            assert key in v.stored, f"{key} never announced"
            assert len(set(v.stored[key])) == 1, f"{key} written with {len(set(v.stored[key]))} different contents"
            assert len(v.stored[key]) == 1, f"{key} announced {len(v.stored[key])} times"
            assert sha256_file(store / key) == v.stored[key][0], f"{key} on disk differs from its announcement"
            assert completed[(name, kind)] == 1, f"render.completed for {name} {kind}: {completed[(name, kind)]}"
    mixed = {k: shas for k, shas in v.stored.items() if len(set(shas)) > 1}
    assert not mixed, f"keys written with different contents: {sorted(mixed)[:10]}"
    failed = v.of_type(".failed.v1")
    assert len(failed) == failures_ok, [e.data.reason for e in failed]
    return v


# ---------------------------------------------------------------------------------- privileges

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2


def drop_dac_override() -> None:
    """``preexec_fn``: remove root's power to ignore file permissions from the child's bounding set.

    After exec, a root process's capabilities are limited by the bounding set, so ``chmod`` denies
    it like any user (capabilities(7)). Needs CAP_SETPCAP in the parent.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def chmod_denies_children(probe_dir: Path) -> tuple[bool, Any]:
    """Whether a read-only folder refuses writes from a child process, and the ``preexec_fn`` that makes it so.

    Non-root: plain chmod. Root: only if the capability to override permissions can be dropped.
    """
    probe_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(probe_dir, 0o555)
    try:
        for i, preexec in enumerate((None, drop_dac_override)):
            try:
                rc = subprocess.run(
                    [sys.executable, "-c", f"open({str(probe_dir / f'probe{i}')!r}, 'x')"], preexec_fn=preexec,
                    capture_output=True, timeout=30,
                ).returncode
            except (OSError, subprocess.SubprocessError):
                continue
            if rc != 0:
                return True, preexec
        return False, None
    finally:
        os.chmod(probe_dir, 0o755)


def mount_tmpfs(target: Path, size: str) -> bool:
    """Mount a tiny tmpfs at ``target`` (root with CAP_SYS_ADMIN only); False when not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target)],
                       capture_output=True, timeout=30)
    return r.returncode == 0


def umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def wait_for(predicate: Any, timeout: float, what: str, tail: Any = None, interval: float = 0.3) -> None:
    """``wait_until`` that fails the test with ``what`` (and a log tail) when the time is up."""
    if not wait_until(predicate, timeout, interval):
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail() if tail else ''}")


def elapsed(t0: float) -> float:
    return round(time.monotonic() - t0, 2)


# ---------------------------------------------------------------------------------- inputs


class Landing:
    """Micrographs landing in a watched folder over time, as a microscope's copy job delivers them.

    They are written to a staging folder first (``write_micrographs``: small float32 MRCs), then
    renamed into ``watched``, ``batch`` at a time, one every ``interval_s`` on average, in a
    background thread (set ``interval_s`` to 0 meanwhile to land the rest at once).
    """

    def __init__(self, staging: Path, watched: Path, n: int, *, size: int = 256, interval_s: float = 0.1,
                 batch: int = 1):
        from tests.e2e.helpers import write_micrographs

        self.paths = write_micrographs(staging, n, size=size)
        self.names = [p.stem for p in self.paths]
        self.watched = watched
        self.interval_s = interval_s
        self.batch = batch
        self.landed = 0
        watched.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for i, p in enumerate(self.paths, 1):
            os.rename(p, self.watched / p.name)  # atomic, keeps the (old) mtime: complete at once
            self.landed += 1
            if i % self.batch == 0:
                time.sleep(self.interval_s * self.batch)

    def start(self) -> Landing:
        self._thread.start()
        return self

    def join(self, timeout: float = 120) -> None:
        self._thread.join(timeout)


def readyz(http_url: str) -> int:
    """HTTP status of a replica's ``/readyz`` (0 when it does not answer)."""
    try:
        return urllib.request.urlopen(f"{http_url}/readyz", timeout=2).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def service_env(url: str, store: Path, state: Path, **extra: str) -> dict[str, str]:
    """Environment of a ``cryobus run <service>`` replica (what ``cryobus up`` or a pod sets)."""
    return {"CRYOBUS_NATS_URL": url, "CRYOBUS_STORE_URL": store.as_uri(), "CRYOBUS_STATE_DIR": str(state),
            "CRYOBUS_SETTLE_S": "0.2", **extra}


def publish(url: str, envelopes: list[Envelope[Any]], chunk: int = 500) -> float:
    """Publish envelopes as a producer does (``Nats-Msg-Id`` = id, publish acks awaited, ``chunk``
    at a time); returns the seconds it took."""

    async def main() -> float:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await ensure_streams(js)  # as every producer does: the streams may not exist yet
        t0 = time.monotonic()
        try:
            for k in range(0, len(envelopes), chunk):
                await asyncio.gather(*(js.publish(e.nats_subject, e.to_json(), headers={"Nats-Msg-Id": e.id})
                                       for e in envelopes[k:k + chunk]))
        finally:
            await nc.close()
        return time.monotonic() - t0

    return asyncio.run(main())


def exposure(path: Path, dataset: str) -> Envelope[Any]:
    """The ``exposure.discovered`` fact ingest would announce for a complete MRC micrograph."""
    from cryobus.shared.events import ExposureDiscovered

    st = path.stat()
    return Envelope.wrap(
        ExposureDiscovered(dataset=dataset, path=str(path), micrograph_name=path.stem, file_format="mrc",
                           size_bytes=st.st_size, mtime_ns=st.st_mtime_ns),
        source="/faults/producer",
    )
