"""The tiny HTTP endpoint of every service: ``/metrics``, ``/healthz``, ``/readyz``.

Served by the standard library's ``ThreadingHTTPServer`` in a daemon thread, so scrapes and
probes never run on the service's asyncio loop (nats-jetstream-notes §6) and a hung handler
cannot block shutdown.

* ``/healthz``: 200 ``ok`` while the process runs (Kubernetes liveness).
* ``/readyz``: asks ``ready()`` on every request (it must not lie: a ``/health`` that always
  answers ok is what STYLE.md tells us to avoid). 200 with the reason when ready, 503 with
  the reason (``nats disconnected``, ``consumer not bound``...) otherwise.
* ``/metrics``: the service's Prometheus registry, text format 0.0.4.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST

from cryobus.shared.metrics import ServiceMetrics

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], tuple[bool, str]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Rebinding the same port right after a restart must not fail on TIME_WAIT sockets.
    allow_reuse_address = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves socket.getfqdn(host), a reverse DNS lookup that can
        # stall start-up for seconds in a cluster with slow DNS; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from a background daemon thread.

    Args:
        metrics: the service's metrics; ``/metrics`` renders its registry.
        host: address to bind (``"0.0.0.0"`` in a container so the kubelet and Prometheus
            reach it; an address containing ``:`` binds IPv6).
        port: TCP port; 0 picks a free one (see :meth:`start`'s return value).
        ready: called on every ``/readyz`` request; returns ``(is_ready, reason)``. An
            exception it raises counts as not ready, with the exception as the reason.
    """

    def __init__(
        self,
        metrics: ServiceMetrics,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ready: ReadyCheck,
    ):
        self.metrics = metrics
        self.host = host
        self.port = port
        self.ready = ready
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and start serving in a daemon thread; calling it again is a no-op.

        Returns:
            The bound TCP port (the picked one when ``port=0``).

        Raises:
            OSError: the address cannot be bound (port in use, unknown host).
        """
        if self._server is not None:
            return self._server.server_address[1]
        server_cls = _Server
        if ":" in self.host:
            server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        self._server = server_cls((self.host, self.port), _make_handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"cryobus-http-{self.metrics.service}",
            daemon=True,
        )
        self._thread.start()
        return self._server.server_address[1]

    @property
    def bound_port(self) -> int | None:
        """The port being served, or ``None`` when not started."""
        return None if self._server is None else self._server.server_address[1]

    def stop(self) -> None:
        """Stop serving and close the socket; a no-op when not started."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def readiness(self) -> tuple[bool, str]:
        """Ask ``ready()`` now; an exception means not ready, with the exception as the reason."""
        try:
            ok, reason = self.ready()
        except Exception as exc:  # noqa: BLE001 - a broken check must read as "not ready", not crash the probe
            return False, f"readiness check failed: {type(exc).__name__}: {exc}"
        return bool(ok), str(reason)


def _make_handler(owner: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "cryobus"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._respond(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._respond(head=True)

        def _respond(self, *, head: bool) -> None:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            if path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_LATEST, owner.metrics.render()
            elif path == "/healthz":
                status, ctype, body = 200, "text/plain; charset=utf-8", b"ok\n"
            elif path == "/readyz":
                ok, reason = owner.readiness()
                status, ctype, body = (200 if ok else 503), "text/plain; charset=utf-8", f"{reason}\n".encode()
            else:
                status, ctype, body = 404, "text/plain; charset=utf-8", b"not found\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            # Access logs silenced: probes every few seconds would drown the service's own logs.
            pass

        def log_error(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("http: " + format, *args)

    return Handler
