"""A service's consumers share its ``max_in_flight`` slots without starving each other.

Every service has an events consumer and a commands consumer. Only the first may hold slots
while it waits on the server; the commands consumer waits for a message first and for a slot
second. So at ``max_in_flight=1`` both have a pull request open on the server at the same time
(before, they took turns: each event waited out the other consumer's idle one-second poll), a
command is handled while events flow, and one message at most runs at a time.
"""

from __future__ import annotations

import threading
import time

from cryobus.shared.bus.service import Service
from cryobus.shared.bus.topology import COMMANDS_STREAM, EVENTS_STREAM
from cryobus.shared.events import Envelope, ExposureDiscovered, RenderRequested
from tests.runtime_harness import publish, run_service, test_settings, until


def test_both_consumers_wait_on_the_server_at_once_and_one_slot_is_never_exceeded(nats_server, tmp_path):
    svc = Service(name="slots")
    active, most, handled = 0, 0, []
    lock = threading.Lock()

    def work(name: str, seconds: float) -> None:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(seconds)
        with lock:
            active -= 1
            handled.append(name)

    @svc.handler(ExposureDiscovered)
    def on_event(event: Envelope[ExposureDiscovered], ctx) -> None:
        work(event.data.micrograph_name, 0.5)

    @svc.handler(RenderRequested)
    def on_command(event: Envelope[RenderRequested], ctx) -> None:
        work("command", 0.1)

    async def scenario(js, rt):
        async def both_waiting() -> bool:
            events = await js.consumer_info(EVENTS_STREAM, "slots")
            commands = await js.consumer_info(COMMANDS_STREAM, "slots-commands")
            return events.num_waiting >= 1 and commands.num_waiting >= 1

        assert await until(both_waiting, 20), "the two consumers never had a pull request open together"
        for i in range(3):
            await publish(js, ExposureDiscovered(dataset="d", path=f"/data/d/m{i}.mrc", micrograph_name=f"m{i}",
                                                 file_format="mrc", size_bytes=1, mtime_ns=i))  # fmt: skip
        await publish(js, RenderRequested(dataset="d"))

        async def all_handled() -> bool:
            return len(handled) == 4

        assert await until(all_handled, 30), handled

    run_service(svc, test_settings(nats_server, tmp_path, max_in_flight=1), scenario)
    assert sorted(handled) == ["command", "m0", "m1", "m2"]
    assert most == 1
