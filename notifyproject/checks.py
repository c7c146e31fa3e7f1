"""The project's own system checks (the app's are in notifications/checks.py)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.exceptions import ImproperlyConfigured


@register(Tags.security, deploy=True)
def check_secret_key(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A deployment (a server, ``check --deploy``) needs a secret key; a command such as ``notify`` does not."""
    try:
        key = settings.SECRET_KEY
    except ImproperlyConfigured:  # Django refuses to hand out an empty key
        key = ""
    if not settings.DEBUG and not key:
        return [
            Error(
                "DJANGO_SECRET_KEY is not set and DJANGO_DEBUG is off.",
                hint="Set DJANGO_SECRET_KEY to a long random string, or DJANGO_DEBUG=1 for development.",
                id="notifyproject.E001",
            )
        ]
    return []
