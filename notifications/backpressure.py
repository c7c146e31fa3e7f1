"""Know when a client has stopped reading, so that its notifications cannot pile up without bound.

ASGI has no flow control for ``websocket.send``: daphne hands every frame to
Twisted, whose transport buffers whatever the socket does not take. A client
that stops reading would make that buffer, and the server's memory, grow with
every notification sent to it. Twisted's producer API says when a
transport's buffer is full (``pauseProducing``) and when it has drained
(``resumeProducing``); :func:`watch` registers for it on daphne's protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.web.http import HTTPChannel
from zope.interface import implementer


@implementer(IPushProducer)
class WriteWindow:
    """Whether the connection's socket takes more data right now.

    ``paused`` is true while the transport holds more than its buffer size
    (64 KiB in Twisted) of unsent data; ``on_resume`` runs when it drains.
    """

    def __init__(self) -> None:
        self.paused = False
        self.on_resume: Callable[[], None] | None = None

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted's interface)
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False
        if self.on_resume is not None:
            self.on_resume()

    def stopProducing(self) -> None:  # noqa: N802
        self.paused = False
        self.on_resume = None


def watch(send: Any) -> WriteWindow | None:
    """A :class:`WriteWindow` on the connection behind an ASGI ``send``, or None.

    daphne's ``send`` is a ``functools.partial`` of its server's reply method
    bound to the connection's protocol; any other server (or the test
    communicator) yields None, and then nothing is bounded here.
    """
    args = getattr(send, "args", ())
    protocol = args[0] if args else None
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
