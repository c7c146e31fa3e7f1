"""The one sending API: every entry point delivers notifications through here.

The WebSocket relay, the ``notify`` command, the HTTP push endpoint, the
admin action and Django views all call these functions, so that they
validate, deliver and account for failures the same way::

    from notifications.sending import send  # async code: asend

    def finish_task(request, task):
        ...
        result = send(task.owner_uuid, {"status": 200, "url": task.url})
        result.live_connections  # 0: nobody is listening right now

Where a notification goes:

- Through the channel layer, to the recipient's group, when the layer
  reaches every server process (Redis), or when this process is the server
  (it runs ``notifyproject.asgi``, which calls :func:`mark_as_server`).
- Through the running server's own WebSocket (``NOTIFY_SERVER_URL``), as
  the old ``client.py`` did, when the layer is the in-memory one and this
  process is not the server (a shell, a cron script, a worker): publishing
  into this process's own memory would reach nobody.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from django.db import DatabaseError

from notifications import metrics, presence
from notifications.conf import conf
from notifications.presence import aconnection_count, ais_online, connection_count, is_online
from notifications.protocol import (
    GREETING,
    REGISTER_MESSAGE,
    InvalidNotification,
    broadcast_group,
    describe,
    group_name,
    message_text,
    validate_recipient,
)

__all__ = [
    "DeliveryFailed",
    "InvalidNotification",
    "SendResult",
    "abroadcast",
    "aconnection_count",
    "ais_online",
    "asend",
    "asend_many",
    "asend_to_connections",
    "broadcast",
    "connection_count",
    "is_online",
    "send",
    "send_many",
    "send_to_connections",
]

logger = logging.getLogger(__name__)

EVENT_TYPE = "notify.message"
SERVER_TIMEOUT = 10.0  # seconds to reach the server's WebSocket and hand a notification over


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a send did: handed over, and how many live connections the registry held for its id.

    ``live_connections`` is read from the registry when the notification is
    sent. The registry may lag by up to a second (a connection that has just
    registered may not count yet, one that has just left may still count),
    and it is ``None`` when the registry is switched off or unreadable.
    """

    recipient: str | None  # None for a broadcast
    live_connections: int | None


class DeliveryFailed(RuntimeError):
    """The notification could not be handed over: Redis is down, or the server cannot be reached.

    ``sent`` holds the results of the notifications of the same call that
    were handed over before the failure.
    """

    def __init__(self, message: str, *, sent: Sequence[SendResult] = ()) -> None:
        super().__init__(message)
        self.sent = list(sent)


_serving = False


def mark_as_server() -> None:
    """Declare that this process serves the WebSocket, so the in-memory layer reaches its clients."""
    global _serving
    _serving = True


def _layer() -> BaseChannelLayer:
    layer = get_channel_layer()
    if layer is None:
        raise DeliveryFailed("no channel layer is configured (CHANNEL_LAYERS)")
    return layer


def _server_to_use(server_url: str | None) -> str | None:
    """The WebSocket address to send through, or None to send through the channel layer."""
    if server_url:
        return server_url
    if isinstance(_layer(), InMemoryChannelLayer) and not _serving:
        return conf.SERVER_URL
    return None


# Sending.


async def asend(recipient: str, message: object, *, server_url: str | None = None) -> SendResult:
    """Deliver ``message`` to every connection registered as ``recipient``.

    A string is delivered as-is; anything else as its JSON text. Raises
    :class:`InvalidNotification` for an unusable id or message, and
    :class:`DeliveryFailed` when it cannot be handed over (also counted and
    logged at WARNING). ``server_url`` sends through that server's WebSocket
    instead of the channel layer.
    """
    (result,) = await asend_many([(recipient, message)], server_url=server_url)
    return result


