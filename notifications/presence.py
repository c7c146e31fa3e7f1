"""Who is online: presence queries on the registry of live connections.

Each is one indexed query (on the registered id) that leaves out processes
whose heartbeat stopped, so a crashed process's connections never count.
A connection shows up here within ``NOTIFICATIONS_REGISTRY_FLUSH_INTERVAL``
(0.2 s by default) of registering. :mod:`notifications.sending` re-exports
these functions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from channels.db import database_sync_to_async
from django.db.models import QuerySet

from notifications.conf import conf
from notifications.models import Registration


def _registrations(recipient: str) -> QuerySet[Registration]:
    cutoff = datetime.now(tz=UTC) - timedelta(seconds=conf.STALE_AFTER)
    return Registration.objects.filter(recipient=recipient, connection__process__heartbeat_at__gte=cutoff)


def is_online(recipient: str) -> bool:
    """Whether at least one live connection registered ``recipient``."""
    return _registrations(recipient).exists()


def connection_count(recipient: str) -> int:
    """How many live connections registered ``recipient`` (on every server process)."""
    return _registrations(recipient).count()


# Through database_sync_to_async rather than the async ORM: it closes the worker
# thread's connection when it is old or broken, outside any HTTP request too
# (consumers, background tasks), where nothing else would.
ais_online = database_sync_to_async(is_online)
ais_online.__doc__ = """Async :func:`is_online`."""
aconnection_count = database_sync_to_async(connection_count)
aconnection_count.__doc__ = """Async :func:`connection_count`."""
