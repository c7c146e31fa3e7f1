"""``InMemoryLayer``: the embedded default, one process and nothing to install.

Nothing expires, each channel holds at most ``capacity`` messages, and a
message that does not fit is counted. Compared with Channels'
``InMemoryChannelLayer`` (each change measured with ``python -m bench``), it
no longer scans every channel on every send and receive (it expires
nothing, so the scan found nothing, at O(connections) per message), nor
deep-copies each message for each recipient.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer

from notifications import metrics
from notifications.conf import conf
from notifications.layers import (
    DEFAULT_CAPACITY,
    ChannelQueue,
    Gaps,
    Kept,
    KeptNotification,
    Replay,
    count_undeliverable,
)
from notifications.layers.history import MemoryHistory

# Queued for a consumer that waits on an empty queue when a gap was marked for it (see Gaps).
_GAP_MARK: dict[str, Any] = {"type": "notify.gap_mark"}

# Ten years: "never" for a connection, while staying a valid timestamp offset.
NEVER_EXPIRES = 10 * 365 * 24 * 3600


class InMemoryLayer(InMemoryChannelLayer):
    """The embedded default: one process, nothing to install.

    Nothing expires (see the module docstring), each channel holds at most
    ``capacity`` messages, and a message that does not fit is counted.
    Notifications are kept in this process's memory (:mod:`.history`): the
    decision "live or pending" and a registration's taking of what is
    pending each happen in one step of the event loop, so they cannot interleave.
    """

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY, **kwargs: Any) -> None:
        kwargs.setdefault("group_expiry", NEVER_EXPIRES)
        kwargs.setdefault("expiry", NEVER_EXPIRES)
        super().__init__(capacity=capacity, **kwargs)
        self.history = MemoryHistory()
        self._gaps = Gaps()
        self._pending_ids: dict[str, str] = {}  # group -> the id whose notifications are pending (the dashboard)

    def _clean_expired(self) -> None:
        # Messages and memberships never expire here; the library's scan of
        # every channel on every send and receive would find nothing.
        return

    def _queue(self, channel: str) -> ChannelQueue:
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = ChannelQueue(self.get_capacity(channel))
        return queue  # type: ignore[no-any-return]

    async def room(self, group: str) -> None:
        """Wait while a member of ``group`` has a crowded queue (see :class:`ChannelQueue`)."""
        for channel in self.groups.get(group, ()):
            queue = self.channels.get(channel)
            if isinstance(queue, ChannelQueue) and queue.crowded():
                await queue.room()

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Queue ``message`` for ``channel``; raises ``ChannelFull`` when its queue is full."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        try:
            # A shallow copy: handlers get their own dict, the values are immutable.
            self._queue(channel).put_nowait((0, dict(message)))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def receive(self, channel: str) -> dict[str, Any]:
        self.require_valid_channel_name(channel)
        queue = self._queue(channel)
        try:
            while True:
                if self._gaps and (gap := self._gaps.take(channel)) is not None:
                    return gap
                _, message = await queue.get()
                if message is not _GAP_MARK:
                    return message  # type: ignore[no-any-return]
        except (asyncio.CancelledError, TimeoutError, GeneratorExit):
            self._gaps.forget(channel)  # the consumer ends
            raise
        finally:
            if queue.empty() and self.channels.get(channel) is queue:
                del self.channels[channel]

    def loop_inbox(self) -> InMemoryLayer:
        return self  # one layer for every loop

    def take(self, channel: str) -> dict[str, Any] | None:
        if self._gaps and (gap := self._gaps.take(channel)) is not None:
            return gap
        return self._next_queued(channel)

    def _next_queued(self, channel: str) -> dict[str, Any] | None:
        """The oldest message queued for ``channel`` (gap marks skipped), taken out; None if none waits."""
        queue = self.channels.get(channel)
        while queue is not None and not queue.empty():
            message = queue.get_nowait()[1]
            if message is not _GAP_MARK:
                return message  # type: ignore[no-any-return]
        return None

    def wake_on_message(self, channel: str, bell: asyncio.Future[None]) -> None:
        self._queue(channel).wake(bell)

    def release(self, channel: str) -> None:
        self._gaps.forget(channel)
        self.channels.pop(channel, None)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Queue ``message`` for every member of ``group``; a full member is counted, not skipped silently."""
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_group_name(group)
        self._queue_for_members(group, message)

    def _queue_for_members(self, group: str, message: dict[str, Any]) -> bool:
        members = self.groups.get(group)
        if not members:
            return False
        for channel in list(members):
            queue = self._queue(channel)
            try:
                queue.put_nowait((0, dict(message)))
            except asyncio.QueueFull:
                if "position" in message:
                    # Kept in the history: the consumer catches up from there once it has read its queue.
                    metrics.counters[metrics.LAYER_FULL] += 1
                    self._gaps.mark(channel, group, queue, (0, _GAP_MARK))
                else:
                    count_undeliverable(message, f"channel {channel}")
        return True

    async def send_kept(self, group: str, message: dict[str, Any]) -> Kept:
        """:meth:`group_send`, keeping ``message["text"]`` in the group's history and as pending if nobody took it."""
        return self._send_kept(group, message)

    def send_kept_soon(self, group: str, message: dict[str, Any]) -> asyncio.Future[Kept]:
        """:meth:`send_kept`, done at once: its outcome as a finished future."""
        done: asyncio.Future[Kept] = asyncio.get_running_loop().create_future()
        try:
            done.set_result(self._send_kept(group, message))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def _send_kept(self, group: str, message: dict[str, Any]) -> Kept:
        self.require_valid_group_name(group)
        if not conf.KEEPS:
            return Kept(live=self._queue_for_members(group, message), pending=False, position=None)
        entry = self.history.add(
            group,
            message["text"],
            size=conf.HISTORY_SIZE,
            ttl=conf.HISTORY_TTL,
            max_entries=conf.HISTORY_MAX_ENTRIES,
        )
        if self._queue_for_members(group, {**message, "position": entry.position}):
            return Kept(live=True, pending=False, position=entry.position)
        if conf.PENDING:
            self.history.make_pending(entry)
            self._pending_ids[group] = message.get("recipient", "")
            return Kept(live=False, pending=True, position=entry.position)
        return Kept(live=False, pending=False, position=entry.position)

    def drain(self, channel: str) -> list[dict[str, Any]]:
        left: list[dict[str, Any]] = []
        while (message := self._next_queued(channel)) is not None:
            left.append(message)
        return left

    async def keep_pending(self, group: str, message: dict[str, Any]) -> bool:
        if self._queue_for_members(group, message):  # registered here meanwhile: it is live for them
            return True
        entry = self.history.find(group, message.get("position"))
        if entry is None or not conf.PENDING:
            return False
        self.history.make_pending(entry)
        self._pending_ids[group] = message.get("recipient", "")
        return True

    async def take_pending(self, group: str, *, peek: bool = False) -> list[KeptNotification]:
        if not peek:
            self._pending_ids.pop(group, None)
        return self.history.take_pending(group, peek=peek)

    async def most_pending(self, limit: int) -> list[tuple[str, int]]:
        """The ids with the most pending notifications, most first: (id, how many), at most ``limit``."""
        counts = dict(self.history.pending_counts())
        for group in [g for g in self._pending_ids if g not in counts]:  # expired meanwhile
            del self._pending_ids[group]
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:limit]
        return [(self._pending_ids.get(group, ""), count) for group, count in ranked]

    async def newest(self, group: str) -> str | None:
        return self.history.newest(group) if conf.KEEPS else None

    async def resume(self, group: str, since: str | None, start: str | None, *, take: bool = True) -> Replay:
        if not conf.KEEPS:
            return Replay(recovered=False, newest=None, notifications=[])
        return self.history.resume(group, since, start, take=take)
