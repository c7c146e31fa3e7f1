"""The one sending API: every entry point delivers notifications through here.

The WebSocket relay, the ``notify`` command, the HTTP push endpoint, the
admin action and Django views all call these functions, so that they
validate, deliver and account for failures the same way::

    from notifications.sending import send  # async code: asend

    def finish_task(request, task):
        ...
        result = send(task.owner_uuid, {"status": 200, "url": task.url})
        result.live_connections  # 0: nobody is listening right now

Errors are :class:`notifications.exceptions.InvalidNotification` (an unusable
id or message) and :class:`notifications.exceptions.DeliveryFailed`.

Every function takes ``on_commit=True``: inside a transaction
(``transaction.atomic``, ``ATOMIC_REQUESTS``), the notification is handed over
only when the transaction commits, never on a rollback, so that a page that
reacts to it reads committed data; it then returns None (what became of it is
logged, and a failure counted, as always). Outside a transaction it is sent
at once and the result returned, as without it. The id and message are
checked at the call either way::

    with transaction.atomic():
        task.status = "done"
        task.save()
        send(task.owner_uuid, "done", on_commit=True)

Where a notification goes is ``NOTIFICATIONS_SEND_THROUGH``: through the
channel layer (:mod:`.delivery`), or through the running server's WebSocket
(:mod:`.through_server`). ``"auto"``, the default, takes the channel layer
when it reaches every server process (Redis) or when this process is a
server (it called :func:`notifications.server.start_server`), and the
server's WebSocket when the layer is the in-memory one of a process that
serves nobody (a shell, a cron script, a worker).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar, cast, overload

from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer
from django.db import DatabaseError, transaction

from notifications import presence, server
from notifications.conf import conf
from notifications.exceptions import DeliveryFailed, InvalidNotification
from notifications.protocol import message_text, validate_recipient
from notifications.sending.delivery import channel_layer, deliver, deliver_to_channel, deliver_to_everyone
from notifications.sending.through_server import send_through_server

__all__ = [
    "SendResult",
    "abroadcast",
    "asend",
    "asend_many",
    "asend_to_connections",
    "broadcast",
    "send",
    "send_many",
    "send_to_connections",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a send did: whether the notification went live or waits, and who was listening.

    ``outcome`` is decided by the channel layer as it delivers:

    - ``"live"``: at least one server process that holds a registration of the id took it;
    - ``"pending"``: nobody is registered: it is kept until ``pending_until``
      for the id's next registration, which receives it (old clients too);
    - ``"dropped"``: nobody is registered and pending notifications are off
      (``NOTIFICATIONS_PENDING = False``): it reached nobody;
    - ``None``: unknown (a broadcast, or a channel layer that keeps nothing).

    ``position`` is its place in the id's history (None when nothing is kept).
    ``live_connections`` is read from the registry when the notification is
    sent. The registry may lag by up to a second (a connection that has just
    registered may not count yet, one that has just left may still count),
    and it is ``None`` when the registry is switched off or unreadable.
    """

    recipient: str | None  # None for a broadcast
    live_connections: int | None
    outcome: str | None = None
    position: str | None = None
    pending_until: datetime | None = None


def _server_to_use(server_url: str | None) -> str | None:
    """The WebSocket address to send through, or None to send through the channel layer."""
    if server_url:
        return server_url
    through = conf.SEND_THROUGH
    if through == "server":
        return conf.SERVER_URL
    if through == "layer":
        return None
    if isinstance(channel_layer(), InMemoryChannelLayer) and not server.is_serving():
        return conf.SERVER_URL
    return None


@overload
async def asend(
    recipient: str, message: object, *, server_url: str | None = ..., on_commit: Literal[False] = ...
) -> SendResult: ...
@overload
async def asend(
    recipient: str, message: object, *, server_url: str | None = ..., on_commit: bool
) -> SendResult | None: ...
async def asend(
    recipient: str, message: object, *, server_url: str | None = None, on_commit: bool = False
) -> SendResult | None:
    """Deliver ``message`` to every connection registered as ``recipient``.

    A string is delivered as-is; anything else as its JSON text. Raises
    :class:`InvalidNotification` for an unusable id or message, and
    :class:`DeliveryFailed` when it cannot be handed over (also counted and
    logged at WARNING). ``server_url`` sends through that server's WebSocket
    instead of the channel layer. ``on_commit``: see the module's docstring.
    """
    if on_commit:
        _checked(recipient, message, 0, 1)
        if await _put_off(lambda: send(recipient, message, server_url=server_url)):
            return None
    (result,) = await asend_many([(recipient, message)], server_url=server_url)
    return result


