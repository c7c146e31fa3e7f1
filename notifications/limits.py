"""Limits that keep one client or one address from slowing anyone else down (all off by default).

- ``MAX_FRAMES_PER_SECOND``: a token bucket per connection (burst: the same
  number of frames). A frame over it is not acted on, and the connection's
  socket is not read for ``HOLD_SECONDS``; a connection that stays over it
  for ``FLOOD_SECONDS`` is closed with ``4008``.
- ``MAX_CONNECTIONS_PER_ADDRESS`` and ``MAX_HANDSHAKES_PER_SECOND_PER_ADDRESS``:
  per client address (the real one behind nginx), in this process. A
  connection over either is accepted and closed at once with ``4008``: a
  refused handshake would show a browser only ``1006``.

Each limit hit is counted (:mod:`notifications.metrics`) and logged at
WARNING at most once per offender (a connection, an address) per minute.
Every structure here is bounded: an attacker who rotates addresses costs a
fixed amount of memory, not more.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from notifications import metrics
from notifications.conf import conf

logger = logging.getLogger(__name__)

# The close code for a broken limit: reconnect only after a backoff of several seconds.
CLOSE_LIMIT = 4008

LOG_EVERY = 60.0  # seconds: one WARNING line per offender and limit at most this often
# Addresses remembered at most (handshake buckets, log times); the least recently seen go first.
MAX_TRACKED = 10_000
# A flood ends when a connection sent nothing over the limit for this long.
FLOOD_QUIET = 1.0
# A connection over its frame rate is not read for this long: what it sends meanwhile waits in its own
# buffers (TCP slows it down), so that a flood costs this process little more than the frames it allows.
HOLD_SECONDS = 0.5

Clock = Callable[[], float]


class TokenBucket:
    """``rate`` tokens a second, up to ``rate`` in store: ``take()`` is False when none is left."""

    __slots__ = ("rate", "tokens", "stamp", "clock")

    def __init__(self, rate: float, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.tokens = rate
        self.clock = clock
        self.stamp = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class FrameLimit:
    """One connection's frame rate: whether each frame may be acted on, and whether it floods.

    A flood starts with the first frame over the rate and lasts until the
    connection has sent nothing over it for a second; a flood that has lasted
    ``FLOOD_SECONDS`` ends the connection. A client that sends at twice the
    rate gets half its frames through and is still closed: it is over the
    limit all along.
    """

    __slots__ = ("bucket", "flood_seconds", "flood_since", "last_over", "clock")

    def __init__(self, rate: int, flood_seconds: float, clock: Clock = time.monotonic) -> None:
        self.bucket = TokenBucket(rate, clock)
        self.flood_seconds = flood_seconds
        self.flood_since: float | None = None
        self.last_over = 0.0
        self.clock = clock

    def allow(self) -> bool:
        """Whether this frame is within the rate (counts it)."""
        if self.bucket.take():
            return True
        now = self.clock()
        if self.flood_since is None or now - self.last_over > FLOOD_QUIET:
            self.flood_since = now  # a new flood: the last one paused for long enough
        self.last_over = now
        return False

    def flooding(self) -> bool:
        """Whether the connection has been over the rate for ``FLOOD_SECONDS`` without a pause."""
        return self.flood_since is not None and self.last_over - self.flood_since >= self.flood_seconds


def frame_limit() -> FrameLimit | None:
    """A new connection's frame limit, or None when ``MAX_FRAMES_PER_SECOND`` is off."""
    rate = conf.MAX_FRAMES_PER_SECOND
    return FrameLimit(rate, conf.FLOOD_SECONDS) if rate else None


class Offenders:
    """When each offender (a connection, an address) was last logged for a limit: once a minute at most."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.logged: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.clock = clock

    def should_log(self, kind: str, offender: str) -> bool:
        now = self.clock()
        key = (kind, offender)
        last = self.logged.get(key)
        if last is not None and now - last < LOG_EVERY:
            return False
        self.logged[key] = now
        self.logged.move_to_end(key)
        while len(self.logged) > MAX_TRACKED:
            self.logged.popitem(last=False)
        return True


class Addresses:
    """This process's open connections and recent handshakes per client address."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.open: Counter[str] = Counter()
        self.handshakes: OrderedDict[str, TokenBucket] = OrderedDict()
        self.clock = clock

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``; None if it may stay, else why it may not.

        A connection that may not stay is not counted as open (it is closed at once).
        """
        rate = conf.MAX_HANDSHAKES_PER_SECOND_PER_ADDRESS
        if rate:
            bucket = self.handshakes.get(address)
            if bucket is None or bucket.rate != rate:
                bucket = self.handshakes[address] = TokenBucket(rate, self.clock)
            self.handshakes.move_to_end(address)
            while len(self.handshakes) > MAX_TRACKED:
                self.handshakes.popitem(last=False)
            if not bucket.take():
                return f"more than {rate} new connections a second from its address"
        most = conf.MAX_CONNECTIONS_PER_ADDRESS
        if most and self.open[address] >= most:
            return f"its address has {self.open[address]} connections open already, the most allowed"
        self.open[address] += 1
        return None

    def left(self, address: str) -> None:
        """An admitted connection from ``address`` closed."""
        if address not in self.open:  # an unknown address (""), never counted
            return
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


addresses = Addresses()
offenders = Offenders()


def hit(kind: str, offender: str, message: str, *args: object) -> None:
    """Count a limit hit of ``kind`` (a metrics counter) and log it, once a minute per offender."""
    metrics.counters[kind] += 1
    if offenders.should_log(kind, offender):
        logger.warning(message + " (logged once a minute per offender)", *args)
