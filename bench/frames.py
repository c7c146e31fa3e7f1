"""``python -m bench.frames``: CPU per WebSocket frame read and written, autobahn's path against the app's.

One connection of each protocol class is opened over an in-memory Twisted
transport (the handshake as a client sends it), then the same masked
82-byte text frame, a notification as a client sends it, is fed to each
many times, and the same payload sent back as many times. "autobahn" is
daphne's protocol as daphne ships it; "app" is :mod:`notifications.frames`.
The figures are µs per frame on this machine, best of several rounds; the
ratio is what carries to another machine.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from typing import Any

from daphne.ws_protocol import WebSocketProtocol as DaphneProtocol
from twisted.internet.testing import StringTransport

from notifications import masking
from notifications.frames import WebSocketProtocol as AppProtocol

PAYLOAD = b'{"recipient_uuid": "123e4567-e89b-12d3-a456-426614174000", "message": "task done"}'
FRAMES = 20_000
ROUNDS = 5


class _Transport(StringTransport):
    """Twisted's in-memory transport; a connection autobahn drops unregisters a producer it never registered."""

    def unregisterProducer(self) -> None:  # noqa: N802
        self.producer = None


def _measured(base: type[Any]) -> type[Any]:
    class Measured(base):  # type: ignore[misc,valid-type]
        """``base`` with daphne's application side left out: the handshake accepted, messages counted."""

        def __init__(self) -> None:
            super().__init__()
            self.messages: list[tuple[bytes, bool]] = []

        def onConnect(self, request: Any) -> None:  # noqa: N802
            return None

        def onOpen(self) -> None:  # noqa: N802
            pass

        def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
            self.messages.append((payload, isBinary))

        def onClose(self, wasClean: bool, code: int, reason: str) -> None:  # noqa: N802, N803
            pass

    return Measured


def open_connection(base: type[Any], **options: Any) -> tuple[Any, StringTransport]:
    """An open server connection of a subclass of ``base`` (autobahn's ``options``), over an in-memory transport."""
    from autobahn.twisted.websocket import WebSocketServerFactory

    factory = WebSocketServerFactory("ws://127.0.0.1")
    factory.protocol = _measured(base)
    factory.setProtocolOptions(**options)
    protocol = factory.buildProtocol(("127.0.0.1", 0))
    transport = _Transport()
    protocol.makeConnection(transport)
    key = base64.b64encode(os.urandom(16)).decode()
    protocol.dataReceived(
        (
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    if protocol.state != protocol.STATE_OPEN:
        raise RuntimeError(f"the handshake did not open the connection: {transport.value()!r}")
    transport.clear()
    return protocol, transport


def client_frame(payload: bytes, first: int = 0x81, mask: bytes | None = None) -> bytes:
    """``payload`` as a client sends it: one masked frame (by default final, text), its length in 7 or 16 bits."""
    mask = os.urandom(4) if mask is None else mask
    size = len(payload)
    length = bytes((0x80 | size,)) if size < 126 else bytes((0x80 | 126,)) + size.to_bytes(2, "big")
    return bytes((first,)) + length + mask + masking.unmask(mask, payload)


def per_frame(base: type[Any]) -> tuple[float, float]:
    """µs per frame read and per frame written by a connection of ``base``, best of ROUNDS."""
    protocol, transport = open_connection(base)
    frame = client_frame(PAYLOAD)
    read = written = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(FRAMES):
            protocol.dataReceived(frame)
        read = min(read, (time.perf_counter() - start) / FRAMES * 1e6)
        start = time.perf_counter()
        for _ in range(FRAMES):
            protocol.sendMessage(PAYLOAD, False)
        written = min(written, (time.perf_counter() - start) / FRAMES * 1e6)
        transport.clear()
        if len(protocol.messages) != FRAMES or protocol.messages[-1] != (PAYLOAD, False):
            raise RuntimeError(f"{len(protocol.messages)} messages read, not {FRAMES}")
        protocol.messages.clear()
    return read, written


def main() -> None:
    masking.install()  # as the app's launcher does: autobahn's path with the app's masker
    library, app = per_frame(DaphneProtocol), per_frame(AppProtocol)
    print(f"| frame of {len(PAYLOAD)} bytes | autobahn (µs) | app (µs) | app / autobahn |")
    print("|---|---|---|---|")
    for i, what in enumerate(("read", "written")):
        print(f"| {what} | {library[i]:.2f} | {app[i]:.2f} | {app[i] / library[i]:.2f}x |")
    print(f"\nPython {sys.version.split()[0]}; best of {ROUNDS} rounds of {FRAMES:,} frames.")


if __name__ == "__main__":
    main()
