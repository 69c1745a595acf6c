"""Serve the web app with uvicorn from a background thread of the service's process.

The thread has its own event loop, so page requests never compete with the bus consumer's
loop, and uvicorn installs no signal handlers there (it only does so on the main thread): the
service's SIGTERM handling stays in charge. The socket is bound here, before the thread starts,
so "address in use" is an ``OSError`` the caller sees at once.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class WebServer:
    """One uvicorn server in a daemon thread.

    Args:
        app: the ASGI app.
        host: address to bind (``127.0.0.1`` by default; an address containing ``:`` binds IPv6).
        port: TCP port; 0 picks a free one (see :attr:`port` after :meth:`start`).
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8080):
        self.app = app
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        """Bind, start serving, wait until uvicorn is up; returns the URL.

        Raises:
            OSError: the address cannot be bound (port in use, unknown host).
            RuntimeError: uvicorn did not start within ``timeout``.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets; without it a keep-alive
        # response written in two parts waits ~40 ms for the client's delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5,
            backlog=1024,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="cryobus-labelling-web", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"labelling web app did not start on {self.url}")
            time.sleep(0.02)
        log.info("labelling web app listening on %s", self.url)
        return self.url

    def stop(self) -> None:
        """Stop accepting, finish open requests (≤ 5 s), join the thread; a no-op when not started."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)
