from __future__ import annotations

import logging

from channels.generic.websocket import AsyncWebsocketConsumer
from django.urls import path, re_path

from notifications.consumers import NotificationConsumer
from notifications.protocol import describe

logger = logging.getLogger(__name__)


class UnknownPath(AsyncWebsocketConsumer):
    """Any other path: the handshake is refused (HTTP 403) with one log line, not a traceback."""

    async def connect(self) -> None:
        logger.warning("Refused a WebSocket to the unknown path %s", describe(self.scope.get("path", "")))
        await self.close()


# "/" is the path every client in the field uses; "/ws/" sits beside the HTTP site.
websocket_urlpatterns = [
    path("", NotificationConsumer.as_asgi()),
    path("ws/", NotificationConsumer.as_asgi()),
    re_path(r"", UnknownPath.as_asgi()),
]
