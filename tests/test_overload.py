"""Overload is never silent: what a process could not deliver is counted, and the counts add up to what was sent.

Real daphne processes on a real Redis. The process holding the receivers
stops reading for a while (SIGSTOP), so that Redis drops its subscription
at ``client-output-buffer-limit pubsub``, as it drops any subscriber that
falls too far behind; a sender on another process goes on. Afterwards, for
every id: what its v1 connection received, plus what the server counted as
missed, is exactly what was sent. The counters are read as operators read
them, with ``manage.py notify_stats --json``.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from harness.clients import open_client, receive, register_confirmed, send_v2
from harness.servers import Daphne, RedisServer, eventually, wait_until
from notifications.protocol import group_name
from tests.stats import counters_after

ARRIVAL = 10.0
TEXT = 20_000  # characters per notification: a few rounds fill the small output buffer below
IDS = 3


@pytest.mark.parametrize("history", [3, 1000], ids=["more-lost-than-kept", "all-kept"])
async def test_what_a_process_that_fell_behind_could_not_deliver_is_counted_to_the_notification(
    daphne_factory: Callable[..., Daphne], own_redis: RedisServer, database_url: str, history: int
) -> None:
    control = aioredis.from_url(own_redis.url)
    await control.config_set("client-output-buffer-limit", "pubsub 64kb 32kb 1")
    env: dict[str, str | None] = {
        "REDIS_URL": own_redis.url,
        "REDIS_PREFIX": "over",
        "NOTIFY_HISTORY_SIZE": str(history),
        "NOTIFY_HEARTBEAT_INTERVAL": "1",
    }
    slow, fast = daphne_factory(env), daphne_factory(env)
    ids = [f"over-{i}" for i in range(IDS)]
    received: dict[str, list[str]] = {r: [] for r in ids}
    readers = []
    for recipient in ids:
        ws = await open_client(slow.url, max_size=None)
        await register_confirmed(ws, recipient)

        async def read(ws: Any = ws, recipient: str = recipient) -> None:
            while True:
                received[recipient].append(await receive(ws, 300))

        readers.append(asyncio.create_task(read()))
    sender = await open_client(fast.url)
    sent: dict[str, list[str]] = {r: [] for r in ids}

    async def flood_round(n: int) -> None:
        for recipient in ids:
            text = f"{recipient} #{n} " + "x" * TEXT
            assert (await send_v2(sender, recipient, text))["outcome"] in ("live", "pending")
            sent[recipient].append(text)

    async def subscribed() -> int:
        ((_, count),) = await control.pubsub_numsub(f"over__group__{group_name(ids[0])}")
        return int(count)

    try:
        assert await subscribed() == 1
        await flood_round(0)
        await wait_until(lambda: all(len(received[r]) == 1 for r in ids), seconds=ARRIVAL)
        slow.process.send_signal(signal.SIGSTOP)
        try:
            n = 1
            async with asyncio.timeout(60):
                while await subscribed():  # until Redis drops the stopped process's subscription
                    await flood_round(n)
                    n += 1
            for _ in range(10):  # and more while it is gone: more than a small history keeps
                await flood_round(n)
                n += 1
        finally:
            slow.process.send_signal(signal.SIGCONT)
        for recipient in ids:  # once it is subscribed again, a last one that arrives live
            await eventually(subscribed, seconds=30)
            await send_v2(sender, recipient, f"{recipient} end")
            sent[recipient].append(f"{recipient} end")
        await wait_until(lambda: all(received[r] and received[r][-1] == f"{r} end" for r in ids), seconds=30)
        manage_env = {**env, "DATABASE_URL": database_url, "DJANGO_SECRET_KEY": "test-only-" + "k" * 40}
        counters = await counters_after(manage_env, slow, time.time())
    finally:
        for reader in readers:
            reader.cancel()
        await control.aclose()

    total_sent = sum(len(texts) for texts in sent.values())
    total_received = sum(len(texts) for texts in received.values())
    for recipient in ids:
        assert len(received[recipient]) == len(set(received[recipient])), f"{recipient} received one twice"
        assert set(received[recipient]) <= set(sent[recipient])
    missed = counters.get("missed", 0)
    print(
        f"\nsent {total_sent}, received {total_received}, counted missed {missed}, "
        f"caught up {counters.get('caught_up', 0)}, undeliverable {counters.get('undeliverable', 0)}"
    )
    # Every notification either reached its connection or was counted as missed by it: none vanished.
    assert total_received + missed == total_sent, counters
    assert counters.get("undeliverable", 0) >= missed
    if history >= total_sent:
        assert missed == 0, "everything was kept: every connection should have caught up"
    else:
        assert missed > 0, "more was lost than kept, yet nothing was counted"
    assert "Traceback" not in slow.log() + fast.log()
