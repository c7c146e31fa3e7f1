"""Two daphne processes sharing a real Redis: sender and recipient in different processes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from redis import asyncio as aioredis

from harness.clients import (
    assert_receives_nothing,
    frame,
    open_client,
    open_registered,
    receive,
    register,
    register_confirmed,
    send_once,
    send_v2,
)
from harness.servers import Daphne, eventually
from tests.test_operations import FAST_REGISTRY


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


async def test_a_frozen_process_purged_from_the_registry_no_longer_counts_as_a_listener(
    daphne_factory: Callable[..., Daphne], redis_url: str, redis_prefix: str
) -> None:
    # A process that stops without a word (a host cut off the network, here one frozen with SIGSTOP) keeps
    # its subscriptions open on Redis's side: once the registry purges it, another process closes them,
    # so that notifications to its ids are kept pending for their next registration, not taken for delivered.
    env = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix, **FAST_REGISTRY}
    alive, frozen = daphne_factory(env), daphne_factory(env)
    recipient = await open_registered(frozen.url, "on-the-frozen-host")
    sender = await open_client(alive.url)
    assert (await send_v2(sender, "on-the-frozen-host", "while it answers"))["outcome"] == "live"
    frozen.process.send_signal(signal.SIGSTOP)
    try:

        async def kept_pending() -> bool:
            return (await send_v2(sender, "on-the-frozen-host", "after"))["outcome"] == "pending"

        # Purged after STALE_AFTER (3 s) without a heartbeat; its subscription closed once it stayed
        # away as long again without writing its rows back.
        await eventually(kept_pending, seconds=30, interval=0.5)
        assert "Closed 1 Redis subscriptions of 1 server processes gone" in alive.log()
        # The pending one waits for the id's next registration, wherever it is (before the frozen
        # process wakes up and hands it to its own registrant).
        again = await open_client(alive.url)
        await register(again, "on-the-frozen-host")
        assert await receive(again) == "after"
    finally:
        frozen.process.send_signal(signal.SIGCONT)
    for ws in (recipient, sender, again):
        await ws.close()


async def test_a_v1_senders_burst_and_its_v2_frame_arrive_in_order_on_the_other_process(
    redis_daphne_pair: tuple[Daphne, Daphne],
) -> None:
    # A v1 sender's frames go to Redis without waiting for its answers; a v2 frame after them waits for its
    # own. The recipient still gets them all once, in the order sent.
    a, b = redis_daphne_pair
    recipient = await open_client(b.url)
    await register_confirmed(recipient, "burst")
    sender = await open_client(a.url)
    for i in range(300):
        await sender.send(frame("burst", f"n{i}"))
    answer = await send_v2(sender, "burst", "n300")
    assert answer["type"] == "sent" and answer["outcome"] == "live"
    assert [await receive(recipient) for _ in range(301)] == [f"n{i}" for i in range(301)]
    await assert_receives_nothing(recipient, 0.3)
    await asyncio.gather(recipient.close(), sender.close())
