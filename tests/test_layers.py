"""The channel layers of notifications/layers.py: bounded, counted, pipelined, quiet on cancel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from harness.servers import RedisServer, free_port, wait_until
from notifications import metrics
from notifications.layers.memory import InMemoryLayer
from notifications.layers.redis import RedisPubSubLayer

EVENT = "notify.message"


def event(text: str, recipient: str = "test-uuid") -> dict[str, str]:
    return {"type": EVENT, "text": text, "recipient": recipient}


# The library's members the Redis layer relies on


def test_the_installed_channels_redis_has_every_private_member_the_redis_layer_uses() -> None:
    import channels_redis.utils
    from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection

    from notifications.layers.redis import LIBRARY_INTERNALS

    layer = RedisPubSubChannelLayer(hosts=["redis://127.0.0.1:1/0"])  # never connects: nothing is sent
    loop_layer = RedisPubSubLoopLayer(hosts=["redis://127.0.0.1:1/0"], channel_layer=layer)
    owners: dict[str, object] = {
        "RedisSingleShardConnection": RedisSingleShardConnection("redis://127.0.0.1:1/0", loop_layer),
        "RedisPubSubLoopLayer": loop_layer,
        "RedisPubSubChannelLayer": layer,
        "channels_redis.utils": channels_redis.utils,
    }
    missing = [
        f"{owner}.{name}"
        for owner, names in LIBRARY_INTERNALS.items()
        for name in names
        if not hasattr(owners[owner], name)
    ]
    assert missing == [], "channels-redis changed: notifications/layers/redis.py must follow"


async def test_redis_py_hands_a_published_message_over_as_the_layer_reads_it(redis_url: str, redis_prefix: str) -> None:
    """The Redis layer reads published messages from ``PubSub.parse_response`` itself (not ``get_message``),
    with its own push handler: a redis-py upgrade that changes what these return fails here."""
    from notifications.layers.redis import _as_received

    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub(push_handler_func=_as_received)
    channel = f"{redis_prefix}shape"
    try:
        await pubsub.subscribe(channel)
        confirmation = await asyncio.wait_for(pubsub.parse_response(block=True), 5)
        assert (await pubsub.handle_message(confirmation))["type"] == "subscribe"
        await client.publish(channel, b"\x00payload")
        reply = await asyncio.wait_for(pubsub.parse_response(block=True), 5)
        assert isinstance(reply, list)
        assert reply == [b"message", channel.encode(), b"\x00payload"]
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_replies_are_taken_from_redis_pys_hiredis_parser_one_by_one_errors_included(
    redis_url: str, redis_prefix: str
) -> None:
    """The Redis layer reads replies from redis-py's hiredis parser itself (``_next_reply``), not through
    ``read_response``: a redis-py upgrade that changes that parser fails here."""
    import hiredis

    from notifications.layers.redis import _fast_reading, _next_reply

    client = aioredis.Redis.from_url(redis_url)
    connection = client.connection_pool.make_connection()
    key = f"{redis_prefix}count"
    try:
        await connection.connect()
        assert _fast_reading(connection)
        commands = [(b"INCR", key), (b"EVALSHA", b"0" * 40, b"0"), (b"GET", key)]  # three replies in one read
        await connection.send_packed_command(b"".join(hiredis.pack_command(c) for c in commands))
        assert await asyncio.wait_for(_next_reply(connection), 5) == 1
        assert isinstance(await asyncio.wait_for(_next_reply(connection), 5), redis.exceptions.NoScriptError)
        assert await asyncio.wait_for(_next_reply(connection), 5) == b"1"
    finally:
        await connection.disconnect()
        await client.delete(key)
        await client.aclose()
    assert not _fast_reading(connection)  # disconnected: redis-py connects it again


@pytest.fixture
async def shard(redis_url: str, redis_prefix: str) -> AsyncIterator[Any]:
    """The one shard of a Redis layer on the suite's Redis; the layer is flushed afterwards."""
    layer = RedisPubSubLayer(hosts=[redis_url], prefix=redis_prefix)
    try:
        yield layer._get_layer()._shards[0]
    finally:
        await layer.flush()


