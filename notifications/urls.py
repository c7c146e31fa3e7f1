"""The app's HTTP pages: include them under any prefix with ``path("", include("notifications.urls"))``."""

from __future__ import annotations

from django.urls import path

from notifications import views

app_name = "notifications"

urlpatterns = [
    path("example/", views.example, name="example"),
    path("example/token/", views.example_token, name="example-token"),
    path("send/", views.send_view, name="send"),
    path("api/notify/", views.api_notify, name="api-notify"),
]
