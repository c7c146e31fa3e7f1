"""Resume in both layers: what a registration receives after ``since``, and when ``recovered`` is false.

The rule under test (``KeepingLayer.resume``): recovered exactly when every
notification of the id after ``since`` is still kept; then those, in order,
pending ones included, none twice. Otherwise what was sent after the
registration began, with every pending one, and ``recovered`` false.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from harness.servers import eventually
from notifications.layers import Replay, sent_between
from notifications.layers.history import MemoryHistory
from notifications.layers.memory import InMemoryLayer
from notifications.layers.redis import RedisPubSubLayer

EVENT = "notify.message"


def event(text: str) -> dict[str, str]:
    return {"type": EVENT, "text": text, "recipient": "x"}


@pytest.fixture(params=["memory", "redis"])
async def layer(request: pytest.FixtureRequest, settings: Any) -> AsyncIterator[Any]:
    settings.NOTIFICATIONS_HISTORY_SIZE = 5
    settings.NOTIFICATIONS_PENDING = True
    if request.param == "memory":
        yield InMemoryLayer()
        return
    redis_url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    layer = RedisPubSubLayer(hosts=[redis_url], prefix=prefix)
    try:
        yield layer
    finally:
        await layer.flush()


@pytest.fixture
async def in_redis(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[RedisPubSubLayer, aioredis.Redis]]:
    """The Redis layer and a client of its Redis, for the tests that read or change its keys."""
    layer = RedisPubSubLayer(hosts=[redis_url], prefix=redis_prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield layer, client
    finally:
        await layer.flush()
        await client.aclose()


async def send(layer: Any, group: str, *texts: str) -> list[str]:
    """Send to nobody (so each is pending too); their positions."""
    return [(await layer.send_kept(group, event(text))).position for text in texts]


def texts(replay: Replay) -> list[str]:
    return [kept.text for kept in replay.notifications]


async def test_every_notification_after_since_is_replayed_in_order_pending_ones_once(layer: Any) -> None:
    positions = await send(layer, "g", "one", "two", "three")
    replay = await layer.resume("g", positions[0], None)
    assert replay.recovered is True
    assert texts(replay) == ["two", "three"]
    assert [k.position for k in replay.notifications] == positions[1:]
    assert replay.newest == positions[-1]
    # The pending ones were taken with it: a later registration does not get them again.
    assert await layer.take_pending("g") == []


async def test_since_the_newest_recovers_nothing_to_replay(layer: Any) -> None:
    positions = await send(layer, "g", "one", "two")
    replay = await layer.resume("g", positions[-1], None)
    assert (replay.recovered, replay.notifications) == (True, [])


async def test_a_registration_that_began_at_the_start_of_an_empty_history_recovers_from_there(layer: Any) -> None:
    start = await layer.newest("g")
    assert start is not None  # a position that marks the beginning, not null
    await send(layer, "g", "one", "two")
    replay = await layer.resume("g", start, None)
    assert (replay.recovered, texts(replay)) == (True, ["one", "two"])


async def test_past_the_history_size_nothing_is_passed_off_as_whole(layer: Any) -> None:
    first = (await send(layer, "g", "zero"))[0]
    start = await layer.newest("g")
    await send(layer, "g", *(f"n{i}" for i in range(6)))  # size 5: "zero" and n0 are dropped
    replay = await layer.resume("g", first, start)
    assert replay.recovered is False
    # Not recovered: what followed the registration's start that is still kept, and every pending one.
    assert texts(replay) == [f"n{i}" for i in range(1, 6)]


@pytest.mark.parametrize(
    "since",
    [
        "",
        "x:y",
        "no colon",
        "１２:３",  # digits, but not ASCII ones
        "0" * 201,
    ],
)
async def test_what_is_no_position_of_this_epoch_is_not_recovered(layer: Any, since: str) -> None:
    await send(layer, "g", "one")
    replay = await layer.resume("g", since, None)
    assert replay.recovered is False
    assert texts(replay) == ["one"]  # the pending one still reaches the registration


async def test_a_position_of_another_epoch_is_not_recovered(layer: Any) -> None:
    position = (await send(layer, "g", "one"))[0]
    epoch, _, rest = position.partition(":")
    replay = await layer.resume("g", f"{epoch}0:{rest}", None)
    assert replay.recovered is False


async def test_a_position_newer_than_the_newest_kept_is_not_recovered(layer: Any) -> None:
    # As after a Redis that lost its last writes: the client has a position the server never kept.
    position = (await send(layer, "g", "one"))[0]
    epoch, _, rest = position.partition(":")
    newer = f"{epoch}:{int(rest.split('-')[0]) + 10_000}" + ("-0" if "-" in rest else "")
    assert (await layer.resume("g", newer, None)).recovered is False


async def test_a_position_of_another_id_is_not_recovered(layer: Any) -> None:
    await send(layer, "mine", "a")
    other = (await send(layer, "other", "b"))[0]
    await send(layer, "mine", "c")
    replay = await layer.resume("mine", other, None)
    assert replay.recovered is False


async def test_not_recovered_replays_pending_ones_older_than_the_start_in_order(layer: Any) -> None:
    await send(layer, "g", "pending before")
    start = await layer.newest("g")
    await send(layer, "g", "sent while joining")
    replay = await layer.resume("g", None, start)
    assert (replay.recovered, texts(replay)) == (False, ["pending before", "sent while joining"])


async def test_catching_up_leaves_pending_ones_to_their_owner(layer: Any) -> None:
    start = await layer.newest("g")
    await send(layer, "g", "one")
    replay = await layer.resume("g", start, None, take=False)
    assert (replay.recovered, texts(replay)) == (True, ["one"])
    assert [k.text for k in await layer.take_pending("g")] == ["one"]


async def test_an_idle_client_whose_newest_expired_still_recovers_when_nothing_was_sent(settings: Any) -> None:
    settings.NOTIFICATIONS_HISTORY_TTL = 10.0
    now = [0.0]
    layer = InMemoryLayer()
    layer.history = MemoryHistory(clock=lambda: now[0])
    first, second = await send(layer, "g", "one", "two")
    now[0] = 11.0  # both expired
    assert (await layer.resume("g", second, None)).recovered is True  # it had everything
    assert (await layer.resume("g", first, None)).recovered is False  # "two" is gone


async def test_in_redis_an_expired_history_is_a_gap_unless_the_client_had_the_newest(
    in_redis: tuple[RedisPubSubLayer, aioredis.Redis], settings: Any
) -> None:
    settings.NOTIFICATIONS_HISTORY_TTL = 1.0
    layer, client = in_redis
    first, second = await send(layer, "g", "one", "two")
    history = layer._get_layer().kept_keys("g").history

    async def expired() -> bool:
        return not await client.exists(history)

    await eventually(expired, seconds=5)
    assert (await layer.resume("g", first, None)).recovered is False
    assert (await layer.resume("g", second, None)).recovered is True


async def test_in_redis_a_notification_older_than_the_ttl_goes_while_newer_ones_keep_the_history_alive(
    in_redis: tuple[RedisPubSubLayer, aioredis.Redis], settings: Any
) -> None:
    # Each entry expires HISTORY_TTL after it was sent, not when the key does: a send trims the older ones.
    settings.NOTIFICATIONS_HISTORY_TTL = 3.0
    layer, client = in_redis
    history = layer._get_layer().kept_keys("g").history

    async def redis_time_reached(ms: int) -> bool:
        seconds, micros = await client.time()
        return seconds * 1000 + micros // 1000 >= ms

    start = await layer.newest("g")
    (one,) = await send(layer, "g", "one")
    sent_at = int(one.rpartition(":")[2].partition("-")[0])  # the stream id's milliseconds
    await eventually(lambda: redis_time_reached(sent_at + 1500), seconds=5)
    (kept,) = await send(layer, "g", "kept")  # the history key now lives until kept's time + 3 s
    await eventually(lambda: redis_time_reached(sent_at + 3100), seconds=5)
    (three,) = await send(layer, "g", "three")  # "one" is older than 3 s now; "kept" is not
    assert await client.xlen(history) == 2
    assert (await layer.resume("g", start, None, take=False)).recovered is False  # "one" is gone
    replay = await layer.resume("g", one, None, take=False)  # a client that had "one" missed nothing gone
    assert (replay.recovered, texts(replay)) == (True, ["kept", "three"])


async def test_in_redis_an_id_whose_remembered_newest_was_lost_counts_on_from_its_history(
    in_redis: tuple[RedisPubSubLayer, aioredis.Redis],
) -> None:
    # An id's newest position is remembered for META_TTL; with a longer HISTORY_TTL the history can outlive
    # it, and a registration then remembers "0-0". Positions must still count on, never repeat.
    layer, client = in_redis
    meta = layer._get_layer().kept_keys("g").meta
    sent = await send(layer, "g", "one", "two", "three")
    assert (sent_between(sent[0], sent[1]), sent_between(sent[0], sent[2])) == (1, 2)
    await client.delete(meta)  # forgotten: the next send finds nothing remembered
    (fourth,) = await send(layer, "g", "four")
    assert sent_between(sent[-1], fourth) == 1
    await client.delete(meta)
    await layer.newest("g")  # a registration's look remembers the beginning, "0-0"
    assert await client.hget(meta, "last") == b"0-0"
    (fifth,) = await send(layer, "g", "five")
    assert sent_between(fourth, fifth) == 1


async def test_in_redis_pending_ones_sent_within_one_millisecond_keep_their_order_and_the_newest(
    in_redis: tuple[RedisPubSubLayer, aioredis.Redis], settings: Any
) -> None:
    # Stream ids are "<ms>-<n>": several notifications to one id within one millisecond share the ms,
    # and as text "<ms>-10" sorts before "<ms>-9". The pending set must still order them by n, and keep
    # the newest HISTORY_SIZE. Every send here lands on one millisecond: the id's newest is remembered a
    # minute ahead, and a notification's time never goes back before its id's newest.
    settings.NOTIFICATIONS_HISTORY_SIZE = 3
    layer, client = in_redis
    keys = layer._get_layer().kept_keys("g")
    seconds, micros = await client.time()
    ahead = seconds * 1000 + micros // 1000 + 60_000
    await client.hset(keys.meta, "last", f"{ahead}-7")
    positions = await send(layer, "g", *(f"n{n}" for n in range(8, 13)))  # counts 8 to 12: "-8" ... "-12"
    assert {p.rpartition(":")[2].partition("-")[0] for p in positions} == {str(ahead)}
    assert [k.text for k in await layer.take_pending("g", peek=True)] == ["n10", "n11", "n12"]
    replay = await layer.resume("g", None, None)  # a registration with no since takes them, in order
    assert texts(replay)[-3:] == ["n10", "n11", "n12"]


async def test_in_redis_a_pending_set_scored_by_milliseconds_is_scored_again_and_loses_nothing_newer(
    in_redis: tuple[RedisPubSubLayer, aioredis.Redis], settings: Any
) -> None:
    # Pending sets written before scores were counts hold milliseconds: the first notification added
    # scores them again, or the new ones (small scores) would be the first trimmed.
    settings.NOTIFICATIONS_HISTORY_SIZE = 3
    layer, client = in_redis
    keys = layer._get_layer().kept_keys("g")
    old = await send(layer, "g", "old 1", "old 2")
    for position in old:
        stream_id = position.rpartition(":")[2]
        await client.zadd(keys.pending, {stream_id: int(stream_id.partition("-")[0])})  # as written before
    await send(layer, "g", "new 3", "new 4")
    assert [k.text for k in await layer.take_pending("g")] == ["old 2", "new 3", "new 4"]


async def test_positions_tell_how_many_of_the_id_were_sent_between_them_even_past_the_history(layer: Any) -> None:
    start = await layer.newest("g")
    first = await send(layer, "g", "one")
    await send(layer, "other", "not g's")  # another id's notifications do not count
    rest = await send(layer, "g", *(f"n{i}" for i in range(11)))  # more than the 5 kept
    replay = await layer.resume("g", first[0], None, take=False)
    assert replay.recovered is False and replay.newest == rest[-1]
    assert sent_between(first[0], replay.newest) == 11
    assert sent_between(start, replay.newest) == 12
    # So a connection whose last one was ``first`` lost exactly the 6 not kept.
    assert sent_between(first[0], replay.newest) - len(replay.notifications) == 6
    assert sent_between(replay.newest, first[0]) is None  # backwards: unknown, never negative
    assert sent_between(first[0], "another-epoch:1-40") is None
