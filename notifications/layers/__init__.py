"""The channel layers the app ships, one per module, and what they share.

- :mod:`.memory`: ``InMemoryLayer``, the embedded default for one process.
- :mod:`.redis`: ``RedisPubSubLayer``, several processes and hosts on Redis.

Why these and not the library defaults:

- Clients in the field never reconnect, so a registration must last as long
  as its connection. ``InMemoryChannelLayer`` forgets group members after
  ``group_expiry`` (a day by default); here memberships never expire, and
  the consumer itself leaves its groups on disconnect.
- Nothing is dropped silently. A message that does not fit a channel's queue
  is counted (:data:`notifications.metrics.UNDELIVERABLE`) and logged at
  WARNING with its recipient; a publish that Redis refuses raises, and the
  sending API counts it.
- Per-channel queues are bounded (``capacity``, 1,000 by default) in both
  layers; the library's pub/sub queue is unbounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from notifications import metrics
from notifications.protocol import describe

logger = logging.getLogger(__name__)

DEFAULT_CAPACITY = 1000

# How long a sender waits, at most, for room in a recipient's crowded queue (see ChannelQueue).
ROOM_WAIT = 0.25


class ChannelQueue:
    """A connection's queue that a sender in this process can wait on while it is crowded.

    When a sender and its recipients share a process, the sender's connection
    can relay faster than a recipient's can write: without a pause a burst of
    thousands over one connection overflows the recipient's queue (the
    overflow is caught up from the history only as far as it keeps), or, on
    Redis, piles up unread in the subscription. So a sender that finds a
    recipient's queue in its process over half full waits until it is
    down to a quarter: its own frames wait meanwhile, its socket stops being
    read (:class:`notifications.backpressure.ReadWindow`), and TCP slows it
    down. A queue that is not down to a quarter within ``ROOM_WAIT`` (its
    consumer waits for its client, say) is marked stuck and left alone until
    it gets there: a stuck recipient slows its senders once, not per message.

    Not an ``asyncio.Queue``: one consumer reads a channel, so one deque and
    one waiting future do, where ``asyncio.Queue`` keeps three deques and an
    ``Event`` (about 3 KB per connection, measured with tracemalloc).
    """

    __slots__ = ("maxsize", "stuck", "_items", "_reader", "_high", "_low", "_room")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        # Made by the first item and dropped once empty: an idle connection's queue holds no deque (600 bytes).
        self._items: deque[Any] | tuple[()] = ()
        self._reader: asyncio.Future[None] | None = None  # what get() waits on while the queue is empty
        self._high = max(1, maxsize // 2)
        self._low = maxsize // 4
        self._room: asyncio.Future[None] | None = None
        self.stuck = False

    def empty(self) -> bool:
        return not self._items

    def crowded(self) -> bool:
        return len(self._items) >= self._high and not self.stuck

    def wake(self, reader: asyncio.Future[None]) -> None:
        """Complete ``reader`` as the next item is queued (a consumer waiting on more than this queue)."""
        self._reader = reader

    def put_nowait(self, item: Any) -> None:
        """Queue ``item``; ``asyncio.QueueFull`` when ``maxsize`` items wait already."""
        items = self._items
        if 0 < self.maxsize <= len(items):
            raise asyncio.QueueFull
        if not isinstance(items, deque):
            items = self._items = deque()
        items.append(item)
        reader = self._reader
        if reader is not None:
            self._reader = None
            if not reader.done():
                reader.set_result(None)

    def get_nowait(self) -> Any:
        """The oldest item; ``asyncio.QueueEmpty`` when there is none."""
        items = self._items
        if not isinstance(items, deque) or not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = ()
        if len(items) <= self._low:
            self.stuck = False
            if self._room is not None:
                if not self._room.done():
                    self._room.set_result(None)
                self._room = None
        return item

    async def get(self) -> Any:
        while not self._items:
            if self._reader is None or self._reader.done():  # done: cancelled with a reader that was cancelled
                self._reader = asyncio.get_running_loop().create_future()
            await self._reader  # every reader waiting wakes; the first to run takes the item
        return self.get_nowait()

    async def room(self) -> None:
        """Wait until the queue is down to a quarter, or ``ROOM_WAIT`` passed (then it is stuck)."""
        if self._room is None:
            self._room = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._room), ROOM_WAIT)
        except TimeoutError:
            self.stuck = True


# The event a layer queues for a consumer when what was sent to some of its groups
# may not have reached it (``{"type": GAP_EVENT_TYPE, "groups": [...]}``): it catches up.
GAP_EVENT_TYPE = "notify.gap"


@dataclass(frozen=True, slots=True)
class Kept:
    """What became of a notification handed to a layer that keeps notifications."""

    live: bool  # at least one server process that holds a registration of the id took it
    pending: bool  # nobody took it: it waits for the id's next registration
    position: str | None  # its place in the id's history; None when nothing is kept

    @property
    def outcome(self) -> str:
        """``live``, ``pending``, or ``dropped`` (nobody received it, and pending is off)."""
        if self.live:
            return "live"
        return "pending" if self.pending else "dropped"


@dataclass(frozen=True, slots=True)
class KeptNotification:
    """A notification taken from an id's history or pending ones."""

    position: str
    text: str


