"""daphne's command line with a graceful drain, which :mod:`notifications.serve` runs.

The same options and behaviour as ``daphne``, except on SIGTERM (or
SIGINT): before daphne cancels its applications and drops its sockets,
:func:`notifications.drain.drain` closes every WebSocket with 4012, spread
over ``NOTIFICATIONS_DRAIN_SECONDS``. daphne's own shutdown step
(``kill_all_applications``, a Twisted "before shutdown" trigger) is where the
drain hooks in: the subclass runs the drain first and daphne's step after it.

Importing this module imports ``daphne.server``, which installs Twisted's
asyncio reactor on a loop of its own unless one is installed: choose the event
loop policy (uvloop) and install the app's reactor (:mod:`notifications.reactor`)
before, as :mod:`notifications.serve` does.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable
from functools import partial
from typing import Any

from daphne.cli import CommandLineInterface
from daphne.http_protocol import WebRequest
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from notifications import drain, frames
from notifications.backpressure import ClientQueue
from notifications.endpoints import QUIET_PATHS
from notifications.exceptions import one_line

logger = logging.getLogger(__name__)

# The collector's thresholds once the server runs (Python's defaults: 700, 10, 10); see tune_gc().
GC_THRESHOLDS = (20_000, 20, 20)


def _log_failure(failure: Failure) -> None:
    logger.error("The drain failed (the process stops anyway): %s", failure.getErrorMessage())


class _WebSocket:
    """One of daphne's WebSocket connections, as the drain sees it."""

    def __init__(self, protocol: WebSocketProtocol) -> None:
        self.protocol = protocol

    def is_open(self) -> bool:
        return bool(self.protocol.state == self.protocol.STATE_OPEN)

    def close(self, code: int, reason: str) -> None:
        self.protocol.sendClose(code=code, reason=reason)


def _unlist(request: WebRequest) -> None:
    channel = request.channel
    if channel is not None and request in channel.requests:
        channel.requests.remove(request)


# daphne's WebSocket protocol logs each frame it sends at DEBUG: while that is on, replies go daphne's way.
_DAPHNES_WS_LOG = logging.getLogger("daphne.ws_protocol")


class Replies(partial[Awaitable[None]]):
    """A connection's ``send``: daphne's ``partial(server.handle_reply, protocol)``, a text frame sent in one step.

    daphne hands every message to ``Server.handle_reply``, then the protocol's
    ``handle_reply``, then ``serverSend`` (and its debug log), before
    ``sendMessage``. A text frame to an accepted WebSocket that the server
    still serves passes the same checks here and goes to ``sendMessage``
    at once; anything else goes daphne's way, errors included.
    (tests/test_launch.py fails if one of those three methods of daphne's changes.)
    """

    async def __call__(self, message: dict[str, Any]) -> None:
        server: Server = self.func.__self__  # type: ignore[attr-defined]
        protocol = self.args[0]
        text = message.get("text")
        if (
            message.get("type") == "websocket.send"
            and type(text) is str
            and text
            and not message.get("bytes")
            and protocol.state != protocol.STATE_CONNECTING
            and not _DAPHNES_WS_LOG.isEnabledFor(logging.DEBUG)
        ):
            connection = server.connections.get(protocol)
            if connection is not None and not connection.get("disconnected"):
                protocol.sendMessage(text.encode("utf8"), False)
            return
        await self.func(protocol, message)


