"""The WebSocket endpoint: protocol v1 (PROTOCOL.md) over Channels groups."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer

from notifications import metrics
from notifications.conf import conf
from notifications.protocol import GREETING, Register, Relay, describe, group_name, parse_frame
from notifications.registry import registry
from notifications.sending import DeliveryFailed, deliver

logger = logging.getLogger(__name__)


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
        for group in self.recipients.values():
            await self.channel_layer.group_discard(group, self.channel_name)
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
        await self.channel_layer.group_add(group, self.channel_name)
        self.recipients[recipient] = group
        registry.registered(self.temp_id, recipient)
        logger.info("Client %s registered as %s", self.temp_id, describe(recipient))

    async def notify_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])

    def _reject(self, reason: str) -> None:
        metrics.counters[metrics.REJECTED_FRAMES] += 1
        logger.warning("Client %s sent a frame that was ignored: %s", self.temp_id, reason)

    def _peer(self) -> str:
        client = self.scope.get("client")
        return f"{client[0]}:{client[1]}" if client else "an unknown address"