@dataclass(frozen=True, slots=True)
class Replay:
    """What a registration receives from an id's kept notifications (:meth:`KeepingLayer.resume`)."""

    recovered: bool  # ``since`` was given and every notification after it is in ``notifications``
    newest: str | None  # the newest position the id has had, even if no longer kept; None: none known
    notifications: list[KeptNotification]  # oldest first, none twice


# How long an id's newest position and what its history lost are remembered after its
# last notification (seconds): a client idle for that long with nothing sent meanwhile
# still resumes with ``recovered: true``. A few bytes per id.
META_TTL = 24 * 3600.0

# The longest ``since`` a client may send; anything longer is not a position.
MAX_POSITION_LENGTH = 200


def position_order(position: object) -> tuple[str, int, int] | None:
    """``(epoch, major, n)`` of a position made by the app's layers (``<epoch>:<major>-<n>``), else None.

    Positions of one epoch sort by ``(major, n)``; positions of different
    epochs do not compare at all (the history they belong to is gone). ``n``
    counts the id's notifications: its n-th has ``n`` (0: none yet).
    """
    if not isinstance(position, str) or len(position) > MAX_POSITION_LENGTH:
        return None
    epoch, colon, rest = position.partition(":")
    major, dash, minor = rest.partition("-")
    if not (colon and epoch and major.isascii() and major.isdigit()):
        return None
    if dash and not (minor.isascii() and minor.isdigit()):
        return None
    return epoch, int(major), int(minor or 0)


def id_sequence(position: str | None) -> int | None:
    """How many notifications the position's id had had up to it: the ``n`` of ``<epoch>:<major>-<n>``."""
    order = position_order(position)
    return order[2] if order is not None else None


def sent_between(cursor: str | None, newest: str | None) -> int | None:
    """How many notifications of an id were sent after ``cursor`` up to ``newest``; None if unknown.

    Known when both are positions of one epoch whose ``n`` counts on from the
    cursor's (an id forgotten after :data:`META_TTL`, or a Redis that lost
    writes, counts from an earlier number again).
    """
    mine, theirs = position_order(cursor), position_order(newest)
    if mine is None or theirs is None or mine[0] != theirs[0] or theirs[2] < mine[2]:
        return None
    return theirs[2] - mine[2]


def is_after(position: str, other: str | None) -> bool:
    """Whether ``position`` comes after ``other`` in its id's history (True after None, or in another epoch)."""
    if other is None:
        return True
    mine, theirs = position_order(position), position_order(other)
    if mine is None or theirs is None or mine[0] != theirs[0]:
        return True
    return mine[1:] > theirs[1:]


def sent_later(position: str, other: str | None) -> bool:
    """Whether ``position`` was sent after ``other``, by send time and count, across epochs too.

    After a failover or a restart the epoch changes, but an id's history goes on
    from what the server kept: its entries sort after what came before.
    """
    mine, theirs = position_order(position), position_order(other)
    if mine is None or theirs is None:
        return True
    return mine[1:] > theirs[1:]


