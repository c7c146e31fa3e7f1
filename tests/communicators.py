"""Clients of the ASGI application in this process, through Channels' WebsocketCommunicator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from channels.testing import WebsocketCommunicator

from harness.clients import PROBE_PREFIX, frame
from notifications.protocol import GREETING, REGISTER_MESSAGE
from tests.asgi import application


async def connect(path: str = "/", headers: list[tuple[bytes, bytes]] | None = None) -> WebsocketCommunicator:
    """Connect and read the greeting, as every client does first."""
    communicator = WebsocketCommunicator(application, path, headers=headers or [])
    connected, _ = await communicator.connect()
    assert connected
    assert await communicator.receive_from() == GREETING
    return communicator


async def send(communicator: WebsocketCommunicator, recipient: object, message: object) -> None:
    await communicator.send_to(text_data=frame(recipient, message))


async def register(communicator: WebsocketCommunicator, recipient: str) -> None:
    """Register ``recipient`` and wait until it is in effect.

    The consumer handles a connection's frames in order: once a probe sent to
    itself arrives, the registration before it is in effect.
    """
    await send(communicator, recipient, REGISTER_MESSAGE)
    probe = f"{PROBE_PREFIX}{id(communicator)}"
    await send(communicator, recipient, probe)
    assert await communicator.receive_from() == probe


async def connect_registered(recipient: str, path: str = "/") -> WebsocketCommunicator:
    """Connect, read the greeting and register ``recipient``, confirmed by a probe."""
    communicator = await connect(path)
    await register(communicator, recipient)
    return communicator


@asynccontextmanager
async def connected(recipient: str | None = None) -> AsyncIterator[WebsocketCommunicator]:
    """A client for the length of the block (registered as ``recipient`` if given), then disconnected."""
    communicator = await (connect() if recipient is None else connect_registered(recipient))
    try:
        yield communicator
    finally:
        await communicator.disconnect()
