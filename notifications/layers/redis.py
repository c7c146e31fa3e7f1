"""``RedisPubSubLayer``: several daphne processes, on one host or many, sharing Redis.

Built on channels-redis's pub/sub layer, which keeps group membership in the
subscribing process rather than in Redis, so nothing expires and nothing
goes stale when a process dies; its core ``RedisChannelLayer`` drops messages
silently once its shared per-process inbox is full (capacity 100) and costs
about 17 Redis commands per delivered message.

What the subclasses change, each measured with ``python -m bench``:

- Pub/sub publishes are pipelined: the library sends one PUBLISH at a time
  under a lock, one round trip each; here every publish waiting at that
  moment goes out in one pipeline on one connection (so the pool never needs
  more than two connections, and redis-py 8's pool limit of 100, which raises
  instead of waiting, cannot be reached however many clients send at once).
- Blocking reads instead of the library's 0.1 s polling per message.
- Each connection's queue is bounded; a message that does not fit is counted.
- A consumer that goes away no longer prints ``CancelledError`` tracebacks:
  its channel is unsubscribed in a task of its own, and a failure there is
  one WARNING line.

These subclasses use members of channels-redis that are not its public API;
:data:`LIBRARY_INTERNALS` names each one, and a test checks that the
installed channels-redis still has them, so an upgrade fails in that one test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close

from notifications.layers import DEFAULT_CAPACITY, count_undeliverable

logger = logging.getLogger(__name__)

# The members of channels-redis these classes use or override beyond its public API, by class.
LIBRARY_INTERNALS: dict[str, tuple[str, ...]] = {
    "RedisSingleShardConnection": (
        "host",
        "channel_layer",
        "_redis",
        "_pubsub",
        "_ensure_redis",
        "_do_receiving",
        "_receive_message",
        "publish",
        "subscribe",
        "unsubscribe",
        "flush",
    ),
    "RedisPubSubLoopLayer": (
        "_shards",
        "_get_shard",
        "channels",
        "groups",
        "channel_layer",
        "_subscribe_to_channel",
        "receive",
        "group_discard",
        "group_send",
    ),
    "RedisPubSubChannelLayer": ("_layers", "_args", "_kwargs", "_get_layer", "deserialize"),
    "channels_redis.utils": ("_wrap_close",),
}


class _Shard(RedisSingleShardConnection):
    """One Redis connection pair with pipelined publishes and bounded delivery."""

    def __init__(self, host: Any, channel_layer: Any) -> None:
        super().__init__(host, channel_layer)
        self._outbox: deque[tuple[str, bytes, asyncio.Future[None]]] = deque()
        self._publisher: asyncio.Future[None] | None = None

    async def publish(self, channel: str, message: bytes) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((channel, message, done))
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.ensure_future(self._publish_waiting())
        await done

    async def _publish_waiting(self) -> None:
        while self._outbox:
            batch = list(self._outbox)
            self._outbox.clear()
            try:
                self._ensure_redis()
                pipe = self._redis.pipeline(transaction=False)
                for channel, message, _ in batch:
                    pipe.publish(channel, message)
                await pipe.execute()
            except Exception as exc:
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _do_receiving(self) -> None:
        # The library polls with a 0.1 s timeout per message (a timer armed and
        # cancelled for every notification); blocking reads need none.
        while True:
            try:
                if self._pubsub is not None and self._pubsub.subscribed:
                    self._receive_message(await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=None))
                else:
                    await asyncio.sleep(0.1)
            except (asyncio.CancelledError, TimeoutError, GeneratorExit):
                raise
            except Exception as exc:
                logger.warning("Reading from Redis failed, retrying in 1 s: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(1)

    def _receive_message(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
        name = message["channel"]
        if isinstance(name, bytes):
            name = name.decode()
        layer = self.channel_layer
        queue = layer.channels.get(name)
        if queue is not None:
            self._put(queue, message["data"], name)
            return
        for channel in layer.groups.get(name, ()):
            queue = layer.channels.get(channel)
            if queue is not None:
                self._put(queue, message["data"], channel)

    def _put(self, queue: asyncio.Queue[bytes], data: bytes, channel: str) -> None:
        try:
            queue.put_nowait(data)
        except asyncio.QueueFull:
            event = None
            with contextlib.suppress(Exception):
                event = self.channel_layer.channel_layer.deserialize(data)
            count_undeliverable(event, f"channel {channel}")

    async def flush(self) -> None:
        if self._publisher is not None and not self._publisher.done():
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        while self._outbox:  # nobody may wait forever for a publish that will not happen
            _, _, done = self._outbox.popleft()
            if not done.done():
                done.set_exception(RuntimeError("the channel layer was flushed before this message was published"))
        await super().flush()


class _LoopLayer(RedisPubSubLoopLayer):
    def __init__(self, *args: Any, capacity: int = DEFAULT_CAPACITY, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.capacity = capacity
        self._shards: list[_Shard] = [_Shard(shard.host, self) for shard in self._shards]
        self._cleanups: set[asyncio.Future[None]] = set()

    async def _subscribe_to_channel(self, channel: str) -> None:
        self.channels[channel] = asyncio.Queue(maxsize=self.capacity)
        await self._get_shard(channel).subscribe(channel)

    async def receive(self, channel: str) -> dict[str, Any]:
        if channel not in self.channels:
            await self._subscribe_to_channel(channel)
        queue = self.channels[channel]
        try:
            message = await queue.get()
        except (asyncio.CancelledError, TimeoutError, GeneratorExit):
            # Channels cancels receive() when the consumer ends: that is when
            # its channel goes. Unsubscribing in a task of its own keeps the
            # consumer's cancellation from interrupting it half-way (which is
            # what printed CancelledError tracebacks).
            if self.channels.pop(channel, None) is not None:
                cleanup = asyncio.ensure_future(self._unsubscribe(channel))
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)
            raise
        event: dict[str, Any] = self.channel_layer.deserialize(message)
        return event

    async def group_discard(self, group: str, channel: str) -> None:
        # A consumer leaving while Redis is down must not crash: its membership
        # is gone here, and Redis forgets the subscription with the connection.
        try:
            await super().group_discard(group, channel)
        except Exception as exc:
            logger.warning("Could not unsubscribe group %s from Redis: %s: %s", group, type(exc).__name__, exc)

    async def _unsubscribe(self, channel: str) -> None:
        try:
            await self._get_shard(channel).unsubscribe(channel)
        except Exception as exc:
            logger.warning("Could not unsubscribe channel %s from Redis: %s: %s", channel, type(exc).__name__, exc)


class RedisPubSubLayer(RedisPubSubChannelLayer):
    """Several daphne processes, on one host or many, sharing Redis.

    ``capacity`` (in ``CONFIG``, default 1,000) bounds each connection's queue.
    """

    # The hot calls, defined here rather than resolved by the library's
    # __getattr__, which builds a partial and a proxy coroutine per call.
    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self._get_layer().group_send(group, message)

    async def receive(self, channel: str) -> dict[str, Any]:
        return await self._get_layer().receive(channel)

    def _get_layer(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer  # type: ignore[no-any-return]
