"""The project as an app of its own, so that Django registers the project's system checks."""

from __future__ import annotations

import logging

from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The project itself as an app, so that its system checks are registered."""

    name = "notifyproject"
    verbose_name = "Notification Center project"

    def ready(self) -> None:
        from notifyproject import checks  # noqa: F401  (registers the system checks)

        # Python's warnings go through logging (the py.warnings logger), so that they
        # come out in LOG_FORMAT like every other line on standard error.
        logging.captureWarnings(True)