@overload
async def asend_many(
    notifications: Iterable[tuple[str, object]], *, server_url: str | None = ..., on_commit: Literal[False] = ...
) -> list[SendResult]: ...
@overload
async def asend_many(
    notifications: Iterable[tuple[str, object]], *, server_url: str | None = ..., on_commit: bool
) -> list[SendResult] | None: ...
async def asend_many(
    notifications: Iterable[tuple[str, object]], *, server_url: str | None = None, on_commit: bool = False
) -> list[SendResult] | None:
    """:func:`asend` for several notifications, in order, with one registry query.

    Every notification is checked before any is sent: an unusable one raises
    :class:`InvalidNotification` (naming its position when there are several)
    and nothing is sent.
    """
    pending = list(notifications)
    items = [_checked(recipient, message, index, len(pending)) for index, (recipient, message) in enumerate(pending)]
    if not items:
        return []
    if on_commit and await _put_off(lambda: send_many(items, server_url=server_url)):
        return None
    counts = await _read_registry(presence.connection_counts, [recipient for recipient, _ in items])
    results = [SendResult(recipient, counts.get(recipient) if counts is not None else None) for recipient, _ in items]
    url = _server_to_use(server_url)
    if url is not None:
        outcomes = await send_through_server(url, items)
        return [_with(result, outcome, None) for result, outcome in zip(results, outcomes, strict=True)]
    for index, (recipient, text) in enumerate(items):
        try:
            kept = await deliver(recipient, text)
        except DeliveryFailed as exc:
            raise DeliveryFailed(str(exc), sent=results[:index]) from exc
        if kept is not None:
            results[index] = _with(results[index], kept.outcome, kept.position)
    return results


def _with(result: SendResult, outcome: str | None, position: str | None) -> SendResult:
    until = datetime.now(tz=UTC) + timedelta(seconds=conf.HISTORY_TTL) if outcome == "pending" else None
    return replace(result, outcome=outcome, position=position, pending_until=until)


def _checked(recipient: object, message: object, index: int, total: int) -> tuple[str, str]:
    try:
        return validate_recipient(recipient), message_text(message)
    except InvalidNotification as exc:
        if total == 1:
            raise
        raise InvalidNotification(f"item {index}: {exc}") from None


@overload
async def abroadcast(
    message: object, *, server_url: str | None = ..., on_commit: Literal[False] = ...
) -> SendResult: ...
@overload
async def abroadcast(message: object, *, server_url: str | None = ..., on_commit: bool) -> SendResult | None: ...
async def abroadcast(message: object, *, server_url: str | None = None, on_commit: bool = False) -> SendResult | None:
    """Deliver ``message`` to every connection that registered at least one id.

    ``live_connections`` is how many such connections the registry held.
    Through the channel layer each connection receives it once. Through the
    server's WebSocket protocol v1 has no broadcast, so it is sent to each id
    the registry lists in turn, and a connection registered under several ids
    receives it once per id.
    """
    text = message_text(message)
    if on_commit and await _put_off(lambda: broadcast(text, server_url=server_url)):
        return None
    live = await _read_registry(presence.registered_connection_count)
    url = _server_to_use(server_url)
    if url is not None:
        recipients = await _read_registry(presence.registered_ids)
        if recipients is None:
            raise DeliveryFailed("cannot broadcast through the server's WebSocket: the registry of ids is unreadable")
        await send_through_server(url, [(recipient, text) for recipient in recipients])
        return SendResult(None, live)
    await deliver_to_everyone(text)
    return SendResult(None, live)


