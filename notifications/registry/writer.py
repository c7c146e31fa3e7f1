"""The registry's database writes for one server process; each runs in a worker thread, in one transaction."""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import transaction
from django.db.models.functions import Now

from notifications import metrics
from notifications.models import (
    ACTIVITY_KEPT,
    CHUNK,
    ActivitySample,
    Connection,
    Registration,
    ServerProcess,
    chunks,
    purge_processes,
)
from notifications.registry.state import Batch, LiveConnection

logger = logging.getLogger(__name__)


class ProcessGone(Exception):
    """This process's row was purged by another process (it missed heartbeats)."""


def _at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _row(live: LiveConnection, process_id: str) -> Connection:
    return Connection(
        temp_id=live.temp_id,
        process_id=process_id,
        channel_name=live.channel_name,
        connected_at=_at(live.connected_at),
        registered_at=_at(live.registered_at) if live.registered_at is not None else None,
        last_activity_at=_at(live.last_activity_at),
        client_address=live.client_address,
        user_agent=live.user_agent,
        origin=live.origin,
    )


@dataclass(frozen=True)
class DatabaseWriter:
    """Writes one process's row, its connections and registrations."""

    process_id: str
    host: str
    pid: int
    started_at: float

    def _insert_process_row(self) -> None:
        # Heartbeats are written by the database's clock (Now()), never by this
        # host's: hosts whose clocks differ share one database, and a clock
        # behind would get a live process purged, a clock ahead keep a dead one.
        ServerProcess.objects.bulk_create(
            [
                ServerProcess(
                    id=self.process_id,
                    host=self.host,
                    pid=self.pid,
                    started_at=_at(self.started_at),
                    heartbeat_at=Now(),
                )
            ],
            ignore_conflicts=True,
        )

    def announce(self) -> list[str]:
        """Write the process's row; purge earlier processes of this host that are gone, and stale ones.

        Returns the ids of the processes purged.
        """
        with transaction.atomic():
            self._insert_process_row()
            # Earlier processes on this host that are gone (a restart, a crash):
            # no need to wait for their heartbeat to go stale. Rows another
            # starting process is purging are skipped, as in purge().
            dead = [
                pk
                for pk, pid in ServerProcess.objects.select_for_update(skip_locked=True)
                .filter(host=self.host)
                .exclude(pk=self.process_id)
                .values_list("pk", "pid")
                if pid == self.pid or not _pid_alive(pid)
            ]
            result = purge_processes(dead)
        if result.processes:
            logger.info(
                "Registry: purged %d connections of %d earlier server processes on this host",
                result.connections,
                result.processes,
            )
        stale = self.purge_stale()
        logger.info("Registry: server process %s (%s pid %d) announced", self.process_id, self.host, self.pid)
        return [*result.process_ids, *stale]

    @staticmethod
    def purge_stale() -> list[str]:
        """Purge the processes whose heartbeat stopped; their ids."""
        ActivitySample.objects.filter(minute__lt=_at(time.time()) - ACTIVITY_KEPT).delete()
        result = ServerProcess.objects.stale().purge()
        if result.processes:
            logger.info(
                "Registry: purged %d connections of %d server processes without a heartbeat",
                result.connections,
                result.processes,
            )
        return list(result.process_ids)

    def write(self, batch: Batch) -> None:
        """Apply a batch and beat the heartbeat; :class:`ProcessGone` if this process's row is gone."""
        with transaction.atomic():
            counters: dict[str, Any] = {
                "relayed": batch.counters.get(metrics.RELAYED, 0),
                "undeliverable": batch.counters.get(metrics.UNDELIVERABLE, 0),
                "rejected_frames": batch.counters.get(metrics.REJECTED_FRAMES, 0),
            }
            if batch.counters:
                counters["counters"] = batch.counters
                counters["recent_undeliverable"] = batch.recent_undeliverable
            if not ServerProcess.objects.filter(pk=self.process_id).update(heartbeat_at=Now(), **counters):
                raise ProcessGone
            if batch.counters:
                self._sample(batch.counters)
            if batch.new:
                Connection.objects.bulk_create(
                    [_row(live, self.process_id) for live in batch.new.values()],
                    batch_size=CHUNK,
                    ignore_conflicts=True,
                )
            if batch.registrations:
                Registration.objects.bulk_create(
                    [Registration(connection_id=t, recipient=r) for t, r in batch.registrations],
                    batch_size=CHUNK,
                    ignore_conflicts=True,
                )
            if batch.first_registered:
                Connection.objects.bulk_update(
                    [Connection(temp_id=t, registered_at=_at(at)) for t, at in batch.first_registered.items()],
                    ["registered_at"],
                    batch_size=CHUNK,
                )
            if batch.activity:
                # Whole seconds are precise enough to show, and make one UPDATE per second of activity.
                by_second: dict[int, list[str]] = defaultdict(list)
                for temp_id, at in batch.activity.items():
                    by_second[int(at)].append(temp_id)
                for second, temp_ids in by_second.items():
                    for chunk in chunks(temp_ids):
                        Connection.objects.filter(pk__in=chunk).update(last_activity_at=_at(second))
            if batch.gone:
                Connection.objects.delete_by_ids(batch.gone)

    def _sample(self, counters: dict[str, Any]) -> None:
        """The counters as the current minute's row of this process (see :class:`ActivitySample`)."""
        ActivitySample.objects.bulk_create(
            [
                ActivitySample(
                    process_key=self.process_id,
                    process=f"{self.host}:{self.pid}",
                    started_at=_at(self.started_at),
                    minute=_at(time.time() // 60 * 60),
                    counters=counters,
                )
            ],
            update_conflicts=True,
            unique_fields=["process_key", "minute"],
            update_fields=["counters"],
        )

    def rewrite(self, connections: list[LiveConnection], registrations: list[tuple[str, str]]) -> None:
        """Replace every row of this process with ``connections`` (after it was purged by mistake)."""
        with transaction.atomic():
            self._insert_process_row()
            ServerProcess.objects.filter(pk=self.process_id).update(heartbeat_at=Now())
            Connection.objects.delete_by_ids(
                list(Connection.objects.filter(process_id=self.process_id).values_list("pk", flat=True))
            )
            Connection.objects.bulk_create([_row(live, self.process_id) for live in connections], batch_size=CHUNK)
            Registration.objects.bulk_create(
                [Registration(connection_id=t, recipient=r) for t, r in registrations], batch_size=CHUNK
            )

    def remove_own_rows(self) -> None:
        with transaction.atomic():
            purge_processes([self.process_id])
