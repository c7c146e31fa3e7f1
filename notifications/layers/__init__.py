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
from typing import Any

from notifications import metrics
from notifications.protocol import describe

logger = logging.getLogger(__name__)

DEFAULT_CAPACITY = 1000


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
