"""The bounds of kept notifications: per id, in time, in all, in memory and in Redis.

A history that grows without bound is a memory leak with a delay: every
notification sent to an id nobody registers stays somewhere. These tests
hold each bound to its word, and measure what 100,000 ids cost in Redis.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from notifications.layers import META_TTL, id_sequence, position_order
from notifications.layers.history import MemoryHistory
from notifications.layers.memory import InMemoryLayer
from notifications.layers.redis import RedisPubSubLayer
from notifications.protocol import group_name

EVENT = "notify.message"
BIG = 1_000_000  # a bound that does not bind


class Clock:
    """A fake monotonic clock: time passes only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def keep(history: MemoryHistory, group: str, text: str, *, size: int = BIG, ttl: float = 600, cap: int = BIG) -> str:
    """Keep ``text`` as the layer does when nobody received it: kept, then pending; its position."""
    entry = history.add(group, text, size=size, ttl=ttl, max_entries=cap)
    history.make_pending(entry)
    return entry.position


def texts(history: MemoryHistory, group: str) -> list[str]:
    return [kept.text for kept in history.take_pending(group)]


# MemoryHistory, the in-memory layer's store


def test_each_id_keeps_its_newest_size_notifications_and_the_older_pending_ones_are_not_delivered() -> None:
    history = MemoryHistory()
    for i in range(10):
        keep(history, "a", f"a{i}", size=3)
    keep(history, "b", "b0", size=3)
    assert len(history) == 4 and history.ids == 2
    assert texts(history, "a") == ["a7", "a8", "a9"]
    assert texts(history, "b") == ["b0"]


def test_each_notification_expires_ttl_seconds_after_it_was_sent() -> None:
    clock = Clock()
    history = MemoryHistory(clock=clock)
    keep(history, "a", "at 0", ttl=10)
    clock.now = 5
    keep(history, "a", "at 5", ttl=10)
    clock.now = 9.999
    keep(history, "b", "b at 9.999", ttl=10)
    assert len(history) == 3
    clock.now = 10  # "at 0" expires now, "at 5" at 15
    assert texts(history, "a") == ["at 5"]
    clock.now = 20  # everything expired; the next add drops what expired
    assert texts(history, "b") == []
    keep(history, "c", "c at 20", ttl=10)
    assert len(history) == 1 and history.ids == 1


def test_an_expired_pending_notification_is_not_delivered_even_before_anything_else_is_added() -> None:
    clock = Clock()
    history = MemoryHistory(clock=clock)
    keep(history, "a", "old", ttl=1)
    clock.now = 1.5
    assert texts(history, "a") == []


def test_the_global_bound_drops_the_oldest_of_all_ids_first() -> None:
    history = MemoryHistory()
    sent = ["a", "b", "a", "c", "b", "d"]
    for i, group in enumerate(sent):
        keep(history, group, f"{group}{i}", cap=4)
    # a0 and b1 went first, the oldest two of all.
    assert len(history) == 4 and history.ids == 4
    assert texts(history, "a") == ["a2"]
    assert texts(history, "b") == ["b4"]
    assert texts(history, "c") == ["c3"]
    assert texts(history, "d") == ["d5"]


def test_an_id_whose_every_notification_the_global_bound_dropped_is_forgotten() -> None:
    history = MemoryHistory()
    keep(history, "a", "a0", cap=2)
    keep(history, "b", "b0", cap=2)
    keep(history, "c", "c0", cap=2)
    assert history.ids == 2
    assert texts(history, "a") == []


def test_pending_ones_are_taken_once_and_in_the_order_sent() -> None:
    history = MemoryHistory()
    for i in range(5):
        keep(history, "a", f"a{i}")
        keep(history, "b", f"b{i}")
    taken = history.take_pending("a")
    assert [kept.text for kept in taken] == [f"a{i}" for i in range(5)]
    assert history.take_pending("a") == []
    assert texts(history, "b") == [f"b{i}" for i in range(5)]
    # Taken is not forgotten: they stay in the history until a bound drops them.
    assert len(history) == 10


def test_a_notification_that_was_received_live_is_kept_but_never_pending() -> None:
    history = MemoryHistory()
    history.add("a", "live", size=BIG, ttl=600, max_entries=BIG)
    assert history.take_pending("a") == [] and len(history) == 1


def test_positions_increase_per_id_and_carry_the_epoch() -> None:
    history = MemoryHistory()
    positions: dict[str, list[str]] = {"a": [], "b": []}
    for i in range(20):
        group = "ab"[i % 3 == 0]
        positions[group].append(keep(history, group, str(i)))
    for group, kept in positions.items():
        assert all(p.startswith(f"{history.epoch}:") for p in kept), group
        orders = [position_order(p) for p in kept]
        assert orders == sorted(orders) and len(set(orders)) == len(orders), group
        # Each carries how many notifications its id had had: 1, 2, 3...
        assert [id_sequence(p) for p in kept] == list(range(1, len(kept) + 1)), group
        assert [k.position for k in history.take_pending(group)] == kept
    assert MemoryHistory().epoch != history.epoch  # a new process, new positions


