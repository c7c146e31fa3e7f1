"""ASGI entry point: HTTP to Django (after the operators' endpoints), WebSocket to the notification consumer."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application
from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifyproject.settings")
# Set up Django (apps, settings) before anything imports models or consumers.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from notifications.endpoints import OperatorEndpoints  # noqa: E402
from notifications.origins import NotificationOriginValidator  # noqa: E402
from notifications.proxies import TrustedProxyHeaders  # noqa: E402
from notifications.routing import websocket_urlpatterns  # noqa: E402
from notifications.server import start_server  # noqa: E402

try:
    start_server()  # the system checks, sending through this process's layer, the registry
except ImproperlyConfigured as exc:
    # One line per failed check on standard error, exit status 1: no traceback.
    raise SystemExit("\n".join(f"Configuration error: {line}" for line in str(exc).splitlines())) from None

# Forwarding headers are believed from NOTIFY_TRUSTED_PROXIES alone, when set (notifications/proxies.py).
application = TrustedProxyHeaders(
    ProtocolTypeRouter(
        {
            # /healthz, /readyz and /metrics are answered before Django (any Host, no log line per call).
            "http": OperatorEndpoints(django_asgi_app),
            "websocket": NotificationOriginValidator(URLRouter(websocket_urlpatterns)),
        }
    )
)
