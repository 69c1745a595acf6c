"""Running one service's ``ServiceRuntime`` in-process against a real nats-server, for tests.

``run_service(service, settings, scenario)`` starts the runtime, waits until it is ready (its
consumers bound), runs ``await scenario(js, runtime)`` and stops the runtime cleanly whatever
happens; ``publish`` and ``until`` are the two things every scenario does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats

from cryobus.shared.bus.runtime import ServiceRuntime
from cryobus.shared.bus.service import Service
from cryobus.shared.config import Settings
from cryobus.shared.events import Envelope


def test_settings(server, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a service under test: the server, a store and state under ``tmp_path``,
    short ack wait and backoff so retries happen within a test."""
    base: dict[str, Any] = dict(
        nats_url=server.url, store_url=(tmp_path / "store").as_uri(), state_dir=tmp_path / "state",
        ack_wait_s=5.0, max_deliver=3, nak_backoff_s=[0.2],
    )  # fmt: skip
    base.update(overrides)
    return Settings(**base)


test_settings.__test__ = False  # a helper, not a test (pytest collects `test_*` functions)


async def publish(js, data, event_id: str | None = None) -> tuple[Envelope[Any], Any]:
    """Publish ``data`` as a new event (with ``Nats-Msg-Id``); returns (envelope, publish ack)."""
    env = Envelope.wrap(data, source="/tests", id=event_id)
    ack = await js.publish(env.nats_subject, env.to_json(), headers={"Nats-Msg-Id": env.id})
    return env, ack


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> bool:
    """Poll an async predicate every 0.1 s until it is true (True) or ``timeout`` s pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return False


def run_service(service: Service, settings: Settings, scenario, *, stop_timeout: float = 30.0):
    """Run ``service`` in-process, then ``await scenario(js, runtime)``; returns its result."""

    async def main():
        rt = ServiceRuntime(service, settings)
        task = asyncio.create_task(rt.run())
        nc = await nats.connect(settings.nats_url)
        js = nc.jetstream()
        try:
            assert await until(lambda: asyncio.sleep(0, rt.ready()[0])), "the service never became ready"
            return await scenario(js, rt)
        finally:
            rt.request_stop()
            await asyncio.wait_for(task, stop_timeout)
            await nc.close()

    return asyncio.run(main())
