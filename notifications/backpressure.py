"""Flow control both ways: a client that stops reading, and a client that sends faster than the server relays.

A client that stops reading: know it, hold its notifications up to a bound,
send them when it reads again (:func:`watch`, :class:`Backlog`). A client
that sends faster than the process relays: stop reading its socket while its
frames wait, so that TCP slows it down instead of the server's memory
filling with frames it may never get to (:class:`ReadWindow`).

ASGI has no flow control for ``websocket.send``: daphne hands every frame to
Twisted, whose transport buffers whatever the socket does not take. A client
that stops reading would make that buffer, and the server's memory, grow with
every notification sent to it. Twisted's producer API says when a
transport's buffer is full (``pauseProducing``) and when it has drained
(``resumeProducing``); :func:`watch` registers for it on daphne's protocol,
and :class:`Backlog` holds what waits for such a client.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.web.http import HTTPChannel
from zope.interface import implementer

from notifications import metrics
from notifications.conf import conf
from notifications.layers import ChannelQueue
from notifications.protocol import describe

logger = logging.getLogger(__name__)


@implementer(IPushProducer)
class WriteWindow:
    """Whether the connection's socket takes more data right now.

    ``paused`` is true while the transport holds more than its buffer size
    (64 KiB in Twisted) of unsent data; ``on_resume`` runs when it drains.
    """

    __slots__ = ("paused", "stopped", "on_resume")

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False  # the connection is gone
        self.on_resume: Callable[[], None] | None = None

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted's interface)
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        if self.on_resume is not None:
            self.on_resume()

    def stopProducing(self) -> None:  # noqa: N802
        self.paused = False
        self.stopped = True
        on_resume, self.on_resume = self.on_resume, None
        if on_resume is not None:
            on_resume()  # whoever waits for room learns that there will be none


def watch(send: Any) -> WriteWindow | None:
    """A :class:`WriteWindow` on the connection behind an ASGI ``send``, or None.

    daphne's ``send`` is a ``functools.partial`` of its server's reply method
    bound to the connection's protocol; any other server (or the test
    communicator) yields None, and then nothing is bounded here.
    """
    args = getattr(send, "args", ())
    protocol: Any = args[0] if args else None
    if not hasattr(protocol, "registerProducer") or getattr(protocol, "transport", None) is None:
        return None
    transport = protocol.transport
    if isinstance(getattr(transport, "producer", None), HTTPChannel):
        # daphne upgrades an HTTP connection: Twisted's HTTP channel stays
        # registered as the socket's producer although it no longer serves it.
        transport.unregisterProducer()
    window = WriteWindow()
    try:
        protocol.registerProducer(window, True)
    except RuntimeError:  # a producer is already registered, or the connection is gone
        return None
    return window


# Frames of one client waiting for its consumer: reading its socket stops at the first bound
# and starts again at the second. Small: each waiting frame is a notification not yet relayed.
READ_PAUSE_AT = 64
READ_RESUME_AT = 8


class ClientQueue(ChannelQueue):
    """What a client sent, waiting for its consumer: daphne's queue in the app's server.

    daphne makes an ``asyncio.Queue`` per connection; the app's server makes
    this one instead (:meth:`notifications.launch.DrainingServer.create_application`).
    An ``asyncio.Queue`` holds three deques and an ``Event`` from the start
    (about 3 KB per connection, measured with tracemalloc), for waiting
    putters and ``join()``, which nobody uses here; this queue holds a deque
    only while frames wait. Unbounded, as daphne's is: :class:`ReadWindow`
    bounds it by pausing the socket. daphne tests ``if queue:``, so it must
    stay true when empty (no ``__len__``).
    """

    __slots__ = ("on_put",)

    def __init__(self) -> None:
        super().__init__(0)
        self.on_put: Callable[[int], None] | None = None  # told how many wait, after each put

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Any) -> None:
        super().put_nowait(item)
        if self.on_put is not None:
            self.on_put(len(self._items))


class ReadWindow:
    """Stop reading a client's socket while many of its frames wait to be handled, so that TCP slows it down.

    daphne reads every frame as it arrives and queues it for the application
    without a bound: a client (a back-end sending in bursts) that outruns the
    process would grow that queue, the latency of every frame in it, and what
    is lost if the process stops. Here the consumer looks at the queue as it
    takes each frame and pauses the socket's reading (Twisted's
    ``pauseProducing``) while ``READ_PAUSE_AT`` or more wait, until no more
    than ``READ_RESUME_AT`` do. :func:`read_window` gives None under any
    other server, and then nothing is paused.
    """

    __slots__ = ("_queue", "_transport", "paused", "pauses", "_held", "_reading")

    def __init__(self, queue: ClientQueue | asyncio.Queue[Any], transport: Any) -> None:
        self._queue = queue
        self._transport = transport
        self.paused = False  # too many frames wait
        self.pauses = 0
        self._held: asyncio.TimerHandle | None = None  # not read for a while (a client over its frame rate)
        self._reading = True  # what the transport was last told
        # Look as daphne puts each frame, too: between two frames the consumer takes (each may wait for
        # Redis), Twisted would otherwise read chunk after chunk of a fast sender into the queue. Then a
        # sender that closes leaves thousands queued, more than daphne gives an application to finish
        # after a disconnect (its application_close_timeout, 10 s) before it kills it.
        if isinstance(queue, ClientQueue):
            queue.on_put = self._put
            return
        put = queue.put_nowait  # daphne's own server (not the app's): its asyncio.Queue

        def put_and_look(item: Any) -> None:
            put(item)
            self._put(queue.qsize())

        queue.put_nowait = put_and_look  # type: ignore[method-assign]

    def _put(self, waiting: int) -> None:
        """daphne put a frame in the queue; ``waiting`` frames wait now."""
        if not self.paused and waiting >= READ_PAUSE_AT:
            self._pause()

    def took_one(self) -> None:
        """Called as the consumer takes a frame from the client."""
        waiting = self._queue.qsize()
        if self.paused:
            if waiting <= READ_RESUME_AT:
                self.paused = False
                self._apply()
        elif waiting >= READ_PAUSE_AT:
            self._pause()

    def _pause(self) -> None:
        self.paused = True
        self.pauses += 1
        metrics.counters[metrics.READS_PAUSED] += 1
        self._apply()

    def hold(self, seconds: float) -> None:
        """Do not read the socket for ``seconds`` (unless held already): what the client sends meanwhile waits
        in its own buffers, and costs this process nothing (see :mod:`notifications.limits`)."""
        if self._held is None:
            self._held = asyncio.get_running_loop().call_later(seconds, self._release)
            self._apply()

    def close(self) -> None:
        """The connection ended: no timer left behind."""
        if self._held is not None:
            self._held.cancel()
            self._held = None

    def unread(self) -> int:
        """Frames of the client still waiting in daphne's queue, never to be handled (taken out)."""
        waiting = 0
        while not self._queue.empty():
            message = self._queue.get_nowait()
            waiting += message.get("type") == "websocket.receive"
        return waiting

    def _release(self) -> None:
        self._held = None
        self._apply()

    def _apply(self) -> None:
        reading = not self.paused and self._held is None
        if reading != self._reading:
            self._reading = reading
            if reading:
                self._transport.resumeProducing()
            else:
                self._transport.pauseProducing()


