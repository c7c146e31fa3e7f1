"""Redis down: every notification that cannot be handed over is counted and logged with its id."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from websockets.exceptions import ConnectionClosed

from harness.clients import frame, open_client, register_confirmed
from harness.servers import Daphne, RedisServer, free_port, wait_until
from notifications import metrics
from notifications.consumers import CLOSE_TRY_AGAIN_LATER
from notifications.exceptions import DeliveryFailed
from notifications.sending import asend


async def test_sending_while_redis_is_down_raises_counts_and_logs_the_id(
    settings: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "notifications.layers.redis.RedisPubSubLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},
        }
    }
    before = metrics.counters[metrics.UNDELIVERABLE]
    with caplog.at_level(logging.WARNING, logger="notifications"), pytest.raises(DeliveryFailed):
        await asend("task-owner", "image2video")
    assert metrics.counters[metrics.UNDELIVERABLE] == before + 1
    assert any("Undeliverable notification for 'task-owner'" in r.getMessage() for r in caplog.records)


async def test_a_relay_while_redis_is_down_is_logged_and_the_sender_stays_connected(
    daphne_factory: Callable[..., Daphne], own_redis: RedisServer
) -> None:
    server = daphne_factory({"REDIS_URL": own_redis.url, "REDIS_PREFIX": "down"})
    recipient = await open_client(server.url)
    await register_confirmed(recipient, "waits-for-redis")
    sender = await open_client(server.url)
    own_redis.stop()
    await sender.send(frame("waits-for-redis", "lost while Redis is down"))
    await wait_until(lambda: "Undeliverable notification for 'waits-for-redis'" in server.log(), seconds=20)
    await sender.send(frame("waits-for-redis", "again"))  # the connection is still open
    await wait_until(lambda: server.log().count("Undeliverable notification for 'waits-for-redis'") == 2, seconds=20)
    assert "Traceback" not in server.log()
    for ws in (recipient, sender):
        await ws.close()


async def test_a_registration_while_redis_is_down_closes_that_connection_to_retry_with_one_log_line(
    daphne_factory: Callable[..., Daphne], own_redis: RedisServer
) -> None:
    server = daphne_factory({"REDIS_URL": own_redis.url, "REDIS_PREFIX": "down"})
    bystander = await open_client(server.url)
    await register_confirmed(bystander, "registered-before")
    late = await open_client(server.url)
    own_redis.stop()
    await late.send(frame("registered-late", "connected"))
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(late.recv(), 20)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_TRY_AGAIN_LATER
    assert "could not register as 'registered-late'" in server.log()
    assert "Traceback" not in server.log()
    await bystander.close()
