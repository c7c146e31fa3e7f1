"""The app's configuration: registers its system checks when Django starts."""

from __future__ import annotations

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        from notifications import checks  # noqa: F401  (registers the system checks)
