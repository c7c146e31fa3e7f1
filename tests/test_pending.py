"""No "done" lost to a late page: pending notifications reach the first registrant, old clients included.

Real daphne processes, real Redis, and clients that behave exactly as the
field's do (connect, read the greeting, register, read raw text frames).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection

from harness.clients import (
    assert_receives_nothing,
    frame,
    open_client,
    receive,
    register,
    register_confirmed,
    send_once,
)
from harness.servers import Daphne, RedisServer
from notifications.protocol import group_name
from notifications.sending import asend


async def sent_reply(ws: ClientConnection, recipient: str, message: str) -> dict[str, object]:
    """Send a v2 send frame and read its reply."""
    await ws.send(json.dumps({"recipient_uuid": recipient, "message": message, "v": 2}))
    reply: dict[str, object] = json.loads(await receive(ws))
    return reply


async def test_a_page_that_registers_after_its_task_finished_on_another_process_receives_it_once(
    redis_daphne_pair: tuple[Daphne, Daphne],
) -> None:
    a, b = redis_daphne_pair
    await send_once(b.url, "task-42", "done")  # the back-end, before any page registered
    late = await open_client(a.url)
    await register(late, "task-42")
    assert await receive(late) == "done"
    # Pending once: a second page registering later does not receive it again...
    later = await open_client(b.url)
    await register(later, "task-42")
    await assert_receives_nothing(later)
    await assert_receives_nothing(late)
    # ...and live notifications then reach both, as always.
    await send_once(b.url, "task-42", "next")
    assert await receive(late) == "next"
    assert await receive(later) == "next"


async def test_pending_notifications_arrive_in_the_order_they_were_sent_before_live_ones(
    redis_daphne_pair: tuple[Daphne, Daphne],
) -> None:
    a, b = redis_daphne_pair
    sender = await open_client(b.url)
    for n in range(5):
        await sender.send(frame("ordered", f"pending {n}"))
    assert await sent_reply(sender, "ordered", "pending 5") == {
        "type": "sent",
        "recipient_uuid": "ordered",
        "outcome": "pending",
        "code": None,
    }
    page = await open_client(a.url)
    await register(page, "ordered")
    assert [await receive(page) for _ in range(6)] == [f"pending {n}" for n in range(6)]
    assert (await sent_reply(sender, "ordered", "live one"))["outcome"] == "live"
    assert await receive(page) == "live one"


async def test_a_pending_notification_goes_once_its_time_is_up(
    daphne_factory: Callable[..., Daphne], redis_url: str, redis_prefix: str
) -> None:
    server = daphne_factory({"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix, "NOTIFY_HISTORY_TTL": "1"})
    await send_once(server.url, "too-late", "done")
    pending_key = f"{redis_prefix}kept:{group_name('too-late')}:p"
    client = aioredis.from_url(redis_url)
    try:
        await wait_until_async(lambda: client.exists(pending_key), expected=1, seconds=5)
        # Redis drops the key when the notification's time is up: that is the event awaited here.
        await wait_until_async(lambda: client.exists(pending_key), expected=0, seconds=5)
    finally:
        await client.aclose()
    page = await open_client(server.url)
    await register(page, "too-late")
    await assert_receives_nothing(page)


async def wait_until_async(query: Callable[[], Awaitable[int]], *, expected: int, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while await query() != expected:  # noqa: ASYNC110 (an expiry in Redis: nothing to await)
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("off", "layer"),
    [("NOTIFY_PENDING", "redis"), ("NOTIFY_PENDING", "in-memory"), ("NOTIFY_HISTORY_SIZE", "in-memory")],
)
async def test_with_pending_or_history_off_a_notification_to_nobody_reaches_nobody_as_on_the_old_server(
    daphne_factory: Callable[..., Daphne], redis_url: str, redis_prefix: str, off: str, layer: str
) -> None:
    env = {off: "off" if off == "NOTIFY_PENDING" else "0"}  # history off keeps nothing, so nothing is pending
    if layer == "redis":
        env |= {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
    server = daphne_factory(env)
    sender = await open_client(server.url)
    assert (await sent_reply(sender, "nobody-yet", "lost"))["outcome"] == "dropped"
    page = await open_client(server.url)
    await register(page, "nobody-yet")
    await assert_receives_nothing(page)


async def test_on_the_embedded_default_a_field_sender_before_the_registration_reaches_the_page(
    daphne: Daphne,
) -> None:
    await send_once(daphne.url, "receiver-uuid", "image2video")  # the old client.py, before the page
    page = await open_client(daphne.url)
    await register(page, "receiver-uuid")
    assert await receive(page) == "image2video"
    other = await open_client(daphne.url)
    await register(other, "receiver-uuid")
    await assert_receives_nothing(other)


async def test_a_v2_send_frame_is_told_what_happened_and_a_v1_frame_is_not(daphne: Daphne) -> None:
    sender = await open_client(daphne.url)
    assert (await sent_reply(sender, "v2-target", "first"))["outcome"] == "pending"
    page = await open_client(daphne.url)
    await register(page, "v2-target")
    assert await receive(page) == "first"
    assert (await sent_reply(sender, "v2-target", "second"))["outcome"] == "live"
    assert await receive(page) == "second"
    for not_v2 in ("2", 2.0, True, 3):
        await sender.send(json.dumps({"recipient_uuid": "v2-target", "message": f"v={not_v2!r}", "v": not_v2}))
        assert await receive(page) == f"v={not_v2!r}"
    await sender.send(frame("v2-target", "v1"))
    assert await receive(page) == "v1"
    await assert_receives_nothing(sender)  # none of the frames but the v2 ones got a reply


async def test_sending_through_an_old_v1_only_server_still_works_with_the_outcome_unknown(
    old_server: str, settings: Any
) -> None:
    # During an upgrade, or against the old server itself: no "sent" reply ever comes.
    settings.NOTIFICATIONS_SEND_THROUGH = "server"
    settings.NOTIFICATIONS_SERVER_URL = old_server
    settings.NOTIFICATIONS_REGISTRY_ENABLED = False
    page = await open_client(old_server)
    await register_confirmed(page, "old-page")
    result = await asend("old-page", "from the new notify")
    assert (result.outcome, result.position) == (None, None)
    assert await receive(page) == "from the new notify"


async def test_a_notification_made_pending_again_by_two_processes_is_delivered_once(
    redis_url: str, redis_prefix: str
) -> None:
    from notifications.layers.redis import MAKE_PENDING_AGAIN, RedisPubSubLayer

    layer = RedisPubSubLayer(hosts=[redis_url], prefix=redis_prefix)
    try:
        kept = await layer.send_kept("twice", {"type": "notify.message", "text": "once", "recipient": "x"})
        assert kept.outcome == "pending"
        loop_layer = layer._get_layer()
        keys = loop_layer.kept_keys("twice")
        shard = loop_layer._get_shard(loop_layer._get_group_channel_name("twice"))
        stream_id = kept.position.rpartition(":")[2]
        for _ in range(2):  # two processes whose last registrant left, both received it
            await shard.run_script(
                MAKE_PENDING_AGAIN,
                keys=[loop_layer._get_group_channel_name("twice"), keys.pending],
                args=[stream_id, 60_000, 100],
            )
        assert [k.text for k in await layer.take_pending("twice")] == ["once"]
    finally:
        await layer.flush()


async def test_a_registrant_that_came_while_a_notification_was_made_pending_again_receives_it(
    redis_daphne_pair: tuple[Daphne, Daphne], redis_url: str, redis_prefix: str
) -> None:
    # Process B's last registrant left; the notification B had received is made pending
    # again after a page registered on A (which found nothing pending then): A is told.
    from notifications.layers.redis import MAKE_PENDING_AGAIN, RedisPubSubLayer

    a, _ = redis_daphne_pair
    page = await open_client(a.url)
    await register(page, "reloaded")
    await assert_receives_nothing(page, within=0.3)
    layer = RedisPubSubLayer(hosts=[redis_url], prefix=redis_prefix)
    try:
        loop_layer = layer._get_layer()
        group = group_name("reloaded")
        channel = loop_layer._get_group_channel_name(group)
        keys = loop_layer.kept_keys(group)
        shard = loop_layer._get_shard(channel)
        # As B does it: the notification is in the history; B's script makes it pending again.
        payload = layer.serialize({"type": "notify.message", "text": "done", "recipient": "reloaded"})
        writer = aioredis.from_url(redis_url)
        try:
            stream_id = await writer.xadd(keys.history, {"p": payload})
        finally:
            await writer.aclose()
        await shard.run_script(MAKE_PENDING_AGAIN, keys=[channel, keys.pending], args=[stream_id.decode(), 60_000, 100])
    finally:
        await layer.flush()
    assert await receive(page) == "done"


async def test_a_notification_sent_as_redis_comes_back_reaches_a_client_registered_before_the_outage(
    daphne_factory: Callable[..., Daphne], own_redis: RedisServer
) -> None:
    server = daphne_factory({"REDIS_URL": own_redis.url, "REDIS_PREFIX": "gap"})
    page = await open_client(server.url)
    await register_confirmed(page, "through-the-outage")
    sender = await open_client(server.url)
    own_redis.stop()
    own_redis.start_again()
    # At once, before the server has subscribed again: nobody receives it live, so it is
    # pending, and the server hands it over as soon as its subscription is back.
    async with asyncio.timeout(15):
        while True:
            reply = await sent_reply(sender, "through-the-outage", "after the outage")
            if reply["outcome"] != "refused":  # Redis not reachable yet for this connection
                break
    assert await receive(page, 15) == "after the outage"


async def test_a_notification_that_reached_a_leaving_connections_queue_is_kept_for_the_next_one(
    redis_url: str, redis_prefix: str
) -> None:
    from notifications.layers.redis import RedisPubSubLayer

    layer = RedisPubSubLayer(hosts=[redis_url], prefix=redis_prefix)
    try:
        channel = await layer.new_channel()
        await layer.group_add("leaving", channel)
        kept = await layer.send_kept("leaving", {"type": "notify.message", "text": "done", "recipient": "r"})
        assert kept.outcome == "live"
        await asyncio.wait_for(_queued(layer, channel), 5)
        await layer.group_discard("leaving", channel)  # the page reloads: it leaves before reading it
        (left,) = layer.drain(channel)
        assert (left["text"], left["position"]) == ("done", kept.position)
        assert await layer.keep_pending("leaving", left) is True
        assert [(k.position, k.text) for k in await layer.take_pending("leaving")] == [(kept.position, "done")]
    finally:
        await layer.flush()


async def _queued(layer: Any, channel: str) -> None:
    queue = layer._get_layer().channels[channel]
    while queue.empty():  # noqa: ASYNC110 (Redis delivers to the layer's queue: nothing to await)
        await asyncio.sleep(0.01)