class DrainingServer(Server):
    """daphne's server, which drains its WebSockets before it stops and reads them with the app's protocol."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ports: list[Any] = []

    # daphne makes its WebSocket factory in run(), just before it listens: the factory
    # builds the app's protocol (notifications.frames) from the start.
    @property
    def ws_factory(self) -> Any:
        return self._ws_factory

    @ws_factory.setter
    def ws_factory(self, factory: Any) -> None:
        self._ws_factory = frames.use_in(factory)

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> ClientQueue | None:
        """daphne's, with a :class:`ClientQueue` in place of its ``asyncio.Queue`` (3 KB less per connection)
        and :class:`Replies` for its ``send``.

        The rest is daphne's method as it is (tests/test_launch.py fails if daphne's changes).
        """
        assert "application_instance" not in self.connections[protocol]
        queue = ClientQueue()
        scope.setdefault("asgi", {"version": "3.0"})
        application = self.application(scope=scope, receive=queue.get, send=Replies(self.handle_reply, protocol))
        if protocol not in self.connections:
            return None
        self.connections[protocol]["application_instance"] = asyncio.ensure_future(
            application, loop=asyncio.get_event_loop()
        )
        return queue

    def protocol_disconnected(self, protocol: Any) -> None:
        super().protocol_disconnected(protocol)
        if isinstance(protocol, WebRequest) and protocol.transport is None and protocol.channel is not None:
            # daphne handed the request's connection to a WebSocket (it took the transport) and is done
            # with it, but Twisted's HTTP channel still lists it: a cycle, which the collector frees only
            # in a full collection (a few KB per connection until then, and the holes it leaves). Taken
            # off the list at the next turn, when daphne and the channel have returned: reference
            # counting frees both once daphne forgets the request.
            asyncio.get_running_loop().call_soon(_unlist, protocol)

    def listen_success(self, port: Any) -> None:
        self.ports.append(port)
        super().listen_success(port)

    def log_action(self, protocol: str, action: str, details: dict[str, Any]) -> None:
        # Balancers call the probes every second: an access-log line each would bury everything else.
        if protocol == "http" and details.get("path") in QUIET_PATHS and details.get("status") in (200, 503):
            return
        super().log_action(protocol, action, details)

    def kill_all_applications(self) -> Deferred[Any]:
        drained: Deferred[Any] = Deferred.fromFuture(
            asyncio.ensure_future(drain.drain(self._stop_accepting, self._websockets, self._websockets_gone))
        )
        drained.addErrback(_log_failure)  # never blocks the exit
        drained.addBoth(lambda _: super(DrainingServer, self).kill_all_applications())
        return drained

    async def _stop_accepting(self) -> None:
        ports, self.ports = self.ports, []
        for port in ports:
            await maybeDeferred(port.stopListening).asFuture(asyncio.get_running_loop())

    def _websockets(self) -> list[_WebSocket]:
        return [_WebSocket(p) for p in list(self.connections) if isinstance(p, WebSocketProtocol)]

    def _websockets_gone(self) -> bool:
        """Every WebSocket closed, and its application done with it (its consumer left its groups)."""
        for protocol, details in list(self.connections.items()):
            if not isinstance(protocol, WebSocketProtocol):
                continue
            application = details.get("application_instance")
            if not details.get("disconnected") or (application is not None and not application.done()):
                return False
        return True


class DrainingCommandLine(CommandLineInterface):
    server_class = DrainingServer


def make_channel_layer() -> None:
    """Make the channel layer as the server starts, rather than for its first connection.

    Channels makes it on first use, which imports its backend: for Redis,
    redis-py and channels-redis, about 9 MB and 70 to 90 ms on the
    benchmark's machine, paid by whichever client connects first after a
    restart and counted, in the benchmark, as memory of the first
    connections. Made here, it is part of the process from its start (and of
    what :func:`tune_gc` sets aside). Nothing connects to Redis yet. Only
    where the application configured Django; a layer that cannot be made is
    told in one line, and the first connection meets the same error.
    """
    from django.conf import settings

    if not settings.configured:
        return
    from channels.layers import get_channel_layer

    try:
        get_channel_layer()
    except Exception as exc:
        logger.warning("The channel layer could not be made: %s", one_line(exc))


def tune_gc() -> None:
    """Tune Python's cyclic garbage collector for a long-running relay, once the application is loaded.

    Under load, the objects of notifications on their way (queued for a
    connection, waiting for Redis's answer) outlive the youngest generation's
    collections, every 700 allocations, and are promoted until the oldest
    generation's full collections run: each traverses every object the
    process holds, Django's, Twisted's and the app's from start-up included
    (about 150,000, some 80 ms per collection on the benchmark's machine).
    ``gc.freeze()`` sets what exists once the server runs (modules, settings,
    URL patterns: never garbage) aside from every later collection, and a
    youngest generation of 20,000 lets reference counting free most of a
    notification's objects before a collection would promote them. Cycles
    are still collected. At saturation this cut the relay's CPU per message
    by a fifth to a quarter (README, Benchmark).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main() -> None:
    """daphne's command line with the drain (:mod:`notifications.serve` sets up the loop first, then calls this)."""
    from twisted.internet import reactor

    # After daphne's CLI loaded the application, in this order: what the layer imports is set aside too.
    reactor.callWhenRunning(make_channel_layer)
    reactor.callWhenRunning(tune_gc)
    DrainingCommandLine.entrypoint()