class KeepingLayer(Protocol):
    """The app's layers keep notifications: they decide "live" or "pending" as they deliver."""

    async def send_kept(self, group: str, message: dict[str, Any]) -> Kept:
        """``group_send`` that keeps ``message`` in the group's history, and as pending if nobody took it."""

    def send_kept_soon(self, group: str, message: dict[str, Any]) -> asyncio.Future[Kept]:
        """:meth:`send_kept` without waiting for its answer: the future of it.

        Messages handed over one after another reach each group in that order,
        however long their answers take.
        """

    async def take_pending(self, group: str, *, peek: bool = False) -> list[KeptNotification]:
        """The group's pending notifications, oldest first, once; call after ``group_add`` returned.

        ``peek`` leaves them pending (for an operator's look).
        """

    def drain(self, channel: str) -> list[dict[str, Any]]:
        """The events still queued for ``channel``, taken out (its consumer is leaving)."""

    async def keep_pending(self, group: str, message: dict[str, Any]) -> bool:
        """A kept ``message`` whose connection left before it was sent: pending again (True), or not kept."""

    async def newest(self, group: str) -> str | None:
        """The newest position the group's id has had; read before a registration joins.

        For an id with nothing remembered, a position that marks its beginning
        (and is remembered from then on). None: the layer keeps nothing.
        """

    async def resume(self, group: str, since: str | None, start: str | None, *, take: bool = True) -> Replay:
        """What a registration that joined ``group`` receives, taking the group's pending notifications (``take``).

        If every notification after ``since`` is still kept (same epoch, nothing
        after it dropped, not newer than the newest), those, ``recovered``.
        Otherwise every kept one after ``start`` (the group's newest position read
        before joining; None: all kept) and every pending one, not ``recovered``.
        """


@runtime_checkable
class Inbox(Protocol):
    """A layer whose consumer takes its channel's messages as they come, without awaiting ``receive()``.

    :class:`notifications.dispatch.SerialDispatchMixin` waits on the client
    and the channel in one task this way: ``take`` what is there, else have
    the layer complete a future (``wake_on_message``) as something arrives.
    """

    def loop_inbox(self) -> Inbox:
        """What serves these calls in the running event loop, for as long as it runs.

        The layer itself; or, for a layer that keeps a part per event loop, its
        part for this loop. A consumer, which takes and waits many times, asks once.
        """

    def take(self, channel: str) -> dict[str, Any] | None:
        """The channel's next message (a gap event first, if it has one), or None if none waits."""

    def wake_on_message(self, channel: str, bell: asyncio.Future[None]) -> None:
        """Complete ``bell`` as the next message (or a gap) reaches ``channel``."""

    def drain(self, channel: str) -> list[dict[str, Any]]:
        """The events still queued for ``channel``, taken out (its consumer is leaving)."""

    def release(self, channel: str) -> None:
        """The channel's consumer ended: forget it (unsubscribe it, on Redis)."""


class Gaps:
    """Which groups' notifications may have missed which channels, until each channel's consumer reads it.

    A layer marks a gap when it loses notifications for a channel (its Redis
    subscription broke, or its queue was full for a kept one); the channel's
    next ``receive()`` returns ``{"type": GAP_EVENT_TYPE, "groups": [...]}``
    before anything still queued, and the consumer catches up from the history.
    """

    def __init__(self) -> None:
        self._by_channel: dict[str, set[str]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_channel)

    def mark(self, channel: str, group: str, queue: ChannelQueue | None, wake: Any) -> None:
        """Note the gap; ``wake`` goes into an empty ``queue`` so that a consumer waiting on it reads the gap now."""
        self._by_channel.setdefault(channel, set()).add(group)
        if queue is not None and queue.empty():
            queue.put_nowait(wake)

    def take(self, channel: str) -> dict[str, Any] | None:
        """The gap event for ``channel``, once; None if it has none."""
        groups = self._by_channel.pop(channel, None)
        return {"type": GAP_EVENT_TYPE, "groups": sorted(groups)} if groups else None

    def forget(self, channel: str) -> None:
        self._by_channel.pop(channel, None)


def count_undeliverable(event: Any, where: str) -> None:
    """Count and log a notification that could not be queued for a connection."""
    metrics.counters[metrics.LAYER_FULL] += 1
    recipient = event.get("recipient") if isinstance(event, dict) else None
    whose = describe(recipient) if isinstance(recipient, str) else "an unknown recipient"
    metrics.undeliverable("queue_full", whose)
    logger.warning(
        "Undeliverable notification for %s: the queue of %s is full",
        whose,
        where,
    )
