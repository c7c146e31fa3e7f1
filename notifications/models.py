"""The registry of live connections, as rows every process and the admin can read.

Each daphne process writes its own rows (see :mod:`notifications.registry`)
and announces itself with a heartbeat; rows of a process whose heartbeat
stopped are purged, so the tables stay true across processes and crashes.
"""

from __future__ import annotations

from django.db import models


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

    class Meta:
        ordering = ["host", "pid", "started_at"]
        verbose_name = "server process"
        verbose_name_plural = "server processes"

    def __str__(self) -> str:
        return f"{self.host} pid {self.pid}"


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

    class Meta:
        ordering = ["connection", "id"]
        verbose_name = "registration"
        verbose_name_plural = "registrations"
        constraints = [
            models.UniqueConstraint(fields=["connection", "recipient"], name="one_registration_per_connection_and_id")
        ]

    def __str__(self) -> str:
        return self.recipient
