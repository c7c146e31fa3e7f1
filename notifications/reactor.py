"""Twisted's asyncio reactor, sending what connections were given to write at the end of the loop's turn.

daphne runs Twisted on an asyncio loop (``AsyncioSelectorReactor``).
Twisted's transports never write in ``write()``: they buffer the bytes, ask
the loop to watch the socket for writability, send once the loop reports it
and stop watching again. For a WebSocket frame to an idle connection (a
notification) that is two ``epoll_ctl`` calls, one more turn of the loop and
Twisted's logging context around the send, per frame. :class:`Reactor`
instead sends, once the callbacks of the current turn have run, everything
each connection was given meanwhile, in one ``send`` per connection (so
frames written together still go out together, as under load). Whatever is
not simple is left to Twisted: a partial send, a full socket, an error, TLS
begun on the connection, a paused producer, a closing connection. A
connection's reads, too, run without Twisted's legacy logging context (the
"system" prefix of ``twisted.python.log`` calls made while reading).

:func:`install` installs it before daphne's server module is imported, which
keeps an asyncio reactor it finds installed (:mod:`notifications.serve` does so).
"""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.internet import tcp
from twisted.internet.asyncioreactor import AsyncioSelectorReactor


class Reactor(AsyncioSelectorReactor):
    """``AsyncioSelectorReactor`` whose TCP and Unix connections send without the socket being watched first."""

    def __init__(self, eventloop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(eventloop)
        self._unsent: dict[tcp.Connection, None] = {}  # connections given bytes this turn, in order

    def addReader(self, reader: Any) -> None:  # noqa: N802  (Twisted's name)
        # Twisted runs every read of every selectable inside its legacy logging context (the "system" prefix
        # of twisted.python.log calls); a connection's reads skip it (_readOrWrite catches their errors).
        readers: dict[Any, int] = self._readers  # (Twisted's annotation has the keys' type wrong)
        if isinstance(reader, tcp.Connection) and reader not in readers:
            fd = reader.fileno()
            try:
                self._asyncioEventloop.add_reader(fd, self._readOrWrite, reader, True)
            except OSError:
                pass  # Twisted's own registration knows what to do
            else:
                readers[reader] = fd
                return
        super().addReader(reader)  # type: ignore[no-untyped-call]

    def addWriter(self, writer: Any) -> None:  # noqa: N802  (Twisted's name)
        # Twisted's FileDescriptor.write() calls this after buffering the bytes.
        if writer in self._writers or not isinstance(writer, tcp.Connection) or not _simple(writer):
            super().addWriter(writer)  # type: ignore[no-untyped-call]
            return
        if not self._unsent:
            self._asyncioEventloop.call_soon(self._send_unsent)
        self._unsent[writer] = None

    def _send_unsent(self) -> None:
        connections, self._unsent = self._unsent, {}
        writers: dict[Any, int] = self._writers
        for connection in connections:
            if connection in writers or not connection.connected:
                continue  # handed to Twisted meanwhile, or gone
            # Not simple any more (a close asked for meanwhile, say): Twisted's doWrite does what is due.
            if not (_simple(connection) and _send_buffered(connection)):
                super().addWriter(connection)  # type: ignore[no-untyped-call]


def _simple(connection: tcp.Connection) -> bool:
    """Whether everything ``connection`` has to send is in Twisted's list buffer, with nothing else to do."""
    return not (
        connection.TLS
        or not connection.connected
        or connection.disconnecting
        or connection._writeDisconnecting
        or connection.producerPaused
        or connection.offset != len(connection.dataBuffer)
    )


def _send_buffered(connection: tcp.Connection) -> bool:
    """Send what ``connection`` buffered; True once nothing is left, False to leave the rest to Twisted.

    Twisted's ``FileDescriptor.write`` appended the bytes to ``_tempDataBuffer``.
    Sent here, the buffer is emptied and nothing needs watching. A partial send
    or an error is left to Twisted's own ``doWrite``, which meets the error again.
    """
    pending = connection._tempDataBuffer
    if not pending:
        return True
    data = pending[0] if len(pending) == 1 else b"".join(pending)
    try:
        sent = connection.socket.send(data)
    except OSError:  # a full socket (EAGAIN), or an error: Twisted's doWrite deals with it as usual
        sent = 0
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