async def asend_many(notifications: Iterable[tuple[str, object]], *, server_url: str | None = None) -> list[SendResult]:
    """:func:`asend` for several notifications, in order, with one registry query.

    Every notification is checked before any is sent: an unusable one raises
    :class:`InvalidNotification` (naming its position when there are several)
    and nothing is sent.
    """
    pending = list(notifications)
    items = [_checked(recipient, message, index, len(pending)) for index, (recipient, message) in enumerate(pending)]
    if not items:
        return []
    counts = await _read_registry(presence.connection_counts, [recipient for recipient, _ in items])
    results = [SendResult(recipient, counts.get(recipient) if counts is not None else None) for recipient, _ in items]
    url = _server_to_use(server_url)
    if url is not None:
        await _send_through_server(url, items)
        return results
    for index, (recipient, text) in enumerate(items):
        try:
            await deliver(recipient, text)
        except DeliveryFailed as exc:
            raise DeliveryFailed(str(exc), sent=results[:index]) from exc
    return results


def _checked(recipient: object, message: object, index: int, total: int) -> tuple[str, str]:
    try:
        return validate_recipient(recipient), message_text(message)
    except InvalidNotification as exc:
        if total == 1:
            raise
        raise InvalidNotification(f"item {index}: {exc}") from None


async def abroadcast(message: object, *, server_url: str | None = None) -> SendResult:
    """Deliver ``message`` to every connection that registered at least one id.

    ``live_connections`` is how many such connections the registry held.
    Through the channel layer each connection receives it once. Through the
    server's WebSocket (in-memory layer, outside the server) protocol v1 has
    no broadcast, so it is sent to each id the registry lists in turn, and a
    connection registered under several ids receives it once per id.
    """
    text = message_text(message)
    live = await _read_registry(presence.registered_connection_count)
    url = _server_to_use(server_url)
    if url is not None:
        recipients = await _read_registry(presence.registered_ids)
        if recipients is None:
            raise DeliveryFailed("cannot broadcast through the server's WebSocket: the registry of ids is unreadable")
        await _send_through_server(url, [(recipient, text) for recipient in recipients])
        return SendResult(None, live)
    await _group_send(broadcast_group(), {"type": EVENT_TYPE, "text": text}, None)
    return SendResult(None, live)


def send(recipient: str, message: object, *, server_url: str | None = None) -> SendResult:
    """Synchronous :func:`asend`, for views, commands, tasks and the shell."""
    return async_to_sync(asend)(recipient, message, server_url=server_url)


def send_many(notifications: Iterable[tuple[str, object]], *, server_url: str | None = None) -> list[SendResult]:
    """Synchronous :func:`asend_many`."""
    return async_to_sync(asend_many)(list(notifications), server_url=server_url)


def broadcast(message: object, *, server_url: str | None = None) -> SendResult:
    """Synchronous :func:`abroadcast`."""
    return async_to_sync(abroadcast)(message, server_url=server_url)


async def deliver(recipient: str, text: str) -> None:
    """Hand a notification already validated by :mod:`notifications.protocol` to the layer."""
    # The recipient travels along so that a layer that cannot queue the
    # notification for a connection can say for whom it was.
    await _group_send(group_name(recipient), {"type": EVENT_TYPE, "text": text, "recipient": recipient}, recipient)


async def _group_send(group: str, event: dict[str, Any], recipient: str | None) -> None:
    """``group_send``, counted; a refusal is counted, logged with ``recipient`` (None: everyone) and raised."""
    layer = _layer()
    try:
        await layer.group_send(group, event)
    except Exception as exc:
        # describe() only here: it costs, and this is the path of every relayed message.
        _refused(describe(recipient) if recipient is not None else "every connection", exc)
        raise DeliveryFailed(f"the channel layer refused the notification: {exc}") from exc
    metrics.counters[metrics.RELAYED] += 1


def _refused(target: str, exc: Exception) -> None:
    """Count and log a notification the channel layer refused (nothing vanishes silently)."""
    metrics.counters[metrics.UNDELIVERABLE] += 1
    logger.warning("Undeliverable notification for %s: %s: %s", target, type(exc).__name__, exc)


