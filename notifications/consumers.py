"""The WebSocket endpoint: protocol v1 (PROTOCOL.md) over Channels groups."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer

from notifications import backpressure, metrics
from notifications.conf import conf
from notifications.protocol import GREETING, Register, Relay, broadcast_group, describe, group_name, parse_frame
from notifications.registry import registry
from notifications.sending import DeliveryFailed, deliver

logger = logging.getLogger(__name__)

CLOSE_TRY_AGAIN_LATER = 4013

# Where a consumer's messages come from: the client (ASGI receive) or the channel layer.
Source = Callable[[], Awaitable[dict[str, Any]]]
Sink = Callable[[dict[str, Any]], Awaitable[None]]


class NotificationConsumer(AsyncWebsocketConsumer):
    """Greets, registers ids as channel-layer groups, and relays notifications.

    Registering the id ``X`` joins the group :func:`~notifications.protocol.group_name`
    of ``X``; a notification for ``X`` is a ``group_send`` to that group, so
    sender and recipient may sit in different processes or hosts.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.temp_id = uuid.uuid4().hex
        self.recipients: dict[str, str] = {}  # id -> group name, in registration order
        self.in_broadcast = False  # joined the broadcast group (with the first registration)
        # Notifications waiting while the client's socket takes nothing (see _hold).
        self.backlog: deque[str] = deque()
        self.window: backpressure.WriteWindow | None = None
        self.dropped = 0  # notifications dropped since the client stopped reading
        self.drainer: asyncio.Future[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Source, send: Sink) -> None:
        # Channels' AsyncConsumer.__call__, with another loop around dispatch():
        # its await_many_dispatch() creates a task and runs asyncio.wait() for
        # every message, twice per relayed notification (sender and recipient).
        # Measured with ``python -m bench``: this loop costs the server about
        # 15% less CPU per relayed message at saturation.
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        sources: list[Source] = [receive]
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            sources.append(self.channel_receive)
        self.base_send = send
        with contextlib.suppress(StopConsumer):
            await self._dispatch_from(sources)

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
                            return
                        await self.dispatch(message)
            except BaseException:
                stopped = True
                raise

        readers = [asyncio.ensure_future(read(source)) for source in sources]
        try:
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
            for reader in done:
                reader.result()
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.wait(readers)
            for reader in readers:
                if not reader.cancelled():
                    reader.exception()  # retrieved: the first error has been raised above

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs close_old_connections() in a worker thread before every
        # handler, a thread hop per frame and per group event. No handler here
        # touches the database on the event loop (DB work goes through
        # database_sync_to_async, which does its own connection housekeeping),
        # so the hop is pure overhead on the relay path.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        await self.accept()
        self.window = backpressure.watch(self.base_send)
        if self.window is not None:
            self.window.on_resume = self._drain_soon
        await self.send(text_data=GREETING)
        registry.connected(self.temp_id, self.channel_name, self.scope)
        metrics.counters[metrics.CONNECTIONS_OPEN] += 1
        logger.info(
            "Client %s connected from %s. Connections total: %d",
            self.temp_id,
            self._peer(),
            metrics.counters[metrics.CONNECTIONS_OPEN],
        )

    async def disconnect(self, code: int) -> None:
        registry.disconnected(self.temp_id)  # first: even if leaving a group fails
        for group in self._groups():
            await self.channel_layer.group_discard(group, self.channel_name)
        if self.backlog:  # the client left before it read them
            metrics.counters[metrics.UNDELIVERABLE] += len(self.backlog)
            logger.warning("Client %s left with %d notifications unsent", self.temp_id, len(self.backlog))
            self.backlog.clear()
        metrics.counters[metrics.CONNECTIONS_OPEN] -= 1
        logger.info(
            "Client %s disconnected (code %s, %d ids). Connections total: %d",
            self.temp_id,
            code,
            len(self.recipients),
            metrics.counters[metrics.CONNECTIONS_OPEN],
        )
        self.recipients.clear()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        registry.active(self.temp_id)
        if text_data is None:
            self._reject("binary frame")
            return
        action = parse_frame(text_data)
        if isinstance(action, Relay):
            try:
                await deliver(action.recipient, action.text)
            except DeliveryFailed:
                return  # counted and logged by deliver(); the sender's connection stays open
            if logger.isEnabledFor(logging.INFO):  # describe() costs, once per relayed message
                logger.info(
                    "Client %s relayed %d characters to %s", self.temp_id, len(action.text), describe(action.recipient)
                )
        elif isinstance(action, Register):
            await self._register(action.recipient)
        else:
            self._reject(action.reason)

    async def _register(self, recipient: str) -> None:
        if recipient in self.recipients:
            return
        limit = conf.MAX_IDS_PER_CONNECTION
        if len(self.recipients) >= limit:
            self._reject(f"already {limit} ids registered; refused {describe(recipient)}")
            return
        group = group_name(recipient)
        # Noted before joining: a layer may record the membership and then fail
        # (channels-redis subscribes after it notes the member), and disconnect()
        # must leave every group this connection may be in.
        self.recipients[recipient] = group
        try:
            if not self.in_broadcast:
                # The first registration also joins the broadcast group: a
                # broadcast reaches every registered connection once, whatever its ids.
                self.in_broadcast = True
                await self.channel_layer.group_add(broadcast_group(), self.channel_name)
            await self.channel_layer.group_add(group, self.channel_name)
        except Exception as exc:
            # The channel layer is unreachable (Redis down). The protocol has no
            # way to say so, and a connection that looks registered but receives
            # nothing is the worst outcome: close it, so that a client that
            # reconnects can try again, with one line in the log. The code is
            # 1013 (try again later) moved into the application range, the
            # only one daphne's WebSocket library lets an application send.
            logger.warning(
                "Client %s could not register as %s: %s: %s; closing it (%d)",
                self.temp_id,
                describe(recipient),
                type(exc).__name__,
                exc,
                CLOSE_TRY_AGAIN_LATER,
            )
            await self.close(code=CLOSE_TRY_AGAIN_LATER, reason="channel layer unavailable")
            return
        registry.registered(self.temp_id, recipient)
        logger.info("Client %s registered as %s", self.temp_id, describe(recipient))

    async def notify_message(self, event: dict[str, Any]) -> None:
        window = self.window
        if window is None or not (window.paused or self.backlog):
            await self.send(text_data=event["text"])
            return
        self._hold(event)

    def _hold(self, event: dict[str, Any]) -> None:
        # The client is not reading: its socket and Twisted's 64 KiB buffer are
        # full. Up to NOTIFICATIONS_MAX_QUEUED_MESSAGES wait here, in order;
        # beyond that, new ones are dropped, counted and logged. The connection
        # stays open: clients in the field never reconnect, one that is merely
        # slow gets everything after it catches up, and one that is gone is
        # dropped by the keep-alive ping.
        if len(self.backlog) < conf.MAX_QUEUED_MESSAGES:
            self.backlog.append(event["text"])
            if self.window is not None and not self.window.paused:
                self._drain_soon()
            return
        self.dropped += 1
        metrics.counters[metrics.UNDELIVERABLE] += 1
        metrics.counters[metrics.NOT_READING] += 1
        recipient = event.get("recipient")
        logger.warning(
            "Undeliverable notification for %s: client %s is not reading (%d notifications waiting)",
            describe(recipient) if isinstance(recipient, str) else "an unknown recipient",
            self.temp_id,
            len(self.backlog),
        )

    def _drain_soon(self) -> None:
        if self.backlog and (self.drainer is None or self.drainer.done()):
            self.drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while self.backlog and self.window is not None and not self.window.paused:
            await self.send(text_data=self.backlog.popleft())
        if not self.backlog and self.dropped:
            logger.warning("Client %s reads again; %d notifications were dropped meanwhile", self.temp_id, self.dropped)
            self.dropped = 0

    def _groups(self) -> list[str]:
        """The groups this connection joined: its ids', and the broadcast group once it registered one."""
        groups = list(self.recipients.values())
        if self.in_broadcast:
            groups.append(broadcast_group())
        return groups

    def _reject(self, reason: str) -> None:
        metrics.counters[metrics.REJECTED_FRAMES] += 1
        logger.warning("Client %s sent a frame that was ignored: %s", self.temp_id, reason)

    def _peer(self) -> str:
        client = self.scope.get("client")
        return f"{client[0]}:{client[1]}" if client else "an unknown address"
