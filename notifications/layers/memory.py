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

from notifications.conf import conf
from notifications.layers import DEFAULT_CAPACITY, Kept, KeptNotification, count_undeliverable
from notifications.layers.history import MemoryHistory

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

    def _clean_expired(self) -> None:
        # Messages and memberships never expire here; the library's scan of
        # every channel on every send and receive would find nothing.
        return

    def _queue(self, channel: str) -> asyncio.Queue[Any]:
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        return queue  # type: ignore[no-any-return]

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
            _, message = await queue.get()
        finally:
            if queue.empty() and self.channels.get(channel) is queue:
                del self.channels[channel]
        return message  # type: ignore[no-any-return]

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
            try:
                self._queue(channel).put_nowait((0, dict(message)))
            except asyncio.QueueFull:
                count_undeliverable(message, f"channel {channel}")
        return True

    async def send_kept(self, group: str, message: dict[str, Any]) -> Kept:
        """:meth:`group_send`, keeping ``message["text"]`` in the group's history and as pending if nobody took it."""
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
            return Kept(live=False, pending=True, position=entry.position)
        return Kept(live=False, pending=False, position=entry.position)

    def drain(self, channel: str) -> list[dict[str, Any]]:
        queue = self.channels.get(channel)
        left: list[dict[str, Any]] = []
        while queue is not None and not queue.empty():
            left.append(queue.get_nowait()[1])
        return left

    async def keep_pending(self, group: str, message: dict[str, Any]) -> bool:
        if self._queue_for_members(group, message):  # registered here meanwhile: it is live for them
            return True
        entry = self.history.find(group, message.get("position"))
        if entry is None or not conf.PENDING:
            return False
        self.history.make_pending(entry)
        return True

    async def take_pending(self, group: str, *, peek: bool = False) -> list[KeptNotification]:
        return self.history.take_pending(group, peek=peek)
