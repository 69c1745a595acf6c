"""The initial connect: it waits for a server that comes up late, and gives up at
``connect_timeout_s`` when none ever answers (nats-py alone would retry forever)."""

from __future__ import annotations

import asyncio

import pytest

from cryobus.shared.bus.connection import NatsRefusedError, connect_with_retry
from cryobus.shared.bus.server import EmbeddedNatsServer, free_port
from cryobus.shared.config import Settings


def test_a_server_that_starts_late_is_connected(tmp_path):
    server = EmbeddedNatsServer(tmp_path / "nats")

    async def main() -> bool:
        connecting = asyncio.create_task(connect_with_retry(Settings(nats_url=server.url, connect_timeout_s=60), "late"))
        await asyncio.sleep(1.0)  # a few refused attempts first
        assert not connecting.done()
        await asyncio.to_thread(server.start)
        nc = await connecting
        try:
            return nc.is_connected
        finally:
            await nc.close()

    try:
        assert asyncio.run(main())
    finally:
        server.stop()


def test_nobody_listening_gives_up_with_the_reason_after_the_timeout():
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match=r"could not connect to NATS at .* within 2 s .*Connect call failed") as info:
        asyncio.run(connect_with_retry(Settings(nats_url=url, connect_timeout_s=2), "nobody"))
    assert not isinstance(info.value, NatsRefusedError)  # unreachable is not a refusal
