"""The registry of live connections, as rows every process and the admin can read.

Each daphne process writes its own rows (see :mod:`notifications.registry`)
and announces itself with a heartbeat; rows of a process whose heartbeat
stopped are purged, so the tables stay true across processes and crashes.

Whether a process is alive is decided here, once: its heartbeat is younger
than ``NOTIFICATIONS_STALE_AFTER`` by the database's clock (which wrote the
heartbeat; the hosts' clocks may differ). Presence, the purge and the admin
all use these querysets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from django.db import models, transaction
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Now

from notifications.conf import conf

# Rows per statement: well under every backend's limit on query parameters.
CHUNK = 500

T = TypeVar("T")


def liveness_cutoff(stale_after: float | None = None) -> CombinedExpression:
    """The oldest heartbeat of a live process, as an SQL expression on the database's clock."""
    return Now() - timedelta(seconds=conf.STALE_AFTER if stale_after is None else stale_after)


def chunks(items: Iterable[T], size: int = CHUNK) -> Iterator[list[T]]:
    """``items`` in lists of at most ``size``."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True)
class PurgeResult:
    processes: int
    connections: int
    process_ids: tuple[str, ...] = ()  # the processes purged


class ServerProcessQuerySet(models.QuerySet["ServerProcess"]):
    def alive(self) -> ServerProcessQuerySet:
        """Processes whose heartbeat is younger than ``NOTIFICATIONS_STALE_AFTER``."""
        return self.filter(heartbeat_at__gte=liveness_cutoff())

    def stale(self, stale_after: float | None = None) -> ServerProcessQuerySet:
        """Processes whose heartbeat is older than ``stale_after`` seconds (default ``NOTIFICATIONS_STALE_AFTER``)."""
        return self.filter(heartbeat_at__lt=liveness_cutoff(stale_after))

    def with_liveness(self) -> ServerProcessQuerySet:
        """Annotated with ``is_alive``, decided as :meth:`alive` decides it."""
        return self.annotate(
            is_alive=models.ExpressionWrapper(
                models.Q(heartbeat_at__gte=liveness_cutoff()), output_field=models.BooleanField()
            ),
            database_now=Now(),
        )

    def purge(self) -> PurgeResult:
        """Delete these processes with their connections and registrations, in one transaction.

        Rows another process is purging right now are skipped (PostgreSQL;
        SQLite serialises writers anyway) rather than waited for.
        """
        with transaction.atomic():
            process_ids = list(self.select_for_update(skip_locked=True).values_list("pk", flat=True))
            return purge_processes(process_ids)


class ConnectionQuerySet(models.QuerySet["Connection"]):
    def alive(self) -> ConnectionQuerySet:
        """Connections of live processes."""
        return self.filter(process__heartbeat_at__gte=liveness_cutoff())

    def delete_by_ids(self, temp_ids: Iterable[str]) -> int:
        """Delete these connections and their registrations, a chunk at a time; how many connections went."""
        deleted = 0
        for chunk in chunks(temp_ids):
            Registration.objects.filter(connection_id__in=chunk).delete()
            deleted += self.filter(pk__in=chunk).delete()[1].get(Connection._meta.label, 0)
        return deleted


class RegistrationQuerySet(models.QuerySet["Registration"]):
    def alive(self) -> RegistrationQuerySet:
        """Registrations of connections whose process still beats its heartbeat."""
        return self.filter(connection__process__heartbeat_at__gte=liveness_cutoff())

    def ids_by_process(self) -> dict[str, int]:
        """How many distinct ids these registrations hold, by server process id."""
        return dict(
            self.values("connection__process_id")
            .annotate(n=models.Count("recipient", distinct=True))
            .values_list("connection__process_id", "n")
        )

    def distinct_ids(self) -> int:
        """How many distinct ids these registrations hold in all."""
        return self.values("recipient").distinct().count()


def purge_processes(process_ids: list[str]) -> PurgeResult:
    """Delete these processes' rows (call inside a transaction that locked them)."""
    connections = 0
    for process_id in process_ids:
        temp_ids = list(Connection.objects.filter(process_id=process_id).values_list("pk", flat=True))
        connections += Connection.objects.delete_by_ids(temp_ids)
    ServerProcess.objects.filter(pk__in=process_ids).delete()
    return PurgeResult(processes=len(process_ids), connections=connections, process_ids=tuple(process_ids))


