"""A graceful drain: on SIGTERM, every WebSocket is closed with 4012, spread over a few seconds, before the exit.

daphne answers SIGTERM by cancelling every application and dropping every
socket without a close frame: every client sees 1006 at the same instant,
reconnects at that instant, and an operator cannot tell a deploy from a
crash. :class:`notifications.launch.DrainingServer` runs :func:`drain` first:

1. the process stops accepting connections (the others sharing its socket go on);
2. each open WebSocket is closed with ``4012`` (reconnect and resume), one
   after another, spread evenly over ``NOTIFICATIONS_DRAIN_SECONDS``, so that
   the clients come back gradually, to the other processes;
3. it waits (a bounded time) for those connections to end, so that what
   their consumers still held is made pending again; then daphne stops as it
   always does, and the registry removes the process's rows (:func:`finished`).

This module does not import daphne: the registry (:func:`finished`) and
anything else that must know (:func:`is_draining`) use it in any process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from notifications import metrics
from notifications.conf import conf

logger = logging.getLogger(__name__)

CLOSE_CODE = 4012  # the same code as a lost continuity: reconnect, and resume with since
CLOSE_REASON = "server restarting; reconnect and resume"
# After the last close frame: how long the clients' close replies and the consumers' leaving may take.
GRACE_SECONDS = 3.0

_drain: asyncio.Future[None] | None = None  # set once a drain began; done when it ended


class Socket(Protocol):
    """What the drain needs of a WebSocket connection (autobahn's protocol as daphne runs it)."""

    def is_open(self) -> bool: ...

    def close(self, code: int, reason: str) -> None: ...


def is_draining() -> bool:
    """Whether this process began to drain: it accepts no connections and is about to exit."""
    return _drain is not None


async def finished() -> None:
    """Wait until a drain that began has ended (at once if none began); for what must follow it."""
    await asyncio.sleep(0)  # the triggers of one shutdown fire together: let the drain begin first
    if _drain is not None:
        await asyncio.shield(_drain)


async def drain(
    stop_accepting: Callable[[], Awaitable[None]],
    sockets: Callable[[], Iterable[Socket]],
    gone: Callable[[], bool],
    seconds: float | None = None,
) -> None:
    """Close every socket ``sockets()`` lists with 4012, spread over ``seconds``; wait until ``gone()``.

    ``sockets`` is read again after the spread, so that a connection whose
    handshake was under way is closed too.
    """
    global _drain
    if _drain is not None:
        return await asyncio.shield(_drain)
    _drain = asyncio.get_running_loop().create_future()
    try:
        seconds = conf.DRAIN_SECONDS if seconds is None else seconds
        try:
            await stop_accepting()
        except Exception as exc:  # the drain goes on: the clients matter more than the port
            logger.warning("Drain: could not stop listening: %s: %s", type(exc).__name__, exc)
        open_now = [s for s in sockets() if s.is_open()]
        logger.info(
            "Draining: closing %d WebSockets with %d over %.1f s, then exiting",
            len(open_now),
            CLOSE_CODE,
            seconds,
        )
        started = time.monotonic()
        step = seconds / len(open_now) if open_now else 0.0
        closed = 0
        for index, socket in enumerate(open_now):
            delay = started + index * step - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            closed += _close(socket)
        deadline = time.monotonic() + GRACE_SECONDS
        while True:
            # Opened meanwhile: a handshake under way, or an upgrade on a connection accepted before the drain.
            closed += sum(_close(s) for s in sockets() if s.is_open())
            if gone() or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)  # daphne offers no event for it
        metrics.counters[metrics.DRAINED] += closed
        logger.info("Drained: %d WebSockets closed in %.1f s", closed, time.monotonic() - started)
    finally:
        _drain.set_result(None)


def _close(socket: Socket) -> int:
    try:
        socket.close(CLOSE_CODE, CLOSE_REASON)
    except Exception as exc:  # one connection's trouble never stops the drain of the others
        logger.warning("Drain: could not close a WebSocket: %s: %s", type(exc).__name__, exc)
        return 0
    return 1


def reset() -> None:
    """Forget a drain (tests that drain in-process more than once)."""
    global _drain
    _drain = None
