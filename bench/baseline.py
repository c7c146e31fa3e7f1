"""The baseline: a single-process ``websockets`` server of protocol v1, as the old server was.

It keeps what the old server did (one process, a dict from id to connections,
``await send`` to each recipient in turn) and fixes only what PROTOCOL.md calls
a bug (several connections may register one id), so that the comparison is
about the relay, not about features. Run: ``python -m bench.baseline PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

GREETING = "..:: Hello from the Notification Center ::.."

logger = logging.getLogger("bench.baseline")
clients: dict[str, set[ServerConnection]] = {}


def decide(frame: str) -> tuple[str, str | None] | None:
    """What the old server did with a text frame: (id, None) registers, (id, text) relays, None ignores."""
    try:
        data = json.loads(frame)
    except ValueError:
        logger.info("Plain text ignored")
        return None
    if not isinstance(data, dict) or "message" not in data:
        return None
    recipient = data.get("recipient_uuid")
    if not isinstance(recipient, str) or not recipient:
        return None
    message = data["message"]
    if message == "connected":
        return recipient, None
    return recipient, message if isinstance(message, str) else json.dumps(message)


async def handler(ws: ServerConnection) -> None:
    registered: list[str] = []
    logger.info("Client connected. Connections total: %d", len(clients))
    try:
        await ws.send(GREETING)
        async for frame in ws:
            if not isinstance(frame, str) or (action := decide(frame)) is None:
                continue
            recipient, text = action
            if text is None:
                clients.setdefault(recipient, set()).add(ws)
                registered.append(recipient)
                continue
            for peer in list(clients.get(recipient, ())):
                with contextlib.suppress(ConnectionClosed):
                    await peer.send(text)
    except ConnectionClosed:
        pass
    finally:
        for recipient in registered:
            peers = clients.get(recipient)
            if peers is not None:
                peers.discard(ws)
                if not peers:
                    del clients[recipient]
        logger.info("Client disconnected. Connections total: %d", len(clients))


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, ping_interval=60, ping_timeout=30) as server:
        await server.serve_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
