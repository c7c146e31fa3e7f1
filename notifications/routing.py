"""The WebSocket URL patterns: ``/`` and ``/ws/`` speak the protocol, any other path is refused."""

from __future__ import annotations

from django.urls import path, re_path

from notifications.consumers import NotificationConsumer, UnknownPath

# "/" is the path every client in the field uses; "/ws/" sits beside the HTTP site.
websocket_urlpatterns = [
    path("", NotificationConsumer.as_asgi()),
    path("ws/", NotificationConsumer.as_asgi()),
    re_path(r"", UnknownPath.as_asgi()),
]