@pytest.mark.parametrize(("cap", "kept"), [(100_000, 100_000), (10_000, 10_000)])
def test_100000_ids_with_one_notification_each_keep_at_most_max_entries(cap: int, kept: int) -> None:
    history = MemoryHistory()
    started = time.perf_counter()
    for i in range(100_000):
        keep(history, f"id-{i}", f"n{i}", size=100, cap=cap)
    seconds = time.perf_counter() - started
    print(f"\n100,000 ids, max_entries={cap:,}: {len(history):,} kept, {history.ids:,} ids, {seconds:.2f} s")
    assert len(history) == kept and history.ids == kept
    assert texts(history, f"id-{100_000 - kept}") == [f"n{100_000 - kept}"]  # the oldest still kept
    assert texts(history, "id-99999") == ["n99999"]
    if kept < 100_000:
        assert texts(history, f"id-{100_000 - kept - 1}") == []  # the newest dropped
        assert texts(history, "id-0") == []


ODD_IDS = [
    "é" * 255,
    "😀" * 255,
    "a" * 255,
    "\u200b",
    " ",
    "Straße",
    "Strasse",
    "e\u0301",  # é decomposed: another id than "\u00e9"
    "\u00e9",
    "../../etc/passwd",
    '{"recipient_uuid": "x"}',
    "\U0010ffff" * 255,
]


def test_the_text_of_a_dropped_notification_is_freed_at_once() -> None:
    import tracemalloc

    history = MemoryHistory()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep(history, "other", "sent first, kept for long: the oldest of all")
        for n in range(400):  # 40 MB sent to one id that keeps 5
            keep(history, "g", f"{n:04d}" + "x" * 100_000, size=5)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 2_000_000, f"{held} bytes held for 5 notifications of 100 kB"


def test_odd_ids_as_group_names_keep_apart() -> None:
    history = MemoryHistory()
    groups = [group_name(recipient) for recipient in ODD_IDS]
    assert len(set(groups)) == len(ODD_IDS)
    for recipient, group in zip(ODD_IDS, groups, strict=True):
        keep(history, group, f"for {recipient}")
        keep(history, group, f"again for {recipient}", size=2)
    for recipient, group in zip(ODD_IDS, groups, strict=True):
        assert texts(history, group) == [f"for {recipient}", f"again for {recipient}"]


async def test_odd_ids_through_the_in_memory_layer_are_valid_group_names_and_pending() -> None:
    layer = InMemoryLayer()
    for recipient in ODD_IDS:
        kept = await layer.send_kept(group_name(recipient), {"type": EVENT, "text": recipient, "recipient": recipient})
        assert kept.outcome == "pending" and kept.position is not None
    for recipient in ODD_IDS:
        assert [k.text for k in await layer.take_pending(group_name(recipient))] == [recipient]


# Redis: 100,000 ids, each key bounded in length and in time

IDS = 100_000
CHUNK = 1_000
# Longer than the test takes (about 30 s on a 2-core machine): a key listed and then expired before its
# TTL is read would show as 0 or -2, indistinguishable from a bound that failed.
TTL = 300
SIZE = 5


async def _keys(client: aioredis.Redis, prefix: str) -> list[bytes]:
    return [key async for key in client.scan_iter(match=f"{prefix}*", count=10_000)]


async def _delete(client: aioredis.Redis, keys: list[bytes]) -> None:
    for first in range(0, len(keys), 10_000):
        await client.unlink(*keys[first : first + 10_000])


