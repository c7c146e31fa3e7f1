"""Who is online: presence queries on the registry of live connections.

Each is one indexed query that leaves out processes whose heartbeat
stopped, so a crashed process's connections never count. A connection shows
up here within ``NOTIFICATIONS_REGISTRY_FLUSH_INTERVAL`` (0.2 s by default)
of registering. :mod:`notifications.sending` re-exports these functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from channels.db import database_sync_to_async
from django.db.models import Count, QuerySet
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Now

from notifications.conf import conf
from notifications.models import Connection, Registration


def _cutoff() -> CombinedExpression:
    # By the database's clock, which writes the heartbeats: the hosts' clocks may differ.
    return Now() - timedelta(seconds=conf.STALE_AFTER)


def _live_registrations() -> QuerySet[Registration]:
    """Registrations of connections whose process still beats its heartbeat."""
    return Registration.objects.filter(connection__process__heartbeat_at__gte=_cutoff())


def _registrations(recipient: str) -> QuerySet[Registration]:
    return _live_registrations().filter(recipient=recipient)


def is_online(recipient: str) -> bool:
    """Whether at least one live connection registered ``recipient``."""
    return _registrations(recipient).exists()


def connection_count(recipient: str) -> int:
    """How many live connections registered ``recipient`` (on every server process)."""
    return _registrations(recipient).count()


def connection_counts(recipients: Iterable[str]) -> dict[str, int]:
    """:func:`connection_count` of several ids in one query; every id asked for is a key."""
    wanted = set(recipients)
    counts = dict.fromkeys(wanted, 0)
    rows = (
        _live_registrations()
        .filter(recipient__in=wanted)
        .values("recipient")
        .annotate(n=Count("id"))
        .values_list("recipient", "n")
    )
    counts.update(rows)
    return counts


def registered_connection_count() -> int:
    """How many live connections registered at least one id (what a broadcast reaches)."""
    return Connection.objects.filter(registered_at__isnull=False, process__heartbeat_at__gte=_cutoff()).count()


def registered_ids() -> list[str]:
    """Every id that at least one live connection registered."""
    return list(_live_registrations().values_list("recipient", flat=True).distinct().order_by("recipient"))


# Through database_sync_to_async rather than the async ORM: it closes the worker
# thread's connection when it is old or broken, outside any HTTP request too
# (consumers, background tasks), where nothing else would.
ais_online = database_sync_to_async(is_online)
ais_online.__doc__ = """Async :func:`is_online`."""
aconnection_count = database_sync_to_async(connection_count)
aconnection_count.__doc__ = """Async :func:`connection_count`."""
