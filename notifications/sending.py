"""The one sending API: every entry point delivers notifications through here.

The WebSocket relay, the ``notify`` command, the admin action and Django
views all call :func:`asend_notification` (or its sync twin), so that they
validate, deliver and account for failures the same way.

    from notifications.sending import send_notification

    def finish_task(request, task):
        ...
        send_notification(task.owner_uuid, "image2video")
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from asgiref.sync import async_to_sync
from channels.layers import BaseChannelLayer, get_channel_layer

from notifications import metrics
from notifications.presence import aconnection_count, ais_online, connection_count, is_online
from notifications.protocol import describe, group_name, message_text, validate_recipient

__all__ = [
    "DeliveryFailed",
    "aconnection_count",
    "ais_online",
    "asend_notification",
    "asend_to_connections",
    "connection_count",
    "is_online",
    "send_notification",
    "send_to_connections",
]

logger = logging.getLogger(__name__)

EVENT_TYPE = "notify.message"


class DeliveryFailed(RuntimeError):
    """The channel layer refused the notification (for example, Redis is down)."""


async def asend_notification(recipient: str, message: object) -> None:
    """Deliver ``message`` to every connection registered as ``recipient``.

    A string is delivered as-is; anything else as its JSON text. Raises
    :class:`~notifications.protocol.InvalidNotification` for an unusable id
    or message, and :class:`DeliveryFailed` when the channel layer cannot
    take it (also counted and logged at WARNING).
    """
    validate_recipient(recipient)
    await deliver(recipient, message_text(message))


def _layer() -> BaseChannelLayer:
    layer = get_channel_layer()
    if layer is None:
        raise DeliveryFailed("no channel layer is configured (CHANNEL_LAYERS)")
    return layer


async def deliver(recipient: str, text: str) -> None:
    """Hand a notification already validated by :mod:`notifications.protocol` to the layer."""
    layer = _layer()
    try:
        # The recipient travels along so that a layer that cannot queue the
        # notification for a connection can say for whom it was.
        await layer.group_send(group_name(recipient), {"type": EVENT_TYPE, "text": text, "recipient": recipient})
    except Exception as exc:
        _refused(describe(recipient), exc)
        raise DeliveryFailed(f"the channel layer refused the notification: {exc}") from exc
    metrics.counters[metrics.RELAYED] += 1


def _refused(target: str, exc: Exception) -> None:
    """Count and log a notification the channel layer refused (nothing vanishes silently)."""
    metrics.counters[metrics.UNDELIVERABLE] += 1
    logger.warning("Undeliverable notification for %s: %s: %s", target, type(exc).__name__, exc)


def send_notification(recipient: str, message: object) -> None:
    """Synchronous :func:`asend_notification`, for views, commands and admin actions."""
    async_to_sync(asend_notification)(recipient, message)


async def asend_to_connections(channel_names: Iterable[str], message: object) -> int:
    """Deliver ``message`` to particular connections, whatever ids they registered.

    ``channel_names`` come from the registry (:class:`~notifications.models.Connection`).
    Returns how many of them the channel layer accepted; each refusal is
    counted and logged at WARNING. Raises
    :class:`~notifications.protocol.InvalidNotification` for an unusable message.
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
