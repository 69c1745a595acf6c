"""Serve the labelling web app alone, without the bus: ``python -m cryobus.services.labelling.web``.

For trying the app on an existing label store and for the load bench; grades are saved and kept
in the outbox, and announced once the labelling service runs against the same database.

    python -m cryobus.services.labelling.web --db sqlite:///labels.sqlite --port 8080 --token secret
"""

from __future__ import annotations

import argparse
import signal
import threading

from cryobus.services.labelling.store import LabelStore
from cryobus.services.labelling.web.app import create_app
from cryobus.services.labelling.web.auth import AuthConfig
from cryobus.services.labelling.web.server import WebServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cryobus.services.labelling.web", description=__doc__)
    p.add_argument("--db", required=True, help="label store URL (sqlite:///file or postgresql://...)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="0: a free port")
    p.add_argument("--token", required=True, help="the shared access token of the sign-in form")
    p.add_argument("--store", help="artifact store URL for exports (default: exports disabled)")
    args = p.parse_args(argv)

    artifacts = None
    if args.store:
        from cryobus.shared.store import open_store

        artifacts = open_store(args.store)
    store = LabelStore(args.db)
    server = WebServer(create_app(store, auth=AuthConfig(access_token=args.token), artifacts=artifacts), args.host, args.port)
    print(server.start(), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
