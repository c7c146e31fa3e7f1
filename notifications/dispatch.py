"""A consumer's dispatch loop: one message at a time, from the client and from the channel layer.

:class:`SerialDispatchMixin` replaces Channels' ``AsyncConsumer.__call__``:
its ``await_many_dispatch()`` creates a task and runs ``asyncio.wait()`` for
every message, twice per relayed notification (sender and recipient).
Measured with ``python -m bench``, this loop costs the server about 15% less
CPU per relayed message at saturation. A Channels upgrade should re-check it
against ``channels.consumer.AsyncConsumer`` and ``channels.utils.await_many_dispatch``.

On the app's own layers (:class:`notifications.layers.Inbox`) and a server
whose ``receive`` is a queue's ``get`` (the app's server and its
:class:`notifications.backpressure.ClientQueue`, daphne's and Channels' test
communicator's ``asyncio.Queue``), the consumer's own task takes from both queues as they fill:
no task, lock or waiter per source (about 5 KB less per idle connection,
measured with ``python -m bench``). Under anything else, one task reads each source.

It also stops reading a client's socket while too many of its frames wait
(:class:`notifications.backpressure.ReadWindow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer

from notifications import backpressure
from notifications.layers import Inbox

# Where a consumer's messages come from: the client (ASGI receive) or the channel layer.
Source = Callable[[], Awaitable[dict[str, Any]]]
Sink = Callable[[dict[str, Any]], Awaitable[None]]


async def _taken(receive: Source, window: backpressure.ReadWindow) -> dict[str, Any]:
    message = await receive()
    window.took_one()
    return message


class SerialDispatchMixin:
    """Put before ``AsyncConsumer`` (or a subclass) in the bases; handlers never overlap."""

    channel_layer_alias: str
    channel_layer: Any
    channel_name: str
    scope: dict[str, Any]
    base_send: Sink
    read_window: backpressure.ReadWindow | None  # None under a server other than daphne

    async def __call__(self, scope: dict[str, Any], receive: Source, send: Sink) -> None:
        self.scope = scope
        self.channel_layer = layer = get_channel_layer(self.channel_layer_alias)
        if layer is not None:
            self.channel_name = await layer.new_channel()
        self.base_send = send
        self.left_over: list[dict[str, Any]] = []
        window = self.read_window = backpressure.read_window(receive, send)
        client = getattr(receive, "__self__", None)
        with contextlib.suppress(StopConsumer):
            try:
                if isinstance(client, backpressure.ClientQueue | asyncio.Queue) and isinstance(layer, Inbox):
                    await self._dispatch_both(client, layer, window)
                else:
                    sources: list[Source] = [receive if window is None else functools.partial(_taken, receive, window)]
                    if layer is not None:
                        sources.append(functools.partial(layer.receive, self.channel_name))
                    await self._dispatch_from(sources)
            except asyncio.CancelledError:
                # daphne kills an application that is still busy 10 s after its client left (or as the
                # server stops): the frames it read from the client and never handled are counted.
                if window is not None and (unread := window.unread()):
                    self.unhandled(unread)
                raise
            finally:
                if window is not None:
                    window.close()
                if isinstance(layer, Inbox):
                    self.left_over.extend(layer.drain(self.channel_name))
                    layer.release(self.channel_name)
                if self.left_over:
                    await self.undispatched(self.left_over)

    async def _dispatch_both(
        self,
        client: backpressure.ClientQueue | asyncio.Queue[dict[str, Any]],
        layer: Inbox,
        window: backpressure.ReadWindow | None,
    ) -> None:
        """Dispatch from the client's queue and the layer's channel in turn, in this task, until a handler raises.

        While both are empty the task waits on one future that either rings:
        the layer as it queues a message for the channel, the client's queue
        as the server puts a frame in it (an ``asyncio.Queue``'s ``put_nowait``
        is wrapped for that). Woken, it looks at the client's queue first (a
        glance, where the layer's channel takes a call): a sender's frame is
        then dispatched without asking the layer first.
        """
        channel = self.channel_name
        loop = asyncio.get_running_loop()
        inbox = layer.loop_inbox()  # this consumer lives in this loop: asked once, not per take
        bell: asyncio.Future[None] | None = None
        wake = client.wake if isinstance(client, backpressure.ClientQueue) else None
        if wake is None:
            put = client.put_nowait

            def put_and_ring(item: dict[str, Any]) -> None:
                put(item)
                if bell is not None and not bell.done():
                    bell.set_result(None)

            client.put_nowait = put_and_ring  # type: ignore[method-assign]
        client_first = True  # the two sources take turns, so that neither starves the other
        while True:
            message = None if client_first else inbox.take(channel)
            if message is not None:
                client_first = True
            elif not client.empty():
                message = client.get_nowait()
                if window is not None:
                    window.took_one()
                client_first = False
            elif client_first:
                message = inbox.take(channel)
            if message is None:
                bell = loop.create_future()
                inbox.wake_on_message(channel, bell)
                if wake is not None:
                    wake(bell)
                await bell
                bell = None
                # Both were empty until now: neither is owed a turn.
                client_first = True
                continue
            await self.dispatch(message)

    async def _dispatch_from(self, sources: list[Source]) -> None:
        """Dispatch what each source yields, one message at a time, until a handler raises.

        One long-lived task reads each source, as await_many_dispatch() does
        with a task per message; a lock keeps handlers from overlapping, and
        once a handler has raised (StopConsumer after a disconnect, or an
        error) no other message is dispatched.
        """
        turn = asyncio.Lock()
        stopped = False

        async def read(source: Source) -> None:
            nonlocal stopped
            try:
                while True:
                    message = await source()
                    async with turn:
                        if stopped:
                            self.left_over.append(message)  # read, but the consumer stopped first
                            return
                        await self.dispatch(message)
            except BaseException:
                stopped = True
                raise

        # The first reader to end, through one future: asyncio.wait() would hold a set, a waiter, a
        # counter and a callback per reader for the whole connection (about 1 KB, by tracemalloc).
        first: asyncio.Future[asyncio.Future[None]] = asyncio.get_running_loop().create_future()

        def ended(reader: asyncio.Future[None]) -> None:
            if not first.done():
                first.set_result(reader)

        readers = [asyncio.ensure_future(read(source)) for source in sources]
        for reader in readers:
            reader.add_done_callback(ended)
        try:
            (await first).result()
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.wait(readers)
            for reader in readers:
                if not reader.cancelled():
                    reader.exception()  # retrieved: the first error has been raised above

    async def undispatched(self, messages: list[dict[str, Any]]) -> None:
        """Messages read from a source after a handler stopped the consumer; by default, nothing."""

    def unhandled(self, frames: int) -> None:
        """``frames`` the client sent were read but never handled: the consumer was cancelled first."""

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs close_old_connections() in a worker thread before every
        # handler, a thread hop per frame and per group event. No handler of a
        # consumer using this mixin may touch the database on the event loop
        # (database work goes through database_sync_to_async, which does its
        # own connection housekeeping), so the hop is pure overhead.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)
