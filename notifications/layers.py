"""Channel layers configured for notifications.

Why these and not the library defaults:

- Clients in the field never reconnect, so a registration must last as long
  as its connection. ``InMemoryChannelLayer`` forgets group members after
  ``group_expiry`` (a day by default); here memberships never expire, and
  the consumer itself leaves its groups on disconnect.
- ``RedisPubSubChannelLayer`` keeps group membership in the subscribing
  process rather than in Redis, so nothing expires and nothing goes stale
  when a process dies; ``RedisChannelLayer`` drops messages silently once its
  shared per-process inbox is full (capacity 100).
"""

from __future__ import annotations

from typing import Any

from channels.layers import InMemoryChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

# Ten years: "never" for a connection, while staying a valid timestamp offset.
NEVER_EXPIRES = 10 * 365 * 24 * 3600


class InMemoryLayer(InMemoryChannelLayer):
    """The embedded default: one process, nothing to install."""

    def __init__(self, *, capacity: int = 1000, **kwargs: Any) -> None:
        kwargs.setdefault("group_expiry", NEVER_EXPIRES)
        kwargs.setdefault("expiry", NEVER_EXPIRES)
        super().__init__(capacity=capacity, **kwargs)


class RedisPubSubLayer(RedisPubSubChannelLayer):
    """Several daphne processes, on one host or many, sharing Redis."""