def read_window(receive: Any, send: Any) -> ReadWindow | None:
    """A :class:`ReadWindow` for daphne's connection behind ``receive`` and ``send``, or None.

    daphne's ``receive`` is its per-connection queue's ``get`` (an
    ``asyncio.Queue``, a :class:`ClientQueue` in the app's server); its
    ``send`` a partial bound to the connection's protocol (see :func:`watch`).
    """
    queue = getattr(receive, "__self__", None)
    args = getattr(send, "args", ())
    transport = getattr(args[0], "transport", None) if args else None
    if not isinstance(queue, ClientQueue | asyncio.Queue) or not hasattr(transport, "pauseProducing"):
        return None
    return ReadWindow(queue, transport)


class Backlog:
    """Notifications for one connection, sent at once while its client reads, held while it does not.

    While the client's socket and Twisted's 64 KiB buffer are full, up to
    ``NOTIFICATIONS_MAX_QUEUED_MESSAGES`` wait here, in order; beyond that,
    new ones are dropped, counted and logged. The connection stays open:
    clients in the field never reconnect, one that is merely slow gets
    everything after it catches up, and one that is gone is dropped by the
    keep-alive ping.
    """

    __slots__ = ("_send_text", "_window", "_who", "_waiting", "_dropped", "_drainer", "_room")

    def __init__(self, send_text: Callable[[str], Awaitable[bool]], window: WriteWindow | None, who: str) -> None:
        self._send_text = send_text
        self._window = window
        self._who = who  # for the log: the connection's temporary id
        # Made when something must wait (an empty deque is 600 bytes per connection), dropped once sent.
        self._waiting: deque[str] | tuple[()] = ()
        self._dropped = 0  # since the client stopped reading
        self._drainer: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None  # a paced sender waits for this
        if window is not None:
            window.on_resume = self._resumed

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def gone(self) -> bool:
        """The connection's socket is closed: nothing sent now would reach the client."""
        return self._window is not None and self._window.stopped

    async def send(self, text: str, recipient: object = None) -> bool:
        """Send ``text`` now if the client reads and nothing waits before it; else hold it, or drop it (False).

        Also False if the connection turned out to be gone (``send_text`` said so; not counted here).
        """
        window = self._window
        if window is None or not (window.paused or self._waiting):
            return await self._send_text(text)
        if len(self._waiting) < conf.MAX_QUEUED_MESSAGES:
            if not isinstance(self._waiting, deque):
                self._waiting = deque()
            self._waiting.append(text)
            if not window.paused:
                self._drain_soon()
            return True
        self._dropped += 1
        metrics.counters[metrics.NOT_READING] += 1
        whose = describe(recipient) if isinstance(recipient, str) else "an unknown recipient"
        metrics.undeliverable("not_reading", whose)
        logger.warning(
            "Undeliverable notification for %s: client %s is not reading (%d notifications waiting)",
            whose,
            self._who,
            len(self._waiting),
            extra={"connection": self._who, "reason": "not_reading"},
        )
        return False

    async def send_paced(self, text: str) -> bool:
        """Like :meth:`send`, but while ``MAX_QUEUED_MESSAGES`` wait, wait for the client to read instead of dropping.

        For a replay, which may be larger than the bound: it is slowed, never
        cut. False when the connection went away first (nothing more is sent).
        """
        window = self._window
        while window is not None and len(self._waiting) >= conf.MAX_QUEUED_MESSAGES:
            if window.stopped:
                return False
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await self._room
        if window is not None and window.stopped:
            return False
        return await self.send(text)

    def discard(self) -> int:
        """Forget what still waits (the client left); how many were waiting."""
        count = len(self._waiting)
        self._waiting = ()
        return count

    def _resumed(self) -> None:
        if self._window is not None and self._window.stopped:
            self._make_room()  # gone: a paced sender stops waiting
        else:
            self._drain_soon()

    def _make_room(self) -> None:
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    def _drain_soon(self) -> None:
        if self._waiting and (self._drainer is None or self._drainer.done()):
            self._drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        while self._waiting and self._window is not None and not (self._window.paused or self._window.stopped):
            waiting = self._waiting
            assert isinstance(waiting, deque)
            if not await self._send_text(waiting[0]):
                return  # gone: disconnect() counts what still waits
            waiting.popleft()
            self._make_room()
        if not self._waiting:
            self._waiting = ()
            if self._dropped:
                logger.warning(
                    "Client %s reads again; %d notifications were dropped meanwhile", self._who, self._dropped
                )
                self._dropped = 0