@overload
async def asend_to_connections(
    channel_names: Iterable[str], message: object, *, on_commit: Literal[False] = ...
) -> int: ...
@overload
async def asend_to_connections(channel_names: Iterable[str], message: object, *, on_commit: bool) -> int | None: ...
async def asend_to_connections(channel_names: Iterable[str], message: object, *, on_commit: bool = False) -> int | None:
    """Deliver ``message`` to particular connections, whatever ids they registered.

    ``channel_names`` come from the registry (:class:`~notifications.models.Connection`).
    Returns how many of them the channel layer accepted; each refusal is
    counted and logged at WARNING. Raises :class:`InvalidNotification` for an
    unusable message.
    """
    text = message_text(message)
    channel_names = list(channel_names)
    if on_commit and await _put_off(lambda: send_to_connections(channel_names, text)):
        return None
    channel_layer()  # no layer at all raises DeliveryFailed, before any is counted
    reached = 0
    for channel_name in channel_names:
        reached += await deliver_to_channel(channel_name, text)
    return reached


@overload
def send(
    recipient: str, message: object, *, server_url: str | None = ..., on_commit: Literal[False] = ...
) -> SendResult: ...
@overload
def send(recipient: str, message: object, *, server_url: str | None = ..., on_commit: bool) -> SendResult | None: ...
def send(
    recipient: str, message: object, *, server_url: str | None = None, on_commit: bool = False
) -> SendResult | None:
    """Synchronous :func:`asend`, for views, commands, tasks and the shell."""
    return _sync(asend, recipient, message, server_url=server_url, on_commit=on_commit)


@overload
def send_many(
    notifications: Iterable[tuple[str, object]], *, server_url: str | None = ..., on_commit: Literal[False] = ...
) -> list[SendResult]: ...
@overload
def send_many(
    notifications: Iterable[tuple[str, object]], *, server_url: str | None = ..., on_commit: bool
) -> list[SendResult] | None: ...
def send_many(
    notifications: Iterable[tuple[str, object]], *, server_url: str | None = None, on_commit: bool = False
) -> list[SendResult] | None:
    """Synchronous :func:`asend_many`."""
    return _sync(asend_many, list(notifications), server_url=server_url, on_commit=on_commit)


@overload
def broadcast(message: object, *, server_url: str | None = ..., on_commit: Literal[False] = ...) -> SendResult: ...
@overload
def broadcast(message: object, *, server_url: str | None = ..., on_commit: bool) -> SendResult | None: ...
def broadcast(message: object, *, server_url: str | None = None, on_commit: bool = False) -> SendResult | None:
    """Synchronous :func:`abroadcast`."""
    return _sync(abroadcast, message, server_url=server_url, on_commit=on_commit)


@overload
def send_to_connections(channel_names: Iterable[str], message: object, *, on_commit: Literal[False] = ...) -> int: ...
@overload
def send_to_connections(channel_names: Iterable[str], message: object, *, on_commit: bool) -> int | None: ...
def send_to_connections(channel_names: Iterable[str], message: object, *, on_commit: bool = False) -> int | None:
    """Synchronous :func:`asend_to_connections`, for the admin action and other sync code."""
    return _sync(asend_to_connections, list(channel_names), message, on_commit=on_commit)


# Sending on commit.


async def _put_off(hand_over: Callable[[], object]) -> bool:
    """Whether ``hand_over`` was put off until the current transaction commits (False: not in one, send now).

    The check and ``transaction.on_commit`` run on the thread of the caller's
    database connection (asgiref's thread-sensitive ``sync_to_async``
    returns to the thread that called ``async_to_sync``), so a sync view's
    ``atomic`` block is the one seen here.
    """
    return await sync_to_async(_on_commit_if_in_transaction)(hand_over)


def _on_commit_if_in_transaction(hand_over: Callable[[], object]) -> bool:
    if not transaction.get_connection().in_atomic_block:
        return False
    transaction.on_commit(lambda: _hand_over_committed(hand_over), robust=True)
    return True


def _hand_over_committed(hand_over: Callable[[], object]) -> None:
    # A failure is counted and logged where it failed; the transaction is committed and its caller gone.
    with contextlib.suppress(DeliveryFailed):
        hand_over()


def _sync(function: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    return async_to_sync(function)(*args, **kwargs)


# The registry's counts: a failure to read them never stops a notification.


async def _read_registry(query: Callable[..., T], *args: Any) -> T | None:
    if not conf.REGISTRY_ENABLED:
        return None
    try:
        return cast(T, await database_sync_to_async(query)(*args))
    except DatabaseError as exc:
        logger.warning("Cannot read live connections from the registry (sending anyway): %s", exc)
        return None
