"""The WebSocket application as the project routes it, for consumers under test in this process.

Built from the app's routing without ``notifyproject.asgi``, whose import
calls ``start_server()``: the test process is not a server.
"""

from channels.routing import URLRouter

from notifications.origins import NotificationOriginValidator
from notifications.routing import websocket_urlpatterns

application = NotificationOriginValidator(URLRouter(websocket_urlpatterns))
