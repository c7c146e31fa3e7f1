"""Twisted's asyncio reactor, writing to a socket at once when nothing waits to be written before.

daphne runs Twisted on an asyncio loop (``AsyncioSelectorReactor``).
Twisted's transports never write in ``write()``: they buffer the bytes, ask
the loop to watch the socket for writability, send on the next iteration and
stop watching again. For a WebSocket frame to an idle connection (a
notification) that is two ``epoll_ctl`` calls, one more turn of the loop and
Twisted's logging context around the send, per frame. :class:`Reactor` sends
the bytes at once when the socket's buffer in Twisted is empty, as asyncio's
own transports do, and leaves everything else to Twisted: a partial send, a
full socket, an error, TLS begun on the connection, a paused producer, a
closing connection.

:func:`install` installs it before daphne's server module is imported, which
keeps an asyncio reactor it finds installed (``notifyproject.server`` does so).
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.internet import tcp
from twisted.internet.asyncioreactor import AsyncioSelectorReactor


class Reactor(AsyncioSelectorReactor):
    """``AsyncioSelectorReactor`` whose TCP and Unix connections send at once what they are given to write."""

    def addWriter(self, writer: Any) -> None:  # noqa: N802  (Twisted's name)
        if writer in self._writers or not (isinstance(writer, tcp.Connection) and _send_now(writer)):
            super().addWriter(writer)  # type: ignore[no-untyped-call]


def _send_now(connection: tcp.Connection) -> bool:
    """Send what ``connection`` was just given to write, if all else is sent; True if nothing is left to send.

    Twisted's ``FileDescriptor.write`` appended the bytes to ``_tempDataBuffer``
    and asks to be watched (``startWriting``). Sent here, the buffer is emptied
    and nothing needs watching. Anything unusual is left to Twisted's own
    ``doWrite`` on the next turn of the loop, which also meets any error.
    """
    if (
        connection.TLS
        or not connection.connected
        or connection.disconnecting
        or connection._writeDisconnecting
        or connection.producerPaused
        or connection.offset != len(connection.dataBuffer)
        or not connection._tempDataLen
    ):
        return False
    pending = connection._tempDataBuffer
    data = pending[0] if len(pending) == 1 else b"".join(pending)
    try:
        sent = connection.socket.send(data)
    except OSError:  # a full socket (EAGAIN), or an error: Twisted's doWrite deals with it as usual
        return False
    if sent == len(data):
        connection._tempDataBuffer = []
        connection._tempDataLen = 0
        return True
    connection._tempDataBuffer = [data[sent:]]
    connection._tempDataLen = len(data) - sent
    return False


def install(loop: asyncio.AbstractEventLoop | None = None) -> Reactor:
    """Install :class:`Reactor` as Twisted's reactor, on ``loop`` (a new one by default)."""
    from twisted.internet.main import installReactor

    reactor = Reactor(loop if loop is not None else asyncio.new_event_loop())
    installReactor(reactor)  # type: ignore[no-untyped-call]
    return reactor
