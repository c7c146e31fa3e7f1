"""Client limits: one connection or one address cannot slow anyone else down, and the defaults limit nothing.

Real daphne processes; every client here connects from 127.0.0.1, so the
per-address limits see them as one address. Counters are read as operators
read them (``manage.py notify_stats --json``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from harness.clients import (
    TIMEOUT,
    close_code,
    frame,
    open_client,
    receive,
    receive_json,
    register_confirmed,
    register_v2_frame,
)
from harness.servers import Daphne
from notifications.limits import FrameLimit, TokenBucket
from tests.stats import counters_after

LIMIT = 4008


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# The algorithms, on a clock the test moves.


def test_a_token_bucket_allows_a_burst_as_large_as_its_rate_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(10, clock)
    assert [bucket.take() for _ in range(11)] == [True] * 10 + [False]
    clock.now += 0.5  # half a second: five more
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    clock.now += 60  # a long pause fills it to the burst, no more
    assert sum(bucket.take() for _ in range(20)) == 10


def test_a_connection_is_flooding_only_once_it_stayed_over_the_rate_for_the_flood_seconds() -> None:
    clock = Clock()
    limit = FrameLimit(8, 2.0, clock)
    assert all(limit.allow() for _ in range(8))  # the burst

    def eighth_of_a_second_at_twice_the_rate() -> list[bool]:
        clock.now += 0.125  # one token
        return [limit.allow(), limit.allow()]

    # Over the rate from the first eighth on: half its frames pass, and it is over all along.
    for _ in range(16):
        assert eighth_of_a_second_at_twice_the_rate() == [True, False]
    assert not limit.flooding()  # 1.875 s over
    eighth_of_a_second_at_twice_the_rate()
    assert limit.flooding()  # 2 s over


def test_a_pause_of_a_second_ends_a_flood() -> None:
    clock = Clock()
    limit = FrameLimit(10, 2.0, clock)
    for _ in range(12):
        limit.allow()
    clock.now += 1.5  # quiet
    for _ in range(15):  # over again, briefly: a new flood, not the old one going on
        limit.allow()
    clock.now += 1.0
    for _ in range(15):
        limit.allow()
    assert not limit.flooding()


# Real processes.


async def test_a_flood_is_closed_with_4008_while_a_neighbour_receives_every_probe_within_a_second(
    daphne_factory: Callable[..., Daphne], database_url: str
) -> None:
    env: dict[str, str | None] = {
        "NOTIFY_MAX_FRAMES_PER_SECOND": "200",
        "NOTIFY_FLOOD_SECONDS": "2",
        "NOTIFY_HEARTBEAT_INTERVAL": "1",
    }
    server = daphne_factory(env)
    neighbour = await open_client(server.url)
    await register_confirmed(neighbour, "neighbour")
    prober = await open_client(server.url)
    flooder = await open_client(server.url)
    sent = 0

    async def flood() -> float:
        nonlocal sent
        with pytest.raises(ConnectionClosed):
            while True:
                await flooder.send(frame("sink", f"flood {sent}"))
                sent += 1
        return time.monotonic()

    async def probe() -> list[float]:
        delays = []
        for n in range(60):  # 6 s: beyond the flood's close
            started = time.monotonic()
            await prober.send(frame("neighbour", f"probe {n}"))
            assert await receive(neighbour, 1.0) == f"probe {n}"  # within a second, every one
            delays.append(time.monotonic() - started)
            await asyncio.sleep(0.1)  # the pace of the probes, not a wait for an event
        return delays

    started = time.monotonic()
    flooding = asyncio.create_task(flood())
    delays = await probe()
    closed_after = await asyncio.wait_for(flooding, TIMEOUT) - started
    assert flooder.close_code == LIMIT
    assert closed_after < 2 + 2  # its 2 s over the rate, and little more
    assert "closed with 4008: over 200 frames a second for 2 s" in server.log()
    print(f"\nflood: {sent} frames, closed; neighbour's probes: max {max(delays) * 1000:.1f} ms")
    manage_env = {"DATABASE_URL": database_url, "DJANGO_SECRET_KEY": "test-only-" + "k" * 40}
    counters = await counters_after(manage_env, server, time.time())
    assert counters["floods_closed"] == 1
    assert counters["frames_limited"] > 0
    # Logged once a minute per connection, however many frames it sent over the limit.
    assert server.log().count("frames a second: its frames over that are not acted on") == 1


async def test_v2_frames_over_the_rate_are_answered_limit_and_the_connection_stays(
    daphne_factory: Callable[..., Daphne],
) -> None:
    server = daphne_factory({"NOTIFY_MAX_FRAMES_PER_SECOND": "1", "NOTIFY_FLOOD_SECONDS": "60"})
    ws = await open_client(server.url)
    for n in range(20):
        await ws.send(json.dumps({"recipient_uuid": "nobody", "message": f"m{n}", "v": 2}))
    await ws.send(register_v2_frame("someone"))
    replies = [await receive_json(ws) for _ in range(21)]
    assert replies[0]["outcome"] in {"pending", "dropped"}  # the burst of one passed
    assert [r["code"] for r in replies[1:20]].count("limit") >= 18  # the rest, bar one refilled meanwhile
    # Over the rate, a registration too is not acted on, and says so.
    assert {k: replies[20][k] for k in ("type", "recipient_uuid", "code")} == {
        "type": "refused",
        "recipient_uuid": "someone",
        "code": "limit",
    }
    await asyncio.sleep(1.2)  # the bucket refills with time: this waits for time itself, not an event
    await ws.send(register_v2_frame("someone"))
    assert (await receive_json(ws))["type"] == "registered"
    await ws.close()


async def test_the_connection_over_the_per_address_limit_is_closed_with_4008_and_the_first_ones_keep_working(
    daphne_factory: Callable[..., Daphne],
) -> None:
    server = daphne_factory({"NOTIFY_MAX_CONNECTIONS_PER_ADDRESS": "5"})
    first = [await open_client(server.url) for _ in range(5)]
    sixth = await connect(server.url, open_timeout=TIMEOUT)  # the handshake succeeds; no greeting follows
    assert await close_code(sixth) == LIMIT
    for n, ws in enumerate(first):
        await register_confirmed(ws, f"first-{n}")
    await first[0].close()
    # Once one of the five left, a new connection is admitted again.
    again = await open_client(server.url)
    await register_confirmed(again, "again")
    assert server.log().count("its address has 5 connections open already") == 1


async def test_a_handshake_storm_from_one_address_is_closed_with_4008_past_its_rate(
    daphne_factory: Callable[..., Daphne],
) -> None:
    server = daphne_factory({"NOTIFY_MAX_HANDSHAKES_PER_SECOND_PER_ADDRESS": "3"})
    storm = [await connect(server.url, open_timeout=TIMEOUT) for _ in range(8)]
    first_frames = []
    for ws in storm:
        try:
            first_frames.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
        except ConnectionClosed:
            first_frames.append(ws.close_code)
    assert 3 <= sum(isinstance(f, str) for f in first_frames) <= 5  # the burst, and what refilled meanwhile
    assert LIMIT in first_frames
    await asyncio.sleep(1.1)  # the rate is per second: this waits for time itself
    later = await open_client(server.url)
    await register_confirmed(later, "later")


async def test_by_default_a_burst_of_5000_frames_over_one_connection_is_relayed_whole(daphne: Daphne) -> None:
    receiver = await open_client(daphne.url, max_size=None)
    await register_confirmed(receiver, "burst")
    sender = await open_client(daphne.url)
    texts = [f"burst {n}" for n in range(5000)]
    received: list[str] = []

    async def read() -> None:
        while len(received) < len(texts):
            received.append(await receive(receiver))

    reading = asyncio.create_task(read())
    for text in texts:
        await sender.send(frame("burst", text))
    try:
        await asyncio.wait_for(reading, 60)
    finally:
        print(len(received), received[-3:])
    assert received == texts
    assert sender.close_code is None
    assert "frames a second" not in daphne.log()
