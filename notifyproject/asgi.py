"""ASGI entry point: HTTP to Django, WebSocket to the notification consumer."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifyproject.settings")
# Set up Django (apps, settings) before anything imports models or consumers.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from notifications.checks import refuse_to_start_on_errors  # noqa: E402
from notifications.origins import NotificationOriginValidator  # noqa: E402
from notifications.registry import registry  # noqa: E402
from notifications.routing import websocket_urlpatterns  # noqa: E402
from notifications.sending import mark_as_server  # noqa: E402

refuse_to_start_on_errors()
registry.start_with_daphne()
mark_as_server()  # the in-memory layer of this process reaches the clients: send through it

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": NotificationOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
