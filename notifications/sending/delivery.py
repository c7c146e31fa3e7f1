"""Channel-layer delivery: hand a checked notification to a group or a channel, counted.

The sending API and the consumer (a client's relay frame) both deliver
through here, so every notification the layer refuses is counted and logged
the same way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from channels.layers import BaseChannelLayer, get_channel_layer

from notifications import metrics
from notifications.exceptions import DeliveryFailed
from notifications.layers import Kept, KeptNotification, Replay
from notifications.protocol import broadcast_group, describe, group_name

logger = logging.getLogger(__name__)

# The event type of a notification: the consumer's notify_message() handles it.
EVENT_TYPE = "notify.message"


def channel_layer() -> BaseChannelLayer:
    """The default channel layer, or :class:`DeliveryFailed` when none is configured."""
    layer = get_channel_layer()
    if layer is None:
        raise DeliveryFailed("no channel layer is configured (CHANNEL_LAYERS)")
    return layer


async def deliver_soon(recipient: str, text: str) -> asyncio.Future[Kept] | None:
    """Hand a checked notification to the recipient's group without waiting for the layer's answer.

    For a sender that needs no answer (a v1 client): its notifications reach
    each id in the order handed over, and their outcome is counted (and a
    refusal logged, as by :func:`deliver`) when it comes. Returns the
    future of that outcome, once the recipient has room (as :func:`deliver`);
    None with a layer that cannot (call :func:`deliver` then).
    """
    layer = channel_layer()
    start = getattr(layer, "send_kept_soon", None)
    if start is None:
        return None
    group = group_name(recipient)
    try:
        started: asyncio.Future[Kept] = start(group, _event(recipient, text))
    except Exception as exc:  # refused at once (Redis known to be down)
        started = asyncio.get_running_loop().create_future()
        started.set_exception(exc)
    started.add_done_callback(functools.partial(_counted, recipient))
    await _room(layer, group)
    return started


def _counted(recipient: str, started: asyncio.Future[Kept]) -> None:
    if started.cancelled():  # the consumer awaits it shielded: only a caller of its own could cancel it
        return
    if (exc := started.exception()) is not None:
        refused(describe(recipient), exc)
    else:
        _count(started.result())


async def deliver(recipient: str, text: str) -> Kept | None:
    """Hand a notification already validated by :mod:`notifications.protocol` to the recipient's group.

    The app's layers keep it and say whether it went live or waits as
    pending (:class:`~notifications.layers.Kept`); another layer says
    nothing (None).
    """
    return await _group_send(group_name(recipient), _event(recipient, text), recipient)


def _event(recipient: str, text: str) -> dict[str, Any]:
    # The recipient travels along so that a layer that cannot queue the
    # notification for a connection can say for whom it was.
    # "at": when it was sent, for the delivery-latency histogram (notifications.metrics).
    return {"type": EVENT_TYPE, "text": text, "recipient": recipient, "at": time.time()}


def drain(channel_name: str) -> list[dict[str, Any]]:
    """What waits in a connection's channel, taken out (the connection is leaving); [] for other layers."""
    take = getattr(channel_layer(), "drain", None)
    return [] if take is None else list(take(channel_name))


async def keep_pending(recipient: str, event: dict[str, Any]) -> bool:
    """A kept notification its connection left before receiving: to a registrant that came, or pending again."""
    keep = getattr(channel_layer(), "keep_pending", None)
    return False if keep is None else bool(await keep(group_name(recipient), event))


async def take_pending(recipient: str, *, peek: bool = False) -> list[KeptNotification] | None:
    """What waits for ``recipient``'s first registration, oldest first, once (call after joining its group).

    ``peek`` leaves it pending. None: the layer keeps nothing.
    """
    take = getattr(channel_layer(), "take_pending", None)
    return None if take is None else list(await take(group_name(recipient), peek=peek))


async def newest(recipient: str) -> str | None:
    """The newest position ``recipient`` has had (None: none, or a layer that keeps nothing)."""
    read = getattr(channel_layer(), "newest", None)
    return None if read is None else await read(group_name(recipient))


async def resume(recipient: str, since: str | None, start: str | None, *, take: bool = True) -> Replay | None:
    """What a registration that just joined ``recipient``'s group receives (see ``KeepingLayer.resume``).

    None: the layer keeps nothing.
    """
    replay = getattr(channel_layer(), "resume", None)
    return None if replay is None else await replay(group_name(recipient), since, start, take=take)


async def deliver_to_everyone(text: str) -> None:
    """Hand a notification to the broadcast group: every registered connection, once."""
    await _group_send(broadcast_group(), {"type": EVENT_TYPE, "text": text, "at": time.time()}, None)


async def deliver_to_channel(channel_name: str, text: str) -> bool:
    """Hand a notification to one connection's channel; False (counted and logged) when the layer refuses."""
    try:
        await channel_layer().send(channel_name, {"type": EVENT_TYPE, "text": text})
    except Exception as exc:
        refused(f"connection {channel_name}", exc)
        return False
    metrics.counters[metrics.RELAYED] += 1
    return True


async def _group_send(group: str, event: dict[str, Any], recipient: str | None) -> Kept | None:
    """``group_send``, counted; a refusal is counted, logged with ``recipient`` (None: everyone) and raised.

    A notification to a recipient goes through the layer's ``send_kept`` where
    it has one (the app's layers keep it); a broadcast is never kept.
    """
    layer = channel_layer()
    send_kept = getattr(layer, "send_kept", None) if recipient is not None else None
    try:
        if send_kept is None:
            await layer.group_send(group, event)
            kept = None
        else:
            kept = await send_kept(group, event)
    except Exception as exc:
        # describe() only here: it costs, and this is the path of every relayed message.
        refused(describe(recipient) if recipient is not None else "every connection", exc)
        raise DeliveryFailed(f"the channel layer refused the notification: {exc}") from exc
    _count(kept)
    await _room(layer, group)
    return kept


def _count(kept: Kept | None) -> None:
    metrics.counters[metrics.RELAYED] += 1
    if kept is not None and kept.pending:
        metrics.counters[metrics.PENDING] += 1


async def _room(layer: BaseChannelLayer, group: str) -> None:
    room = getattr(layer, "room", None)
    if room is not None:  # a recipient in this process falls behind: the sender waits a little
        await room(group)


def refused(target: str, exc: BaseException) -> None:
    """Count and log a notification the channel layer refused (nothing vanishes silently)."""
    metrics.counters[metrics.LAYER_SEND_ERRORS] += 1
    metrics.undeliverable("layer_refused", target)
    logger.warning("Undeliverable notification for %s: %s: %s", target, type(exc).__name__, exc)
