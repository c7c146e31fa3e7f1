"""Two daphne processes sharing a real Redis: sender and recipient in different processes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from redis import asyncio as aioredis

from harness.clients import assert_receives_nothing, frame, open_client, receive, register_confirmed, send_once
from harness.servers import Daphne, eventually


async def test_a_sender_on_one_process_reaches_a_recipient_on_the_other(
    redis_daphne_pair: tuple[Daphne, Daphne],
) -> None:
    a, b = redis_daphne_pair
    recipient = await open_client(b.url)
    await register_confirmed(recipient, "receiver-uuid")
    await send_once(a.url, "receiver-uuid", "across processes")
    assert await receive(recipient) == "across processes"
    await recipient.close()


async def test_tabs_on_both_processes_all_receive(redis_daphne_pair: tuple[Daphne, Daphne]) -> None:
    a, b = redis_daphne_pair
    tabs = [await open_client(server.url) for server in (a, b, a, b)]
    for tab in tabs:
        await register_confirmed(tab, "everywhere")
    await send_once(b.url, "everywhere", "fan out")
    assert [await receive(tab) for tab in tabs] == ["fan out"] * 4
    await asyncio.gather(*(assert_receives_nothing(tab, 0.3) for tab in tabs))
    for tab in tabs:
        await tab.close()


async def test_a_hundred_recipients_across_processes(redis_daphne_pair: tuple[Daphne, Daphne]) -> None:
    a, b = redis_daphne_pair
    recipients = await asyncio.gather(*(open_client((a, b)[i % 2].url) for i in range(100)))
    await asyncio.gather(*(register_confirmed(ws, f"user-{i}") for i, ws in enumerate(recipients)))
    senders = [await open_client(a.url), await open_client(b.url)]
    for i in range(100):
        await senders[i % 2].send(frame(f"user-{i}", f"for {i}"))
    assert await asyncio.gather(*(receive(ws) for ws in recipients)) == [f"for {i}" for i in range(100)]
    await asyncio.gather(*(ws.close() for ws in (*recipients, *senders)))


async def test_a_closed_connection_no_longer_receives_on_the_other_process(
    redis_daphne_pair: tuple[Daphne, Daphne],
) -> None:
    a, b = redis_daphne_pair
    gone = await open_client(b.url)
    await register_confirmed(gone, "left")
    stays = await open_client(b.url)
    await register_confirmed(stays, "left")
    await gone.close()
    await send_once(a.url, "left", "only for the one that stayed")
    assert await receive(stays) == "only for the one that stayed"
    assert "Traceback" not in b.log()
    await stays.close()


async def test_closed_connections_leave_no_subscription_in_redis(
    redis_daphne_pair: tuple[Daphne, Daphne], redis_url: str, redis_prefix: str
) -> None:
    a, b = redis_daphne_pair
    clients = [await open_client(server.url) for server in (a, b, b)]
    for i, ws in enumerate(clients):
        await register_confirmed(ws, f"subscriber-{i}")
    client = aioredis.Redis.from_url(redis_url)

    async def subscriptions() -> int:
        return len(await client.pubsub_channels(f"{redis_prefix}*"))

    assert await subscriptions() >= 6  # each connection's own channel and its group
    await asyncio.gather(*(ws.close() for ws in clients))
    await eventually(lambda: _is_zero(subscriptions()), seconds=10)
    await client.aclose()


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0