async def asend_to_connections(channel_names: Iterable[str], message: object) -> int:
    """Deliver ``message`` to particular connections, whatever ids they registered.

    ``channel_names`` come from the registry (:class:`~notifications.models.Connection`).
    Returns how many of them the channel layer accepted; each refusal is
    counted and logged at WARNING. Raises :class:`InvalidNotification` for an
    unusable message.
    """
    text = message_text(message)
    layer = _layer()
    reached = 0
    for channel_name in channel_names:
        try:
            await layer.send(channel_name, {"type": EVENT_TYPE, "text": text})
        except Exception as exc:
            _refused(f"connection {channel_name}", exc)
            continue
        metrics.counters[metrics.RELAYED] += 1
        reached += 1
    return reached


def send_to_connections(channel_names: Iterable[str], message: object) -> int:
    """Synchronous :func:`asend_to_connections`, for the admin action and other sync code."""
    return async_to_sync(asend_to_connections)(list(channel_names), message)


# The registry's counts: a failure to read them never stops a notification.


async def _read_registry(query: Any, *args: Any) -> Any:
    if not conf.REGISTRY_ENABLED:
        return None
    try:
        return await database_sync_to_async(query)(*args)
    except DatabaseError as exc:
        logger.warning("Cannot read live connections from the registry (sending anyway): %s", exc)
        return None


# Through the running server's WebSocket, as a protocol v1 client.


async def _send_through_server(url: str, items: list[tuple[str, str]]) -> None:
    """Hand notifications to the server at ``url``; a failure is counted and logged, then raised."""
    try:
        await _hand_to_server(url, items)
    except DeliveryFailed as exc:
        metrics.counters[metrics.UNDELIVERABLE] += len(items)
        logger.warning("Undeliverable: %d notification(s) not handed to the server: %s", len(items), exc)
        raise


async def _hand_to_server(url: str, items: list[tuple[str, str]]) -> None:
    """Hand notifications to the server at ``url`` as relay frames over one WebSocket connection.

    Handed over means: the server greeted as a Notification Center does, took
    every frame, and answered the close normally (1000). A frame over its size
    limit, say, makes it drop the connection instead, which raises here.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException

    if any(text == REGISTER_MESSAGE for _, text in items):
        raise InvalidNotification(
            f"the text {REGISTER_MESSAGE!r} cannot go through the server's WebSocket (protocol v1 reads it as "
            "a registration); set REDIS_URL to send it through the channel layer"
        )
    try:
        async with connect(url, open_timeout=SERVER_TIMEOUT, close_timeout=SERVER_TIMEOUT) as ws:
            async with asyncio.timeout(SERVER_TIMEOUT + len(items) / 1000):
                greeting = await ws.recv()
                if greeting != GREETING:
                    raise DeliveryFailed(f"the server at {url} is not a Notification Center (it did not greet as one)")
                for recipient, text in items:
                    await ws.send(json.dumps({"recipient_uuid": recipient, "message": text}, ensure_ascii=False))
    except (InvalidURI, ValueError) as exc:  # ValueError: a port out of range, a broken IPv6 address
        raise DeliveryFailed(f"{url!r} is not a WebSocket address (ws://host:port/)") from exc
    except ConnectionClosed as exc:
        raise _dropped(url, exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else "") from exc
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise DeliveryFailed(
            f"cannot reach the server at {url} ({str(exc) or type(exc).__name__}): is it running? "
            "NOTIFY_SERVER_URL says where it listens; with REDIS_URL set, notifications go through Redis instead"
        ) from exc
    # daphne queues a connection's frames for its consumer in order, then the
    # close: the consumer relays every frame it took before it handles the disconnect.
    if ws.close_code != 1000 or ws.protocol.close_rcvd is None:
        raise _dropped(url, ws.close_code, ws.close_reason or "")


def _dropped(url: str, code: int | None, reason: str) -> DeliveryFailed:
    why = f"close code {code}" + (f", {reason}" if reason else "") if code else "no close code"
    return DeliveryFailed(
        f"the server at {url} dropped the connection ({why}) before confirming it took every notification: "
        "a message over its size limit (1 MiB by default)?"
    )
