"""The WebSocket fallback: hand notifications to the running server as a protocol v1 client would.

Used when the channel layer is the in-memory one and this process is not the
server (a shell, a cron script, a worker): publishing into its own memory
would reach nobody, so it connects to the server's WebSocket instead, as the
old server's ``client.py`` did.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from notifications import metrics
from notifications.exceptions import DeliveryFailed, InvalidNotification
from notifications.protocol import GREETING, REGISTER_MESSAGE
from notifications.senders import server_key

logger = logging.getLogger(__name__)

SERVER_TIMEOUT = 10.0  # seconds to reach the server's WebSocket and hand a notification over
# Seconds for the first "sent" reply; without one, the server speaks protocol v1 only.
FIRST_REPLY_TIMEOUT = 3.0


async def send_through_server(url: str, items: list[tuple[str, str]]) -> list[str | None]:
    """Hand ``(recipient, text)`` pairs to the server at ``url``: the outcome of each, as the server replied.

    A failure is counted and logged, then raised.
    """
    try:
        return await _hand_to_server(url, items)
    except DeliveryFailed as exc:
        metrics.undeliverable("server_unreachable", "notifications handed to the server", len(items))
        logger.warning("Undeliverable: %d notification(s) not handed to the server: %s", len(items), exc)
        raise


async def _hand_to_server(url: str, items: list[tuple[str, str]]) -> list[str | None]:
    """Hand notifications to the server at ``url`` as v2 send frames over one WebSocket connection.

    Handed over means: the server greeted as a Notification Center does,
    answered every frame with its ``sent`` reply (the outcome: live, pending,
    dropped), and answered the close normally (1000). A frame over its size
    limit, say, makes it drop the connection instead, which raises here.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException

    if any(text == REGISTER_MESSAGE for _, text in items):
        raise InvalidNotification(
            f"the text {REGISTER_MESSAGE!r} cannot go through the server's WebSocket (protocol v1 reads it as "
            "a registration); send it through a channel layer that reaches the server (Redis)"
        )
    try:
        # The project's own key: a server that lets only keyed senders send (WS_SENDERS) lets this process.
        key = server_key()
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        async with connect(
            url, open_timeout=SERVER_TIMEOUT, close_timeout=SERVER_TIMEOUT, additional_headers=headers
        ) as ws:
            async with asyncio.timeout(SERVER_TIMEOUT + len(items) / 1000):
                greeting = await ws.recv()
                if greeting != GREETING:
                    raise DeliveryFailed(f"the server at {url} is not a Notification Center (it did not greet as one)")
                for recipient, text in items:
                    frame = {"recipient_uuid": recipient, "message": text, "v": 2}
                    await ws.send(json.dumps(frame, ensure_ascii=False))
                outcomes = await _outcomes(ws, url, [recipient for recipient, _ in items])
    except (InvalidURI, ValueError) as exc:  # ValueError: a port out of range, a broken IPv6 address
        raise DeliveryFailed(f"{url!r} is not a WebSocket address (ws://host:port/)") from exc
    except ConnectionClosed as exc:
        raise _dropped(url, exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else "") from exc
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise DeliveryFailed(
            f"cannot reach the server at {url} ({str(exc) or type(exc).__name__}): is it running? "
            "NOTIFICATIONS_SERVER_URL says where it listens; with a Redis channel layer, notifications go "
            "through Redis instead"
        ) from exc
    # daphne queues a connection's frames for its consumer in order, then the
    # close: the consumer relays every frame it took before it handles the disconnect.
    if ws.close_code != 1000 or ws.protocol.close_rcvd is None:
        raise _dropped(url, ws.close_code, ws.close_reason or "")
    return outcomes


async def _outcomes(ws: Any, url: str, recipients: list[str]) -> list[str | None]:
    """The server's ``sent`` replies, in order; all None from a server that answers none (protocol v1 only).

    Such a server (the old one, or an older version of this one during an
    upgrade) still took the notifications: the clean close says so.
    """
    try:
        first = await asyncio.wait_for(ws.recv(), FIRST_REPLY_TIMEOUT)
    except TimeoutError:
        return [None] * len(recipients)
    outcomes = [_outcome(first, url, recipients[0])]
    for recipient in recipients[1:]:
        outcomes.append(_outcome(await ws.recv(), url, recipient))
    return outcomes


def _outcome(data: Any, url: str, recipient: str) -> str | None:
    """The outcome in the server's ``sent`` reply to the send frame for ``recipient``."""
    try:
        reply = json.loads(data)
    except (TypeError, ValueError):
        reply = None
    if not (isinstance(reply, dict) and reply.get("type") == "sent" and reply.get("recipient_uuid") == recipient):
        raise DeliveryFailed(f"the server at {url} answered a notification with {str(data)[:80]!r}, not a sent reply")
    if reply.get("outcome") == "refused":
        raise DeliveryFailed(
            f"the server at {url} refused the notification ({reply.get('code')}): it lets only its own processes "
            "send (NOTIFY_WS_SENDERS), and this one's DJANGO_SECRET_KEY is not the server's (or is unset)"
        )
    outcome = reply.get("outcome")
    return outcome if isinstance(outcome, str) else None


def _dropped(url: str, code: int | None, reason: str) -> DeliveryFailed:
    why = f"close code {code}" + (f", {reason}" if reason else "") if code else "no close code"
    return DeliveryFailed(
        f"the server at {url} dropped the connection ({why}) before confirming it took every notification: "
        "a message over its size limit (1 MiB by default)?"
    )
