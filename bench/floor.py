"""The floor under the project: the baseline's relay as a bare ASGI app, served by daphne as the project is.

No Django, no channel layer, no registry: the old server's logic (a dict from
id to connections, each notification sent to each recipient in turn) on the
project's own launch line (:mod:`notifyproject.server`: daphne on uvloop,
with the same WebSocket options as ``bin/daphne``). What it costs per message
is what daphne (Twisted, autobahn, its ASGI bridge) costs before the project
adds anything: a ratio target below it cannot be met while the project runs
on daphne. Served by ``python -m bench`` as ``daphne-floor``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bench.baseline import GREETING, decide

Send = Callable[[dict[str, Any]], Awaitable[None]]
clients: dict[str, set[Send]] = {}


async def application(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Send) -> None:
    if scope["type"] != "websocket":
        return
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": GREETING})
    registered: list[str] = []
    try:
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            frame = event.get("text")
            if frame is None or (action := decide(frame)) is None:
                continue
            recipient, text = action
            if text is None:
                clients.setdefault(recipient, set()).add(send)
                registered.append(recipient)
                continue
            for peer in list(clients.get(recipient, ())):
                await peer({"type": "websocket.send", "text": text})
    finally:
        for recipient in registered:
            peers = clients.get(recipient)
            if peers is not None:
                peers.discard(send)
                if not peers:
                    del clients[recipient]
