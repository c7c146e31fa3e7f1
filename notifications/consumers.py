"""The WebSocket consumers: the protocol (v1, v2 with resume) over Channels groups, and the refusal of other paths."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from autobahn.exception import Disconnected
from channels.generic.websocket import AsyncWebsocketConsumer

from notifications import backpressure, limits, metrics
from notifications.conf import conf
from notifications.dispatch import SerialDispatchMixin
from notifications.exceptions import DeliveryFailed, one_line
from notifications.layers import (
    MAX_POSITION_LENGTH,
    Kept,
    KeptNotification,
    Replay,
    is_after,
    position_order,
    sent_between,
    sent_later,
)
from notifications.protocol import (
    GREETING,
    NO_SINCE,
    Register,
    Relay,
    broadcast_group,
    describe,
    group_name,
    parse_frame,
)
from notifications.registry import registry
from notifications.senders import websocket_sender_refusal
from notifications.sending.delivery import EVENT_TYPE, deliver, deliver_soon, drain, keep_pending, newest, resume
from notifications.tokens import check_registration_token

logger = logging.getLogger(__name__)

# 1013 (try again later) moved into the application range, the only one
# daphne's WebSocket library lets an application send.
CLOSE_TRY_AGAIN_LATER = 4013
# The server lost continuity for this connection (or is restarting): reconnect and resume.
CLOSE_CONTINUITY_LOST = 4012
# A v1 sender's notifications handed to the layer and not yet answered by it, at most, per connection:
# beyond, the connection waits for the oldest (and its client's frames wait in the read window).
IN_FLIGHT_LIMIT = 256


class ConnectionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The module's logger for one connection: each record carries ``connection`` (and any ``extra`` given)."""

    def __init__(self, logger: logging.Logger, temp_id: str) -> None:
        super().__init__(logger, {"connection": temp_id})

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            # HTTP header values are bytes; latin-1 decodes any of them.
            return str(value.decode("latin-1"))
    return ""


@dataclass(slots=True, eq=False)
class Registration:
    """One id registered on a connection: how its notifications are framed, and how far it has them."""

    group: str
    v2: bool
    # The newest position of the id this connection has: received, or where its registration began.
    cursor: str | None = None
    # v1: the positions just replayed, whose live copies may still be queued; forgotten
    # once a newer live one arrives. (v2 skips anything not after ``cursor``.)
    replayed: set[str] | None = None
    replayed_last: str | None = None
    # v1: the positions the last catch-up from the history replayed, all of them: (after, through].
    caught_up: tuple[str, str] | None = None

    def admit(self, position: str) -> bool:
        """Whether a kept notification is new to this connection (not a copy of one it has); advances ``cursor``."""
        if self.v2:
            # In increasing order and none twice, as the protocol promises v2 clients.
            if not is_after(position, self.cursor):
                return False
            self.cursor = position
            return True
        if self.caught_up is not None:
            after, through = self.caught_up
            if is_after(position, after) and not is_after(position, through):
                # Replayed by the catch-up: a later copy (the layer hands pending ones over after a
                # gap, maybe after a newer live one) would reach the client twice and out of order.
                return False
        if self.replayed is not None:
            if position in self.replayed:
                return False
            if is_after(position, self.replayed_last):
                self.replayed = self.replayed_last = None
        if is_after(position, self.cursor):
            self.cursor = position
        return True


