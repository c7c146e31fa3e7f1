"""WebSocket clients that behave exactly as the clients in the field do."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import ClientConnection, connect

from notifications.protocol import GREETING

TIMEOUT = 10.0


async def open_client(url: str, **kwargs: object) -> ClientConnection:
    """Connect and read the greeting, as every client does first."""
    ws = await connect(url, open_timeout=TIMEOUT, **kwargs)
    greeting = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert greeting == GREETING
    return ws


def frame(recipient: object, message: object) -> str:
    return json.dumps({"recipient_uuid": recipient, "message": message})


async def register(ws: ClientConnection, recipient: str) -> None:
    await ws.send(frame(recipient, "connected"))


async def send_once(url: str, recipient: str, message: object) -> None:
    """The short-lived sender of the field: connect, greet, send one frame, close."""
    ws = await open_client(url)
    await ws.send(frame(recipient, message))
    await ws.close()


PROBE_PREFIX = "probe:"


async def register_confirmed(ws: ClientConnection, recipient: str, seconds: float = TIMEOUT) -> None:
    """Register and wait until notifications for ``recipient`` really reach ``ws``.

    The protocol sends nothing back on registration, so the client proves it
    by sending itself probes until one arrives (each attempt bounded in time).
    """
    await register(ws, recipient)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    attempt = 0
    while loop.time() < deadline:
        attempt += 1
        token = f"{PROBE_PREFIX}{id(ws)}:{attempt}"
        await ws.send(frame(recipient, token))
        try:
            while True:
                data = await asyncio.wait_for(ws.recv(), 0.5)
                if data == token:
                    return
        except TimeoutError:
            continue
    raise TimeoutError(f"registration of {recipient!r} not effective after {seconds} s")


async def receive(ws: ClientConnection, seconds: float = TIMEOUT) -> str:
    """The next notification, skipping registration probes."""
    while True:
        data = await asyncio.wait_for(ws.recv(), seconds)
        if not (isinstance(data, str) and data.startswith(PROBE_PREFIX)):
            return data


async def receives_nothing(ws: ClientConnection, within: float = 0.5) -> bool:
    """True if no frame arrives within ``within`` seconds (the connection stays open)."""
    try:
        data = await receive(ws, within)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected frame: {data!r}")
