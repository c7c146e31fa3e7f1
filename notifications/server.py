"""The one start-up of a server process: checks, the choice of transport, the registry.

Call :func:`start_server` from the project's ASGI module, after Django is set
up and before the application is served::

    django_asgi_app = get_asgi_application()
    from notifications.server import start_server
    start_server()

Nothing happens on import; a process that never calls it (a shell, a
worker, a test) is not a server: it records no connections, and
``send()`` reaches the clients through the server's WebSocket when the
channel layer is the in-memory one (see ``NOTIFICATIONS_SEND_THROUGH``).
"""

from __future__ import annotations

from django.core.checks import ERROR, run_checks
from django.core.exceptions import ImproperlyConfigured

_serving = False


def start_server() -> None:
    """Make this process a notification server; :class:`ImproperlyConfigured` if a system check fails.

    daphne runs no system checks (``runserver`` does), so they run here,
    deployment checks included, and every error is one line of the message.
    Then ``send()`` delivers through this process's channel layer, which
    reaches its clients, and the registry starts recording its connections.
    """
    global _serving
    errors = [message for message in run_checks(include_deployment_checks=True) if message.level >= ERROR]
    if errors:
        raise ImproperlyConfigured("\n".join(f"{m.id}: {m.msg}" + (f" {m.hint}" if m.hint else "") for m in errors))
    _serving = True
    from notifications.registry import registry

    registry.serve()


def is_serving() -> bool:
    """Whether :func:`start_server` made this process a server."""
    return _serving