class NotificationConsumer(SerialDispatchMixin, AsyncWebsocketConsumer):
    """Greets, registers ids as channel-layer groups, and relays notifications.

    Registering the id ``X`` joins the group :func:`~notifications.protocol.group_name`
    of ``X``; a notification for ``X`` is a ``group_send`` to that group, so
    sender and recipient may sit in different processes or hosts. A
    registration reads the id's newest position, joins, then receives what the
    layer kept since (:meth:`_register`); live copies of what it replayed are
    skipped by position (:meth:`Registration.admit`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.temp_id = uuid.uuid4().hex
        self.log = ConnectionLog(logger, self.temp_id)  # every record carries the connection's id (JSON logs)
        self.registrations: dict[str, Registration] = {}  # by id, in registration order
        self.in_broadcast = False  # joined the broadcast group (with the first registration)
        self.backlog: backpressure.Backlog | None = None
        self.closing = False  # a close was asked for: nothing more is sent
        self.send_refusal: tuple[str, str] | None = None  # why this connection may not send (WS_SENDERS)
        self.sends_refused = 0
        # v1 relays the layer has not answered yet, oldest first: a list (a deque holds 600 bytes from the
        # start), made with the first relay and dropped once all are answered (most connections never send).
        self.in_flight: list[asyncio.Future[Kept]] | None = None
        self.address: str | None = None  # the client's address, once admitted by the per-address limits
        self.frame_limit = limits.frame_limit()
        self.flooded = False  # closed with 4008 for flooding: its later frames are dropped unread

    async def connect(self) -> None:
        client = self.scope.get("client")
        address = str(client[0]) if client else ""
        refusal = limits.addresses.admit(address) if address else None
        if refusal is None:
            self.address = address  # counted: disconnect() uncounts it, however the connection ends
        await self.accept()
        if refusal is not None:
            # Accepted, then closed: a refused handshake would show a browser only 1006.
            limits.hit(metrics.ADDRESS_LIMITED, address, "Closed a connection from %s with 4008: %s", address, refusal)
            await self._close(limits.CLOSE_LIMIT, "too many connections from this address")
            return
        self.send_refusal = websocket_sender_refusal(_header(self.scope, b"authorization"))
        self.backlog = backpressure.Backlog(self._send_text, backpressure.watch(self.base_send), self.temp_id)
        await self.send(text_data=GREETING)
        registry.connected(
            self.temp_id,
            self.channel_name,
            client_address=address,
            user_agent=_header(self.scope, b"user-agent"),
            origin=_header(self.scope, b"origin"),
        )
        metrics.counters[metrics.CONNECTIONS_OPEN] += 1
        self.log.info(
            "Client %s connected from %s. Connections total: %d",
            self.temp_id,
            f"{client[0]}:{client[1]}" if client else "an unknown address",
            metrics.counters[metrics.CONNECTIONS_OPEN],
        )

    async def disconnect(self, code: int) -> None:
        if self.address is None:  # closed by the per-address limits as it connected: nothing to undo
            return
        limits.addresses.left(self.address)
        registry.disconnected(self.temp_id)  # first: even if leaving a group fails
        for group in self._groups():
            await self.channel_layer.group_discard(group, self.channel_name)
        # Out of every group: what reached this connection's queue meanwhile would be lost with it.
        for event in drain(self.channel_name):
            if event.get("type") == EVENT_TYPE:
                await self._not_sent(event)
        unsent = self.backlog.discard() if self.backlog is not None else 0
        if unsent:  # the client left before it read them
            metrics.undeliverable("client_left", f"client {self.temp_id}", unsent)
            self.log.warning(
                "Client %s left with %d notifications unsent", self.temp_id, unsent, extra={"reason": "client_left"}
            )
        metrics.counters[metrics.CONNECTIONS_OPEN] -= 1
        if self.sends_refused > 1:
            self.log.warning("Client %s had %d sends refused in all", self.temp_id, self.sends_refused)
        self.log.info(
            "Client %s disconnected (code %s, %d ids). Connections total: %d",
            self.temp_id,
            code,
            len(self.registrations),
            metrics.counters[metrics.CONNECTIONS_OPEN],
            extra={"code": code},
        )
        self.registrations.clear()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        registry.active(self.temp_id)
        if self.frame_limit is not None and not self.frame_limit.allow():
            await self._over_rate(text_data)
            return
        if text_data is None:
            self._reject("binary frame")
            return
        action = parse_frame(text_data)
        if isinstance(action, Relay):
            if self.send_refusal is not None:
                await self._refuse_send(action)
                return
            if not action.v2 and (started := await deliver_soon(action.recipient, action.text)) is not None:
                # A v1 sender gets no answer: its next frame is handled without waiting for Redis's, so
                # that its notifications go out together (in order, counted as they are answered).
                await self._in_flight(started)
            elif not await self._relay(action):
                return
            if logger.isEnabledFor(logging.INFO):  # describe() costs, once per relayed message
                self.log.info(
                    "Client %s relayed %d characters to %s", self.temp_id, len(action.text), describe(action.recipient)
                )
        elif isinstance(action, Register):
            await self._register(action)
        else:
            self._reject(action.reason)

    async def _in_flight(self, started: asyncio.Future[Kept]) -> None:
        """Note a v1 relay the layer has not answered yet; wait for the oldest while there are too many."""
        waiting = self.in_flight
        if waiting is None:
            waiting = self.in_flight = []
        waiting.append(started)
        answered = 0
        while answered < len(waiting) and waiting[answered].done():
            answered += 1
        del waiting[:answered]
        if len(waiting) > IN_FLIGHT_LIMIT:
            # Shielded: cancelling this consumer must not cancel the notification (it went to the layer).
            with contextlib.suppress(Exception):
                await asyncio.shield(waiting.pop(0))
        if not waiting:
            self.in_flight = None

    async def _relay(self, action: Relay) -> bool:
        """Deliver and wait for the layer's answer, which a v2 sender is told; whether it took the notification."""
        try:
            kept = await deliver(action.recipient, action.text)
        except DeliveryFailed:
            # Counted and logged by deliver(); the sender's connection stays open.
            if action.v2:
                await self._sent(action.recipient, "refused", "unavailable")
            return False
        if action.v2:
            await self._sent(action.recipient, kept.outcome if kept is not None else None)
        return True

    async def _register(self, action: Register) -> None:
        recipient = action.recipient
        existing = self.registrations.get(recipient)
        if existing is not None:
            # Registered already and receiving live: nothing to replay. A v2 frame is answered,
            # and the id's notifications are framed as v2 from now on.
            if action.v2:
                existing.v2 = True
                # With ``since``: recovered only if it is where this connection is (nothing to replay).
                recovered = None if action.since is NO_SINCE else action.since == existing.cursor is not None
                _count_resume(recovered)
                await self._reply(
                    {
                        "type": "registered",
                        "recipient_uuid": recipient,
                        "position": existing.cursor,
                        "recovered": recovered,
                    }
                )
            return
        if conf.REGISTRATION == "signed" and (refusal := check_registration_token(recipient, action.token)):
            code, reason = refusal
            metrics.counters[metrics.REGISTRATIONS_REFUSED] += 1
            # The reason, never the token: a log is no place for a credential.
            self.log.warning("Client %s may not register %s: %s (%s)", self.temp_id, describe(recipient), reason, code)
            if action.v2:
                await self._refused(recipient, code, reason)
            return
        limit = conf.MAX_IDS_PER_CONNECTION
        if len(self.registrations) >= limit:
            metrics.counters[metrics.IDS_LIMITED] += 1
            self._reject(f"already {limit} ids registered; refused {describe(recipient)}")
            if action.v2:
                await self._refused(recipient, "limit", f"this connection has registered {limit} ids, the most allowed")
            return
        since = self._since(action)
        # Noted before joining: a layer may record the membership and then fail
        # (channels-redis subscribes after it notes the member), and disconnect()
        # must leave every group this connection may be in.
        registration = self.registrations[recipient] = Registration(group_name(recipient), action.v2)
        try:
            # Where this registration begins, read before joining: whatever is sent from
            # then on either reaches it live or is in what it takes after joining.
            start = await newest(recipient)
            await self.channel_layer.group_add(registration.group, self.channel_name)
        except Exception as exc:
            # The channel layer is unreachable (Redis down). A connection that looks
            # registered but receives nothing is the worst outcome: close it, so that a
            # client that reconnects can try again, with one line in the log.
            self.log.warning(
                "Client %s could not register as %s: %s: %s; closing it (%d)",
                self.temp_id,
                describe(recipient),
                type(exc).__name__,
                exc,
                CLOSE_TRY_AGAIN_LATER,
            )
            if action.v2:
                await self._refused(recipient, "unavailable", "the channel layer is unreachable; try again later")
            await self._close(CLOSE_TRY_AGAIN_LATER, "channel layer unavailable")
            return
        registration.cursor = start
        if not self.in_broadcast:
            await self._join_broadcast()
        registry.registered(self.temp_id, recipient)
        self.log.info("Client %s registered as %s", self.temp_id, describe(recipient))
        try:
            replay = await resume(recipient, since, start)
        except Exception as exc:
            # Resuming is one atomic step in the layer: what could not be taken stays pending.
            self.log.warning(
                "Client %s registered as %s, but its kept notifications could not be read: %s: %s",
                self.temp_id,
                describe(recipient),
                type(exc).__name__,
                exc,
            )
            replay = None
        if action.v2:
            recovered = replay is not None and replay.recovered
            if action.since is not NO_SINCE:
                _count_resume(recovered)
            await self._reply(
                {
                    "type": "registered",
                    "recipient_uuid": recipient,
                    # Recovered: the client's place is ``since``, and all after it follows.
                    # Otherwise it starts where the registration began.
                    "position": replay.newest if replay is not None and recovered else start,
                    "recovered": None if action.since is NO_SINCE else recovered,
                }
            )
            if recovered:
                registration.cursor = since
        if replay is not None and replay.notifications:
            await self._replay(recipient, registration, replay.notifications)

    async def _join_broadcast(self) -> None:
        """The first registration also joins the broadcast group: a broadcast reaches every registered
        connection once, whatever its ids. With sharded Redis the broadcast group lives on one shard;
        if that one is down, the registration stands (its id's shard answered) and the layer keeps
        trying to subscribe the group until it can."""
        self.in_broadcast = True  # noted first: the layer notes the member even when subscribing fails
        try:
            await self.channel_layer.group_add(broadcast_group(), self.channel_name)
        except Exception as exc:
            self.log.warning(
                "Client %s registered, but joining the broadcast group failed (%s); retried in the background",
                self.temp_id,
                one_line(exc),
            )

    def _since(self, action: Register) -> str | None:
        """The registration's ``since`` if it can be a position; None (and a log line) otherwise."""
        since = action.since
        if since is NO_SINCE:
            return None
        if isinstance(since, str) and len(since) <= MAX_POSITION_LENGTH and position_order(since) is not None:
            return since
        shown = describe(since) if isinstance(since, str) else type(since).__name__
        self.log.info("Client %s resumes %s from %s: no position", self.temp_id, describe(action.recipient), shown)
        return None

    async def _replay(self, recipient: str, registration: Registration, kept: list[KeptNotification]) -> None:
        """Send what was sent before (history, pending), oldest first; paced by the client's reading, never cut.

        The layer chose these: after the client's ``since``, or (not recovered) after where
        the registration began, with every pending one, some of which may be older.
        """
        metrics.counters[metrics.REPLAYED] += len(kept)
        self.log.info("Client %s receives %d kept notifications of %s", self.temp_id, len(kept), describe(recipient))
        if not registration.v2:
            registration.replayed = {k.position for k in kept}
            registration.replayed_last = kept[-1].position
        for index, notification in enumerate(kept):
            if registration.v2:
                text = _message_frame(recipient, notification.text, notification.position, replayed=True)
            else:
                text = notification.text
            if self.closing or self.backlog is None or not await self.backlog.send_paced(text):
                # The client left. A v2 client resumes from the history; for v1 (whose replay is
                # mostly pending ones, taken), the rest waits for the id's next registration.
                if not registration.v2:
                    for rest in kept[index:]:
                        await self._not_sent(
                            {"type": EVENT_TYPE, "recipient": recipient, "text": rest.text, "position": rest.position}
                        )
                return
            if is_after(notification.position, registration.cursor):
                registration.cursor = notification.position

    async def notify_gap(self, event: dict[str, Any]) -> None:
        """The layer lost what was sent to some of this connection's groups for a while: catch up, or say so.

        From the history where everything since each registration's cursor is
        still kept; otherwise a v2 connection is closed with 4012 (it resumes and
        learns ``recovered: false``), and for v1 the possible loss is counted and logged.
        """
        groups = set(event.get("groups", ()))
        for recipient, registration in list(self.registrations.items()):
            if registration.group in groups and not self.closing:
                await self._catch_up(recipient, registration)

    async def _catch_up(self, recipient: str, registration: Registration) -> None:
        try:
            # Pending ones are left to the layer's own hand-over: some may be another registrant's.
            replay: Replay | None = await resume(recipient, registration.cursor, None, take=False)
        except Exception as exc:
            self.log.warning(
                "Client %s could not catch up %s: %s: %s", self.temp_id, describe(recipient), type(exc).__name__, exc
            )
            replay = None
        if replay is not None and replay.recovered:
            if not registration.v2 and registration.cursor is not None and replay.newest is not None:
                # Everything after the cursor up to the newest is replayed now: copies of it that come later
                # are skipped by position (v2 skips anything not after its cursor anyway).
                registration.caught_up = (registration.cursor, replay.newest)
            metrics.counters[metrics.CAUGHT_UP] += len(replay.notifications)
            self.log.info(
                "Client %s caught up %d notifications of %s after the channel layer's gap",
                self.temp_id,
                len(replay.notifications),
                describe(recipient),
            )
            if replay.notifications:
                await self._replay(recipient, registration, replay.notifications)
            return
        metrics.counters[metrics.CONTINUITY_LOST] += 1
        if registration.v2:
            self.log.warning(
                "Client %s lost continuity for %s (not all kept): closing it (%d) so that it resumes",
                self.temp_id,
                describe(recipient),
                CLOSE_CONTINUITY_LOST,
            )
            await self._close(CLOSE_CONTINUITY_LOST, "continuity lost; resume")
            return
        # v1: late rather than never for what is still kept after its last one; the rest is lost to it.
        late = [
            k
            for k in (replay.notifications if replay is not None else [])
            if sent_later(k.position, registration.cursor)
        ]
        sent = sent_between(registration.cursor, replay.newest) if replay is not None else None
        if sent is None or sent < len(late):
            missed = "an unknown number of"
        else:
            missed = str(sent - len(late))
            metrics.counters[metrics.MISSED] += sent - len(late)
            metrics.undeliverable("missed", describe(recipient), sent - len(late))
        self.log.warning(
            "Client %s (protocol v1) may have missed %s notifications of %s while the channel layer was away; "
            "%d still kept are sent now",
            self.temp_id,
            missed,
            describe(recipient),
            len(late),
        )
        if late:
            await self._replay(recipient, registration, late)

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
                self.log.warning("Could not make a notification pending again: %s: %s", type(exc).__name__, exc)
            if kept:
                metrics.counters[metrics.PENDING_AGAIN] += 1
                self.log.info(
                    "Client %s left before it received a notification for %s: kept", self.temp_id, describe(recipient)
                )
                return
        whose = describe(recipient) if isinstance(recipient, str) else "an unknown recipient"
        metrics.undeliverable("client_left", whose)
        self.log.warning(
            "Undeliverable notification for %s: client %s left before it was sent",
            whose,
            self.temp_id,
            extra={"reason": "client_left"},
        )

    async def notify_message(self, event: dict[str, Any]) -> None:
        """A notification from the channel layer (:data:`notifications.sending.delivery.EVENT_TYPE`)."""
        recipient: str | None = event.get("recipient")
        registration = self.registrations.get(recipient) if recipient is not None else None
        if recipient is None or registration is None:  # a broadcast, or to this connection alone
            text = self._untargeted(event["text"])
        else:
            position = event.get("position")
            if position is not None and not registration.admit(position):
                return  # a copy of one this connection has (replayed, or handed over twice)
            text = _message_frame(recipient, event["text"], position) if registration.v2 else event["text"]
        if await self.backlog_send(text, recipient, event):
            metrics.counters[metrics.DELIVERED] += 1
            if isinstance(at := event.get("at"), float):
                metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - at))

    def _untargeted(self, text: str) -> str:
        """A notification to no id of this connection's: raw text, unless every registration is v2."""
        registrations = self.registrations.values()
        if registrations and all(r.v2 for r in registrations):
            return json.dumps(
                {"type": "message", "recipient_uuid": None, "message": text, "position": None}, ensure_ascii=False
            )
        return text

    async def backlog_send(self, text: str, recipient: object, event: dict[str, Any] | None = None) -> bool:
        """Send (or hold) one frame: True if it was; ``event``, the notification it carries, is kept again if not."""
        if not self.closing:
            if self.backlog is None:  # not accepted yet
                sent = await self._send_text(text)
            else:
                sent = await self.backlog.send(text, recipient)
            if sent:
                return True
            if not self.closing:
                # Dropped for a client that does not read (counted by the backlog). A v2 client must
                # not go on with a hidden gap: closed, it resumes from the history when it reads again.
                registration = self.registrations.get(recipient) if isinstance(recipient, str) else None
                if registration is not None and registration.v2:
                    await self._close(CLOSE_CONTINUITY_LOST, "too many notifications waiting; resume")
                return False
        # Closing, or gone as it was sent: the notification is not lost with the connection.
        if event is not None:
            await self._not_sent(event)
        return False

    def unhandled(self, frames: int) -> None:
        metrics.counters[metrics.UNHANDLED_FRAMES] += frames
        self.log.warning(
            "Client %s: %d frames it sent were never handled (daphne stopped its handling first); any "
            "notifications among them were not sent",
            self.temp_id,
            frames,
        )

    async def _over_rate(self, text_data: str | None) -> None:
        """A frame over ``MAX_FRAMES_PER_SECOND``: not acted on; a v2 one is told so; a flood is closed."""
        if self.flooded:
            return
        assert self.frame_limit is not None
        if self.read_window is not None:
            self.read_window.hold(limits.HOLD_SECONDS)
        if self.frame_limit.flooding():
            self.flooded = True
            limits.hit(
                metrics.FLOODS_CLOSED,
                self.temp_id,
                "Client %s closed with 4008: over %d frames a second for %g s",
                self.temp_id,
                conf.MAX_FRAMES_PER_SECOND,
                conf.FLOOD_SECONDS,
            )
            await self._close(limits.CLOSE_LIMIT, "too many frames a second")
            return
        limits.hit(
            metrics.FRAMES_LIMITED,
            self.temp_id,
            "Client %s sends over %d frames a second: its frames over that are not acted on",
            self.temp_id,
            conf.MAX_FRAMES_PER_SECOND,
        )
        action = parse_frame(text_data) if text_data is not None else None
        if isinstance(action, Relay) and action.v2:
            await self._sent(action.recipient, "refused", "limit")
        elif isinstance(action, Register) and action.v2:
            await self._refused(action.recipient, "limit", "over the frames a second this connection may send")

    async def _refuse_send(self, action: Relay) -> None:
        """A send from a connection that may not send (``WS_SENDERS``): not relayed, counted, logged once."""
        assert self.send_refusal is not None
        code, reason = self.send_refusal
        metrics.counters[metrics.SENDS_REFUSED] += 1
        self.sends_refused += 1
        if self.sends_refused == 1:  # once per connection: a client that insists does not flood the log
            self.log.warning(
                "Client %s may not send (to %s, and any later one is refused too): %s",
                self.temp_id,
                describe(action.recipient),
                reason,
            )
        if action.v2:
            await self._sent(action.recipient, "refused", code)

    async def _sent(self, recipient: str, outcome: str | None, code: str | None = None) -> None:
        """The v2 reply to a send frame: what became of the notification."""
        await self._reply({"type": "sent", "recipient_uuid": recipient, "outcome": outcome, "code": code})

    async def _refused(self, recipient: str, code: str, reason: str) -> None:
        """The v2 reply to a registration that registered nothing."""
        await self._reply({"type": "refused", "recipient_uuid": recipient, "code": code, "reason": reason})

    async def _reply(self, frame: dict[str, Any]) -> None:
        # Through the backlog: a client that never reads must not grow the server's buffers.
        await self.backlog_send(json.dumps(frame, ensure_ascii=False), None)

    async def _close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            await self.close(code=code, reason=reason)

    async def _send_text(self, text: str) -> bool:
        """Send one frame now; False if the connection is already gone (nothing more is sent on it)."""
        if self.backlog is not None and self.backlog.gone:  # daphne would drop it without a word
            self.closing = True
            return False
        try:
            # What AsyncWebsocketConsumer.send(text_data=text) sends, two coroutine frames fewer per frame.
            await self.base_send({"type": "websocket.send", "text": text})
        except Disconnected:  # daphne's socket closed under us (the client vanished): disconnect() follows
            self.closing = True
            return False
        return True

    def _groups(self) -> list[str]:
        """The groups this connection joined: its ids', and the broadcast group once it registered one."""
        groups = [registration.group for registration in self.registrations.values()]
        if self.in_broadcast:
            groups.append(broadcast_group())
        return groups

    def _reject(self, reason: str) -> None:
        metrics.counters[metrics.REJECTED_FRAMES] += 1
        self.log.warning("Client %s sent a frame that was ignored: %s", self.temp_id, reason)


def _count_resume(recovered: bool | None) -> None:
    if recovered is not None:
        metrics.counters[metrics.RESUMES_RECOVERED if recovered else metrics.RESUMES_NOT_RECOVERED] += 1


def _message_frame(recipient: str, text: str, position: str | None, *, replayed: bool = False) -> str:
    """A notification to a v2 registration: the exact text a v1 client would get, with its position."""
    frame: dict[str, Any] = {"type": "message", "recipient_uuid": recipient, "message": text, "position": position}
    if replayed:
        frame["replayed"] = True
    return json.dumps(frame, ensure_ascii=False)


class UnknownPath(AsyncWebsocketConsumer):
    """Any other path: the handshake is refused (HTTP 403) with one log line, not a traceback."""

    async def connect(self) -> None:
        logger.warning("Refused a WebSocket to the unknown path %s", describe(self.scope.get("path", "")))
        await self.close()