async def test_a_slow_reply_fails_its_commands_but_does_not_take_redis_for_down(
    shard: Any, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import notifications.layers.redis as redis_layer

    monkeypatch.setattr(redis_layer, "COMMAND_TIMEOUT", 0.2)
    # BLPOP on an empty list answers after its own timeout (1 s): a slow reply, Redis itself is fine.
    with pytest.raises(TimeoutError):
        await shard._queue((b"BLPOP", f"{redis_prefix}empty", 1))
    assert shard.down is None
    await asyncio.wait_for(shard.ping(), 5)  # on a new connection: the old one still waits for the BLPOP


async def test_one_publisher_task_sends_batch_after_batch_and_ends_after_a_quiet_tick(
    shard: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import notifications.layers.redis as redis_layer

    monkeypatch.setattr(redis_layer, "WATCHDOG_TICK", 0.05)
    assert await shard._queue((b"PING",)) == b"PONG"
    publisher = shard._publisher
    assert publisher is not None and not publisher.done()  # lingering for the next command
    for n in range(3):  # one batch each, all sent by the same task
        assert await shard._queue((b"ECHO", str(n))) == str(n).encode()
        assert shard._publisher is publisher
    await asyncio.wait_for(publisher, 5)  # ends by itself once idle for a tick, without an error
    assert await shard._queue((b"PING",)) == b"PONG"  # a new one for the next command
    assert shard._publisher is not publisher


async def test_a_command_queued_as_the_watchdog_ends_the_publisher_is_still_sent(shard: Any) -> None:
    assert await shard._queue((b"PING",)) == b"PONG"
    assert shard._publisher is not None and shard._more is not None
    shard._watch_publisher()  # a tick that saw the batch
    shard._watch_publisher()  # and a quiet one: the publisher is told to end...
    late = shard._queue((b"ECHO", "late"))  # ...and a command comes before it has run again
    assert await asyncio.wait_for(late, 5) == b"late"


# In-memory layer


async def test_in_memory_group_send_reaches_every_member_in_order() -> None:
    layer = InMemoryLayer()
    a, b = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("g", a)
    await layer.group_add("g", b)
    for i in range(3):
        await layer.group_send("g", event(f"m{i}"))
    for channel in (a, b):
        assert [(await layer.receive(channel))["text"] for _ in range(3)] == ["m0", "m1", "m2"]


async def test_in_memory_members_get_their_own_copy() -> None:
    layer = InMemoryLayer()
    a, b = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("g", a)
    await layer.group_add("g", b)
    await layer.group_send("g", event("shared"))
    (await layer.receive(a))["text"] = "changed by one handler"
    assert (await layer.receive(b))["text"] == "shared"


async def test_in_memory_full_channel_is_counted_and_logged_with_the_recipient(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layer = InMemoryLayer(capacity=2)
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    before = metrics.counters[metrics.UNDELIVERABLE]
    with caplog.at_level(logging.WARNING, logger="notifications"):
        for i in range(5):
            await layer.group_send("g", event(f"m{i}", recipient="slow-reader"))
    assert metrics.counters[metrics.UNDELIVERABLE] == before + 3
    assert sum("Undeliverable notification for 'slow-reader'" in r.getMessage() for r in caplog.records) == 3
    assert [(await layer.receive(channel))["text"] for _ in range(2)] == ["m0", "m1"]


async def test_in_memory_memberships_do_not_expire() -> None:
    layer = InMemoryLayer()
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    layer.groups["g"][channel] = 0  # joined at the epoch: long past any expiry
    await layer.group_send("g", event("still here"))
    assert (await layer.receive(channel))["text"] == "still here"


# Redis pub/sub layer (real Redis)


@pytest.fixture
async def pubsub(redis_url: str, redis_prefix: str):
    layer = RedisPubSubLayer(hosts=[redis_url], prefix=redis_prefix, capacity=50)
    yield layer
    await layer.flush()


async def channels_in_redis(redis_url: str, prefix: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return len(await client.pubsub_channels(f"{prefix}*"))
    finally:
        await client.aclose()


async def test_pubsub_many_concurrent_sends_arrive_once_each_and_in_order(
    pubsub: RedisPubSubLayer, redis_url: str, redis_prefix: str
) -> None:
    channel = await pubsub.new_channel()
    await pubsub.group_add("g", channel)
    other = RedisPubSubLayer(hosts=[redis_url], prefix=redis_prefix)  # another process, as far as Redis sees
    try:
        await asyncio.gather(*(other.group_send("g", event(f"m{i}")) for i in range(40)))
        received = [(await asyncio.wait_for(pubsub.receive(channel), 10))["text"] for _ in range(40)]
    finally:
        await other.flush()
    assert received == [f"m{i}" for i in range(40)]


async def test_pubsub_a_consumers_loop_inbox_takes_and_wakes_as_the_layer_does(pubsub: RedisPubSubLayer) -> None:
    inbox = pubsub.loop_inbox()
    assert inbox is pubsub.loop_inbox() is inbox.loop_inbox()  # one per event loop, asked once by a consumer
    channel = await pubsub.new_channel()
    await pubsub.group_add("g", channel)
    assert inbox.take(channel) is None
    await pubsub.group_send("g", event("first"))
    await pubsub.group_send("g", event("second"))
    assert [await next_text(inbox, channel), await next_text(pubsub, channel)] == ["first", "second"]


async def next_text(inbox: Any, channel: str) -> str:
    """The text of the channel's next message, taken from ``inbox`` as a consumer does: take, else wait for the bell."""
    while (message := inbox.take(channel)) is None:
        bell: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        inbox.wake_on_message(channel, bell)
        await asyncio.wait_for(bell, 10)
    return str(message["text"])


async def test_in_memory_a_consumers_loop_inbox_is_the_layer() -> None:
    layer = InMemoryLayer()
    assert layer.loop_inbox() is layer


async def test_pubsub_full_channel_is_counted_and_logged_with_the_recipient(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    layer = RedisPubSubLayer(hosts=[redis_url], prefix=redis_prefix, capacity=3)
    try:
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        before = metrics.counters[metrics.UNDELIVERABLE]
        with caplog.at_level(logging.WARNING, logger="notifications"):
            for i in range(8):
                await layer.group_send("g", event(f"m{i}", recipient="slow-reader"))
            await wait_until(lambda: metrics.counters[metrics.UNDELIVERABLE] == before + 5, seconds=10)
        assert any("Undeliverable notification for 'slow-reader'" in r.getMessage() for r in caplog.records)
        assert [(await layer.receive(channel))["text"] for _ in range(3)] == ["m0", "m1", "m2"]
    finally:
        await layer.flush()


async def test_pubsub_cancelled_receivers_unsubscribe_quietly(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    layer = RedisPubSubLayer(hosts=[redis_url], prefix=redis_prefix)
    try:
        channels = [await layer.new_channel() for _ in range(300)]
        for i, channel in enumerate(channels):
            await layer.group_add(f"g{i % 10}", channel)
        receivers = [asyncio.ensure_future(layer.receive(channel)) for channel in channels]
        await asyncio.sleep(0)  # let every receiver start waiting
        with caplog.at_level(logging.DEBUG):
            for i, (receiver, channel) in enumerate(zip(receivers, channels, strict=True)):
                await layer.group_discard(f"g{i % 10}", channel)
                receiver.cancel()
            await asyncio.gather(*receivers, return_exceptions=True)
            await wait_until(lambda: not layer._get_layer()._cleanups, seconds=10)
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert await channels_in_redis(redis_url, redis_prefix) == 0
    finally:
        await layer.flush()


async def test_pubsub_publish_to_a_redis_that_is_down_raises() -> None:
    layer = RedisPubSubLayer(hosts=[f"redis://127.0.0.1:{free_port()}/0"])
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await layer.group_send("g", event("nowhere"))
    finally:
        await layer.flush()


async def test_what_is_queued_behind_a_script_redis_had_lost_still_goes_out_after_it(own_redis: RedisServer) -> None:
    # Sends queued while the batch before them waits for Redis's answer go out after it. Here every send of
    # that first batch is refused (NOSCRIPT: Redis restarted, or its scripts were flushed) and must be sent
    # again, as EVAL, ahead of what was queued meanwhile, or the id receives them out of order.
    layer = RedisPubSubLayer(hosts=[own_redis.url], prefix="order")
    admin = aioredis.Redis.from_url(own_redis.url)
    try:
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        assert (await layer.send_kept("g", event("0"))).live  # connected, and the script loaded
        await admin.script_flush()
        await admin.execute_command("CLIENT", "PAUSE", 500, "ALL")  # the first batch waits in Redis
        shard = layer._get_layer()._shards[0]
        first = [layer.send_kept_soon("g", event(str(i))) for i in range(1, 11)]
        await wait_until(lambda: not shard._outbox, seconds=0.4, interval=0.01)  # sent, not answered
        later = [asyncio.ensure_future(layer.group_send("g", event(str(i)))) for i in range(11, 16)]
        kept = await asyncio.wait_for(asyncio.gather(*first), 10)
        await asyncio.wait_for(asyncio.gather(*later), 10)
        assert [k.live for k in kept] == [True] * 10
        assert len({k.position for k in kept}) == 10
        received = [(await asyncio.wait_for(layer.receive(channel), 5))["text"] for _ in range(16)]
        assert received == [str(i) for i in range(16)]
    finally:
        await layer.flush()
        await admin.aclose()


async def test_while_redis_is_full_notifications_go_out_live_only_in_order(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    layer = RedisPubSubLayer(hosts=[own_redis.url], prefix="full")
    admin = aioredis.Redis.from_url(own_redis.url)
    try:
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        assert (await layer.send_kept("g", event("kept"))).position is not None
        await admin.config_set("maxmemory", 1)  # full: Redis refuses every write (noeviction)
        with caplog.at_level(logging.WARNING, logger="notifications"):
            kept = await asyncio.wait_for(
                asyncio.gather(*(layer.send_kept_soon("g", event(f"live {i}")) for i in range(5))), 10
            )
            nobody = await asyncio.wait_for(layer.send_kept("nobody", event("to nobody")), 10)
        assert [(k.live, k.pending, k.position) for k in kept] == [(True, False, None)] * 5
        assert (nobody.live, nobody.pending) == (False, False)  # neither delivered nor kept: the caller is told
        refusals = [r.getMessage() for r in caplog.records if "Redis refuses to keep notifications" in r.getMessage()]
        assert refusals and "used memory > 'maxmemory'" in refusals[0]
        received = [(await asyncio.wait_for(layer.receive(channel), 5))["text"] for _ in range(6)]
        assert received == ["kept"] + [f"live {i}" for i in range(5)]
    finally:
        await admin.config_set("maxmemory", 0)
        await layer.flush()
        await admin.aclose()


async def test_a_setting_changed_between_two_notifications_to_one_id_holds_for_the_next(
    redis_url: str, redis_prefix: str, settings: pytest.FixtureRequest
) -> None:
    # The layer makes each id's SEND_KEPT keys and arguments once and reuses them: a change of the
    # settings they come from must still reach the id's next notification.
    layer = RedisPubSubLayer(hosts=[redis_url], prefix=redis_prefix)
    admin = aioredis.Redis.from_url(redis_url)
    history = layer._get_layer().kept_keys("g").history
    try:
        assert (await layer.send_kept("g", event("one"))).pending  # nobody registered: pending (the default)
        settings.NOTIFICATIONS_PENDING = False  # type: ignore[attr-defined]
        second = await layer.send_kept("g", event("two"))
        assert (second.pending, second.position is not None) == (False, True)  # kept in the history only
        assert await admin.xlen(history) == 2
        settings.NOTIFICATIONS_HISTORY_SIZE = 1  # type: ignore[attr-defined]
        await layer.send_kept("g", event("three"))
        assert await admin.xlen(history) == 1  # trimmed to the new size
    finally:
        await layer.flush()
        await admin.aclose()


async def test_the_layer_remembers_the_keys_of_a_bounded_number_of_ids(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from notifications.layers import redis as redis_layer

    monkeypatch.setattr(redis_layer, "KEPT_HEADS_CACHED", 3)
    layer = RedisPubSubLayer(hosts=[redis_url], prefix=redis_prefix)
    try:
        for i in range(10):
            await layer.send_kept(f"g{i}", event(str(i)))
            assert len(layer._get_layer()._kept_heads) <= 3
        # Forgotten and made again, each id's notifications still go to its own history and pending.
        assert [k.text for k in await layer.take_pending("g0")] == ["0"]
        await layer.send_kept("g0", event("again"))
        assert [k.text for k in await layer.take_pending("g0")] == ["again"]
        assert [k.text for k in await layer.take_pending("g9")] == ["9"]
    finally:
        await layer.flush()


# Kept notifications in the in-memory layer


async def test_in_memory_a_notification_to_members_goes_live_with_its_position() -> None:
    layer = InMemoryLayer()
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    kept = await layer.send_kept("g", event("hello"))
    assert (kept.live, kept.pending, kept.outcome) == (True, False, "live")
    received = await layer.receive(channel)
    assert received["text"] == "hello" and received["position"] == kept.position
    assert await layer.take_pending("g") == []


async def test_in_memory_a_notification_to_nobody_is_pending_for_the_first_taker_only() -> None:
    layer = InMemoryLayer()
    first, second = await layer.send_kept("g", event("one")), await layer.send_kept("g", event("two"))
    assert (first.outcome, second.outcome) == ("pending", "pending")
    assert [k.text for k in await layer.take_pending("g", peek=True)] == ["one", "two"]  # a look takes nothing
    assert [(k.position, k.text) for k in await layer.take_pending("g")] == [
        (first.position, "one"),
        (second.position, "two"),
    ]
    assert await layer.take_pending("g") == []


@pytest.mark.parametrize(
    ("setting", "value", "position_kept"),
    [("NOTIFICATIONS_PENDING", False, True), ("NOTIFICATIONS_HISTORY_SIZE", 0, False)],
)
async def test_in_memory_with_pending_or_history_off_a_notification_to_nobody_is_dropped(
    settings: pytest.FixtureRequest, setting: str, value: object, position_kept: bool
) -> None:
    setattr(settings, setting, value)
    layer = InMemoryLayer()
    kept = await layer.send_kept("g", event("lost"))
    assert kept.outcome == "dropped"
    assert (kept.position is not None) is position_kept
    assert await layer.take_pending("g") == []
