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

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from notifications import metrics
from notifications.protocol import describe

logger = logging.getLogger(__name__)

DEFAULT_CAPACITY = 1000


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


class KeepingLayer(Protocol):
    """The app's layers keep notifications: they decide "live" or "pending" as they deliver."""

    async def send_kept(self, group: str, message: dict[str, Any]) -> Kept:
        """``group_send`` that keeps ``message`` in the group's history, and as pending if nobody took it."""

    async def take_pending(self, group: str, *, peek: bool = False) -> list[KeptNotification]:
        """The group's pending notifications, oldest first, once; call after ``group_add`` returned.

        ``peek`` leaves them pending (for an operator's look).
        """

    def drain(self, channel: str) -> list[dict[str, Any]]:
        """The events still queued for ``channel``, taken out (its consumer is leaving)."""

    async def keep_pending(self, group: str, message: dict[str, Any]) -> bool:
        """A kept ``message`` whose connection left before it was sent: pending again (True), or not kept."""


def count_undeliverable(event: Any, where: str) -> None:
    """Count and log a notification that could not be queued for a connection."""
    metrics.counters[metrics.UNDELIVERABLE] += 1
    metrics.counters[metrics.LAYER_FULL] += 1
    recipient = event.get("recipient") if isinstance(event, dict) else None
    logger.warning(
        "Undeliverable notification for %s: the queue of %s is full",
        describe(recipient) if isinstance(recipient, str) else "an unknown recipient",
        where,
    )
