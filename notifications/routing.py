from django.urls import path

from notifications.consumers import NotificationConsumer

# "/" is the path every client in the field uses; "/ws/" sits beside the HTTP site.
websocket_urlpatterns = [
    path("", NotificationConsumer.as_asgi()),
    path("ws/", NotificationConsumer.as_asgi()),
]