class ServerProcess(models.Model):
    """One running daphne process that holds WebSocket connections."""

    # Host and pid alone are not unique over time (pids are reused, containers
    # restart with the same host name), so each process start gets a new id.
    id = models.CharField("process id", max_length=32, primary_key=True)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField("pid")
    started_at = models.DateTimeField("started")
    heartbeat_at = models.DateTimeField("last heartbeat", db_index=True)
    # The process's counters (notifications.metrics) since it started, written
    # with its registry writes: nothing it failed to deliver goes unseen.
    relayed = models.PositiveBigIntegerField("relayed", default=0)
    undeliverable = models.PositiveBigIntegerField("undeliverable", default=0)
    rejected_frames = models.PositiveBigIntegerField("ignored frames", default=0)
    # Every counter of notifications.metrics, by name (the three above among them).
    counters = models.JSONField("counters", default=dict, blank=True)
    # Its last undeliverable notifications, newest last: [unix time, reason, whose] (metrics.recent_undeliverable).
    recent_undeliverable = models.JSONField("last undeliverable", default=list, blank=True)

    objects = ServerProcessQuerySet.as_manager()

    class Meta:
        ordering = ["host", "pid", "started_at"]
        verbose_name = "server process"
        verbose_name_plural = "server processes"

    def __str__(self) -> str:
        return f"{self.host} pid {self.pid}"


class ActivitySample(models.Model):
    """A process's counters as they stood at the end of one minute: the admin dashboard's last hour.

    Each registry write replaces the row of the current minute, so a minute's
    activity is the difference between its row and the process's row before
    it. Rows outlive their process (a crash must not erase the hour that led
    to it) and are deleted once older than :data:`ACTIVITY_KEPT`.
    """

    process_key = models.CharField("process id", max_length=32)
    process = models.CharField("process", max_length=300)  # host:pid, as the metrics label it
    started_at = models.DateTimeField("process started")
    minute = models.DateTimeField(db_index=True)
    counters = models.JSONField(default=dict)

    class Meta:
        ordering = ["minute", "process"]
        verbose_name = "activity sample"
        constraints = [models.UniqueConstraint(fields=["process_key", "minute"], name="one_sample_per_process_minute")]

    def __str__(self) -> str:
        return f"{self.process} at {self.minute:%H:%M}"


# The dashboard shows the last hour; a little more is kept, so that its first minute has a row before it.
ACTIVITY_KEPT = timedelta(minutes=65)


class Dashboard(ServerProcess):
    """The admin's dashboard (no table of its own: a proxy, so that the admin index links to it)."""

    class Meta:
        proxy = True
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"


class Connection(models.Model):
    """One open WebSocket, from its handshake until it closes."""

    temp_id = models.CharField("temporary id", max_length=32, primary_key=True)
    process = models.ForeignKey(
        ServerProcess, on_delete=models.CASCADE, related_name="connections", verbose_name="server process"
    )
    channel_name = models.CharField(max_length=255)
    connected_at = models.DateTimeField("connected", db_index=True)
    registered_at = models.DateTimeField("first registered", null=True, blank=True, db_index=True)
    last_activity_at = models.DateTimeField("last activity")
    client_address = models.CharField(max_length=64, blank=True, db_index=True)
    user_agent = models.CharField(max_length=512, blank=True)
    origin = models.CharField(max_length=255, blank=True)

    objects = ConnectionQuerySet.as_manager()

    class Meta:
        ordering = ["-connected_at", "temp_id"]
        verbose_name = "live connection"
        verbose_name_plural = "live connections"
        permissions = [("send_notification", "Can send a message to live connections")]

    def __str__(self) -> str:
        return self.temp_id


class Registration(models.Model):
    """An id a connection registered: one row per (connection, id), so presence queries use an index."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="registrations")
    recipient = models.CharField("id", max_length=255, db_index=True)

    objects = RegistrationQuerySet.as_manager()

    class Meta:
        ordering = ["connection", "id"]
        verbose_name = "registration"
        verbose_name_plural = "registrations"
        constraints = [
            models.UniqueConstraint(fields=["connection", "recipient"], name="one_registration_per_connection_and_id")
        ]

    def __str__(self) -> str:
        return self.recipient


def field_length(model: type[models.Model], name: str) -> int:
    """The ``max_length`` of a character field, to cut client-chosen text to fit."""
    field: Any = model._meta.get_field(name)
    return int(field.max_length)