async def test_100000_ids_in_redis_keep_bounded_keys_that_expire(
    redis_url: str, redis_prefix: str, settings: Any
) -> None:
    settings.NOTIFICATIONS_HISTORY_TTL = TTL
    settings.NOTIFICATIONS_HISTORY_SIZE = SIZE
    settings.NOTIFICATIONS_PENDING = True
    layer = RedisPubSubLayer(hosts=[redis_url], prefix=redis_prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        # One send first, so that Redis has loaded the scripts: a burst of first
        # sends is the test below, and this one is about the bounds.
        await layer.send_kept(group_name("bound-first"), {"type": EVENT, "text": "first", "recipient": "x"})
        started = time.perf_counter()
        outcomes: dict[str, int] = {}
        for first in range(0, IDS, CHUNK):
            sent = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        layer.send_kept(group_name(f"bound-{i}"), {"type": EVENT, "text": f"n{i}", "recipient": "x"})
                        for i in range(first, first + CHUNK)
                    )
                ),
                60,
            )
            for kept in sent:
                outcomes[kept.outcome] = outcomes.get(kept.outcome, 0) + 1
        send_seconds = time.perf_counter() - started
        busy = group_name("bound-busy")
        for i in range(20):
            await layer.send_kept(busy, {"type": EVENT, "text": f"busy {i}", "recipient": "x"})
        assert outcomes == {"pending": IDS}

        keys = await _keys(client, redis_prefix)
        epoch = f"{redis_prefix}kept:epoch".encode()
        replid = f"{redis_prefix}kept:epoch:replid".encode()  # the replication history the epoch was made on
        histories = [key for key in keys if key.endswith(b":h")]
        pendings = [key for key in keys if key.endswith(b":p")]
        metas = [key for key in keys if key.endswith(b":m")]
        others = [key for key in keys if not key.endswith((b":h", b":p", b":m"))]
        assert len(histories) == len(pendings) == len(metas) == IDS + 2, (len(histories), len(pendings), len(metas))
        # One epoch per prefix and its replication id: the only keys without a TTL.
        assert sorted(others) == [epoch, replid], others[:5]

        ttls: list[int] = []
        for first in range(0, len(keys), 10_000):
            pipe = client.pipeline(transaction=False)
            for key in keys[first : first + 10_000]:
                pipe.pttl(key)
            ttls += await pipe.execute()
        by_key = dict(zip(keys, ttls, strict=True))
        assert by_key.pop(epoch) == by_key.pop(replid) == -1
        # The history and pending go after the TTL; what a resume needs to know of an id (its newest
        # position, what was dropped: two stream ids) after META_TTL.
        out_of_bounds = [
            (k, t) for k, t in by_key.items() if not 0 < t <= (META_TTL if k.endswith(b":m") else TTL) * 1000
        ]
        assert not out_of_bounds, out_of_bounds[:5]

        assert await client.xlen(f"{redis_prefix}kept:{busy}:h") == SIZE
        assert await client.zcard(f"{redis_prefix}kept:{busy}:p") <= SIZE
        taken = await layer.take_pending(busy)
        assert [k.text for k in taken] == [f"busy {i}" for i in range(20 - SIZE, 20)]

        sample = random.Random(0)
        total = 0
        figures = []
        for kind, group in (("history", histories), ("pending", pendings), ("resume", metas)):
            chosen = sample.sample(group, 50)
            usage = [await client.memory_usage(key) or 0 for key in chosen]
            average = sum(usage) / len(usage)
            total += int(average * len(group))
            figures.append(f"{kind} keys {len(group):,} x {average:.0f} B (sample of 50)")
        info = await client.info("memory")
        elapsed = time.perf_counter() - started
        print(
            f"\nRedis, {IDS:,} ids x 1 notification (HISTORY_SIZE={SIZE}, TTL={TTL} s): "
            f"{len(keys):,} keys, sent in {send_seconds:.1f} s ({IDS / send_seconds:,.0f}/s); "
            f"{'; '.join(figures)}; estimated total {total / 2**20:.1f} MiB; "
            f"Redis used_memory {info['used_memory'] / 2**20:.1f} MiB; test body {elapsed:.1f} s"
        )
    finally:
        await layer.flush()  # first: nothing of the layer's may still be writing
        await _delete(client, await _keys(client, redis_prefix))
        assert await _keys(client, redis_prefix) == []
        await client.aclose()


async def test_a_burst_of_first_sends_on_a_new_layer_all_succeed(
    redis_url: str, redis_prefix: str, settings: Any
) -> None:
    """A process that just started (or whose Redis just restarted) and gets many sends at once.

    Each send runs a script that Redis must load first; the layer pipelines
    its commands on one connection, so however many sends come at once none
    may fail for want of connections (redis-py's pool raises beyond 100).
    """
    settings.NOTIFICATIONS_HISTORY_TTL = TTL
    layer = RedisPubSubLayer(hosts=[redis_url], prefix=redis_prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        sent = await asyncio.wait_for(
            asyncio.gather(
                *(
                    layer.send_kept(group_name(f"burst-{i}"), {"type": EVENT, "text": f"n{i}", "recipient": "x"})
                    for i in range(CHUNK)
                ),
                return_exceptions=True,
            ),
            60,
        )
        failed = [f"{type(r).__name__}: {r}" for r in sent if isinstance(r, BaseException)]
        assert not failed, f"{len(failed)} of {CHUNK} first sends failed, e.g. {failed[0]}"
    finally:
        await layer.flush()
        await _delete(client, await _keys(client, redis_prefix))
        await client.aclose()
