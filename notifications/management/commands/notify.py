"""``python manage.py notify <recipient_uuid> "<message>"``: send one notification."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications.conf import conf
from notifications.protocol import REGISTER_MESSAGE, InvalidNotification, message_text, validate_recipient
from notifications.sending import DeliveryFailed, send_notification


class Command(BaseCommand):
    help = (
        "Send a notification to every connection registered as RECIPIENT. "
        "Goes through the channel layer (REDIS_URL); with the process-local "
        "in-memory layer it goes through the running server's WebSocket instead."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("recipient", help="the recipient id (recipient_uuid)")
        parser.add_argument("message", help="the text the recipient receives")
        parser.add_argument(
            "--url",
            help=f"send as a WebSocket client to this server instead of through the channel layer "
            f"(default with the in-memory layer: {conf.SERVER_URL})",
        )

    def handle(self, *args: Any, recipient: str, message: str, url: str | None, **options: Any) -> None:
        try:
            validate_recipient(recipient)
            message_text(message)
        except InvalidNotification as exc:
            raise CommandError(f"Cannot send: {str(exc).rstrip('.')}.") from exc
        if url is None and isinstance(get_channel_layer(), InMemoryChannelLayer):
            # The in-memory layer lives inside each process: publishing into this
            # command's own copy would reach nobody, so talk to the server instead.
            url = conf.SERVER_URL
        if url:
            if message == REGISTER_MESSAGE:
                raise CommandError(
                    f"Cannot send the text {REGISTER_MESSAGE!r} through the server's WebSocket: protocol v1 "
                    "reads it as a registration. Set REDIS_URL to send it through the channel layer."
                )
            self._send_over_websocket(url, recipient, message)
            where = url
        else:
            try:
                send_notification(recipient, message)
            except DeliveryFailed as exc:
                raise CommandError(f"Cannot send: {str(exc).rstrip('.')}.") from exc
            where = "the channel layer"
        self.stdout.write(f"Sent {len(message)} characters to {recipient!r} through {where}.")

    def _send_over_websocket(self, url: str, recipient: str, message: str) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidURI, WebSocketException

        async def send() -> None:
            async with connect(url, open_timeout=10, close_timeout=5) as ws:
                await asyncio.wait_for(ws.recv(), timeout=10)  # the greeting
                await ws.send(json.dumps({"recipient_uuid": recipient, "message": message}))

        try:
            asyncio.run(send())
        except InvalidURI as exc:
            raise CommandError(f"{url!r} is not a WebSocket address (ws://host:port/).") from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise CommandError(
                f"Cannot reach the server at {url}: {exc or type(exc).__name__}. "
                "Is it running? Set REDIS_URL to send through Redis, or pass --url."
            ) from exc
