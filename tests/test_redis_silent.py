"""A Redis connection that goes silent (the network cut, no reset): noticed, made again, and nothing lost.

Between one daphne process and Redis sits a TCP relay that can stop
forwarding without closing anything, as a cut cable or a vanished host
does. The process's blocking pub/sub read would wait forever; its watchdog
pings, drops the silent connection and makes a new one, and its clients
catch up from the history.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from harness.clients import open_client, receive_json, register_v2, send_once
from harness.servers import Daphne, RedisServer, wait_until
from notifications.layers.redis import COMMAND_TIMEOUT, HEALTH_CHECK_INTERVAL


class SilentRelay:
    """Forwards TCP to ``port``; :meth:`cut` makes every open connection silent (nothing closed, nothing sent)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.cut_connections: list[asyncio.Event] = []
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def cut(self) -> None:
        for silent in self.cut_connections:
            silent.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        silent = asyncio.Event()
        self.cut_connections.append(silent)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pump(source, sink, silent))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, silent: asyncio.Event) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if silent.is_set():
                    await asyncio.Event().wait()  # holds the connection open, forwarding nothing, forever
                sink.write(data)
                await sink.drain()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()


@pytest.fixture
async def relay(own_redis: RedisServer) -> AsyncIterator[SilentRelay]:
    relay = SilentRelay(own_redis.port)
    await relay.start()
    yield relay
    await relay.close()


async def test_a_silent_redis_connection_is_made_again_and_its_clients_catch_up(
    daphne_factory: Callable[..., Daphne], own_redis: RedisServer, relay: SilentRelay
) -> None:
    assert relay.server is not None
    relay_port = relay.server.sockets[0].getsockname()[1]
    behind_relay = daphne_factory({"REDIS_URL": f"redis://127.0.0.1:{relay_port}/0", "REDIS_PREFIX": "silent"})
    direct = daphne_factory({"REDIS_URL": own_redis.url, "REDIS_PREFIX": "silent"})

    v2 = await open_client(behind_relay.url)
    v1 = await open_client(behind_relay.url)
    await register_v2(v2, "cut-v2")
    await v1.send('{"recipient_uuid": "cut-v1", "message": "connected"}')
    await send_once(direct.url, "cut-v2", "before")
    await send_once(direct.url, "cut-v1", "before")
    assert (await receive_json(v2))["message"] == "before"
    assert await asyncio.wait_for(v1.recv(), 10) == "before"

    relay.cut()
    for i in range(5):
        await send_once(direct.url, "cut-v2", f"during {i}")
        await send_once(direct.url, "cut-v1", f"during {i}")

    # Noticed within two health-check intervals, and caught up once a new connection answers
    # (a command stuck on the silent connection gives up after COMMAND_TIMEOUT).
    seconds = 2 * HEALTH_CHECK_INTERVAL + COMMAND_TIMEOUT + 15
    caught_up = [await receive_json(v2, seconds) for _ in range(5)]
    assert [frame["message"] for frame in caught_up] == [f"during {i}" for i in range(5)]
    assert all(frame["replayed"] is True for frame in caught_up)
    assert [await asyncio.wait_for(v1.recv(), 10) for _ in range(5)] == [f"during {i}" for i in range(5)]

    await send_once(direct.url, "cut-v2", "after")
    assert (await receive_json(v2))["message"] == "after"
    await wait_until(lambda: "not even a pong" in behind_relay.log(), seconds=5)
    assert "Traceback" not in behind_relay.log()
    await v1.close()
    await v2.close()
