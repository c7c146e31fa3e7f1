"""The WebSocket consumers: protocol v1 (PROTOCOL.md) over Channels groups, and the refusal of other paths."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from notifications import backpressure, metrics
from notifications.conf import conf
from notifications.dispatch import SerialDispatchMixin
from notifications.exceptions import DeliveryFailed
from notifications.protocol import GREETING, Register, Relay, broadcast_group, describe, group_name, parse_frame
from notifications.registry import registry
from notifications.sending.delivery import EVENT_TYPE, deliver, drain, keep_pending, take_pending

logger = logging.getLogger(__name__)

# 1013 (try again later) moved into the application range, the only one
# daphne's WebSocket library lets an application send.
CLOSE_TRY_AGAIN_LATER = 4013


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            # HTTP header values are bytes; latin-1 decodes any of them.
            return str(value.decode("latin-1"))
    return ""


class NotificationConsumer(SerialDispatchMixin, AsyncWebsocketConsumer):
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
        self.backlog: backpressure.Backlog | None = None

    async def connect(self) -> None:
        await self.accept()
        self.backlog = backpressure.Backlog(self._send_text, backpressure.watch(self.base_send), self.temp_id)
        await self.send(text_data=GREETING)
        client = self.scope.get("client")
        registry.connected(
            self.temp_id,
            self.channel_name,
            client_address=str(client[0]) if client else "",
            user_agent=_header(self.scope, b"user-agent"),
            origin=_header(self.scope, b"origin"),
        )
        metrics.counters[metrics.CONNECTIONS_OPEN] += 1
        logger.info(
            "Client %s connected from %s. Connections total: %d",
            self.temp_id,
            f"{client[0]}:{client[1]}" if client else "an unknown address",
            metrics.counters[metrics.CONNECTIONS_OPEN],
        )

    async def disconnect(self, code: int) -> None:
        registry.disconnected(self.temp_id)  # first: even if leaving a group fails
        for group in self._groups():
            await self.channel_layer.group_discard(group, self.channel_name)
        # Out of every group: what reached this connection's queue meanwhile would be lost with it.
        for event in drain(self.channel_name):
            await self._not_sent(event)
        unsent = self.backlog.discard() if self.backlog is not None else 0
        if unsent:  # the client left before it read them
            metrics.counters[metrics.UNDELIVERABLE] += unsent
            logger.warning("Client %s left with %d notifications unsent", self.temp_id, unsent)
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
                kept = await deliver(action.recipient, action.text)
            except DeliveryFailed:
                # Counted and logged by deliver(); the sender's connection stays open.
                if action.v2:
                    await self._sent(action.recipient, "refused", "unavailable")
                return
            if action.v2:
                await self._sent(action.recipient, kept.outcome if kept is not None else None)
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
            # reconnects can try again, with one line in the log.
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
        # Joined (the layer confirmed it): whatever was sent from now on reaches
        # this connection live, and whatever nobody received before is pending.
        try:
            pending = await take_pending(recipient)
        except Exception as exc:
            # Taking is one atomic step in the layer: what could not be taken stays pending.
            logger.warning(
                "Client %s registered as %s, but its pending notifications could not be taken: %s: %s",
                self.temp_id,
                describe(recipient),
                type(exc).__name__,
                exc,
            )
            return
        if pending:  # None: a layer that keeps nothing
            metrics.counters[metrics.PENDING_DELIVERED] += len(pending)
            logger.info(
                "Client %s receives %d pending notifications of %s", self.temp_id, len(pending), describe(recipient)
            )
            for kept in pending:
                await self.backlog_send(kept.text, recipient)

    async def undispatched(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            if message.get("type") == EVENT_TYPE:
                await self._not_sent(message)

    async def _not_sent(self, event: dict[str, Any]) -> None:
        """A notification that reached this connection as it left: kept for the id's next registrant, or counted."""
        recipient = event.get("recipient")
        if isinstance(recipient, str):
            try:
                kept = await keep_pending(recipient, event)
            except Exception as exc:
                kept = False
                logger.warning("Could not make a notification pending again: %s: %s", type(exc).__name__, exc)
            if kept:
                logger.info(
                    "Client %s left before it received a notification for %s: kept", self.temp_id, describe(recipient)
                )
                return
        metrics.counters[metrics.UNDELIVERABLE] += 1
        logger.warning(
            "Undeliverable notification for %s: client %s left before it was sent",
            describe(recipient) if isinstance(recipient, str) else "an unknown recipient",
            self.temp_id,
        )

    async def notify_message(self, event: dict[str, Any]) -> None:
        """A notification from the channel layer (:data:`notifications.sending.delivery.EVENT_TYPE`)."""
        await self.backlog_send(event["text"], event.get("recipient"))

    async def backlog_send(self, text: str, recipient: object) -> None:
        if self.backlog is None:  # not accepted yet
            await self._send_text(text)
        else:
            await self.backlog.send(text, recipient)

    async def _sent(self, recipient: str, outcome: str | None, code: str | None = None) -> None:
        """The v2 reply to a send frame: what became of the notification."""
        reply = {"type": "sent", "recipient_uuid": recipient, "outcome": outcome, "code": code}
        # Through the backlog: a sender that never reads must not grow the server's buffers.
        await self.backlog_send(json.dumps(reply, ensure_ascii=False), None)

    async def _send_text(self, text: str) -> None:
        await self.send(text_data=text)

    def _groups(self) -> list[str]:
        """The groups this connection joined: its ids', and the broadcast group once it registered one."""
        groups = list(self.recipients.values())
        if self.in_broadcast:
            groups.append(broadcast_group())
        return groups

    def _reject(self, reason: str) -> None:
        metrics.counters[metrics.REJECTED_FRAMES] += 1
        logger.warning("Client %s sent a frame that was ignored: %s", self.temp_id, reason)


class UnknownPath(AsyncWebsocketConsumer):
    """Any other path: the handshake is refused (HTTP 403) with one log line, not a traceback."""

    async def connect(self) -> None:
        logger.warning("Refused a WebSocket to the unknown path %s", describe(self.scope.get("path", "")))
        await self.close()
