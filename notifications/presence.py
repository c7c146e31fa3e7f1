"""Who is online: presence queries on the registry of live connections.

Each is one indexed query over live processes only (see
:meth:`notifications.models.RegistrationQuerySet.alive`), so a crashed
process's connections never count. A connection shows up here within
``NOTIFICATIONS_REGISTRY_FLUSH_INTERVAL`` (0.2 s by default) of registering.
"""

from __future__ import annotations

from collections.abc import Iterable

from channels.db import database_sync_to_async
from django.db.models import Count

from notifications.models import Connection, Registration


def is_online(recipient: str) -> bool:
    """Whether at least one live connection registered ``recipient``."""
    return Registration.objects.alive().filter(recipient=recipient).exists()


def connection_count(recipient: str) -> int:
    """How many live connections registered ``recipient`` (on every server process)."""
    return Registration.objects.alive().filter(recipient=recipient).count()


def connection_counts(recipients: Iterable[str]) -> dict[str, int]:
    """:func:`connection_count` of several ids in one query; every id asked for is a key."""
    wanted = set(recipients)
    counts = dict.fromkeys(wanted, 0)
    rows = (
        Registration.objects.alive()
        .filter(recipient__in=wanted)
        .values("recipient")
        .annotate(n=Count("id"))
        .values_list("recipient", "n")
    )
    counts.update(rows)
    return counts


def registered_connection_count() -> int:
    """How many live connections registered at least one id (what a broadcast reaches)."""
    return Connection.objects.alive().filter(registered_at__isnull=False).count()


def registered_ids() -> list[str]:
    """Every id that at least one live connection registered."""
    return list(Registration.objects.alive().values_list("recipient", flat=True).distinct().order_by("recipient"))


# Through database_sync_to_async rather than the async ORM: it closes the worker
# thread's connection when it is old or broken, outside any HTTP request too
# (consumers, background tasks), where nothing else would.
ais_online = database_sync_to_async(is_online)
ais_online.__doc__ = """Async :func:`is_online`."""
aconnection_count = database_sync_to_async(connection_count)
aconnection_count.__doc__ = """Async :func:`connection_count`."""
