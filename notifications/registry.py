"""The registry of this process's live connections, kept in the database.

The consumer reports connection events (connect, register, disconnect) and
frames received; each report is a few dictionary operations on the event
loop and never waits for the database. One background task per process
writes what accumulated every ``REGISTRY_FLUSH_INTERVAL`` seconds in a single
transaction, beats the process's heartbeat, and purges the rows of processes
whose heartbeat stopped (killed with SIGKILL, or cancelled by daphne on
SIGTERM without running ``disconnect()``).

The process keeps every live connection in memory, so its rows can always be
rebuilt: a write that fails is retried with everything it carried (a
disconnect is never lost), and a process whose rows were purged while it could
not reach the database (it looked dead) writes them all again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from django.db import transaction
from django.db.models.functions import Now

from notifications import metrics
from notifications.conf import conf
from notifications.models import Connection, Registration, ServerProcess

logger = logging.getLogger(__name__)

# Rows per statement: well under every backend's limit on query parameters.
CHUNK = 500
# Longest wait between attempts while the database refuses writes.
MAX_RETRY_DELAY = 5.0
# A graceful stop removes the process's rows, but never holds the shutdown longer than this.
SHUTDOWN_TIMEOUT = 5.0


def _field_length(model: type[Any], name: str) -> int:
    return int(model._meta.get_field(name).max_length)


def _header(scope: dict[str, Any], name: bytes, limit: int) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            # HTTP header values are bytes; latin-1 decodes any of them. NUL
            # cannot be stored in a PostgreSQL text column.
            return value.decode("latin-1").replace("\x00", "")[:limit]
    return ""


def client_address(scope: dict[str, Any]) -> str:
    """The client's host as the server saw it (behind nginx: the address nginx passed on)."""
    client = scope.get("client")
    host = str(client[0]) if client else ""
    return host.replace("\x00", "")[: _field_length(Connection, "client_address")]


def _at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


@dataclass(slots=True)
class LiveConnection:
    """What the process remembers of one open connection, enough to write its rows again."""

    temp_id: str
    channel_name: str
    connected_at: float
    client_address: str
    user_agent: str
    origin: str
    last_activity_at: float
    registered_at: float | None = None
    recipients: list[str] = field(default_factory=list)

    def row(self) -> Row:
        return Row(
            temp_id=self.temp_id,
            channel_name=self.channel_name,
            connected_at=self.connected_at,
            registered_at=self.registered_at,
            last_activity_at=self.last_activity_at,
            client_address=self.client_address,
            user_agent=self.user_agent,
            origin=self.origin,
        )


@dataclass(frozen=True, slots=True)
class Row:
    """A connection row as it is to be inserted, copied on the event loop."""

    temp_id: str
    channel_name: str
    connected_at: float
    registered_at: float | None
    last_activity_at: float
    client_address: str
    user_agent: str
    origin: str

    def model(self, process_id: str) -> Connection:
        return Connection(
            temp_id=self.temp_id,
            process_id=process_id,
            channel_name=self.channel_name,
            connected_at=_at(self.connected_at),
            registered_at=_at(self.registered_at) if self.registered_at is not None else None,
            last_activity_at=_at(self.last_activity_at),
            client_address=self.client_address,
            user_agent=self.user_agent,
            origin=self.origin,
        )


@dataclass
class Batch:
    """Writes gathered since the last flush. Applying one twice does no harm."""

    new: dict[str, Row] = field(default_factory=dict)
    registrations: set[tuple[str, str]] = field(default_factory=set)  # (temp_id, recipient)
    first_registered: dict[str, float] = field(default_factory=dict)  # rows already written
    activity: dict[str, float] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=dict)  # the process's metrics, latest wins

    def then(self, later: Batch) -> Batch:
        """This (failed) batch followed by a later one, as one batch."""
        gone = self.gone | later.gone

        def kept(items: dict[str, Any]) -> dict[str, Any]:
            return {key: value for key, value in items.items() if key not in later.gone}

        return Batch(
            new=kept(self.new) | later.new,
            registrations={r for r in self.registrations if r[0] not in later.gone} | later.registrations,
            first_registered=kept(self.first_registered) | later.first_registered,
            activity=kept(self.activity) | later.activity,
            gone=gone,
            counters=later.counters or self.counters,
        )


@dataclass(frozen=True)
class PurgeResult:
    processes: int
    connections: int


class ProcessGone(Exception):
    """This process's row was purged by another process (it missed heartbeats)."""


def _chunks(items: Iterable[Any]) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _delete_connections(temp_ids: Iterable[str]) -> int:
    deleted = 0
    for chunk in _chunks(temp_ids):
        Registration.objects.filter(connection_id__in=chunk).delete()
        deleted += Connection.objects.filter(pk__in=chunk).delete()[1].get(Connection._meta.label, 0)
    return deleted


def _purge_processes(process_ids: list[str]) -> PurgeResult:
    connections = 0
    for process_id in process_ids:
        temp_ids = list(Connection.objects.filter(process_id=process_id).values_list("pk", flat=True))
        connections += _delete_connections(temp_ids)
    ServerProcess.objects.filter(pk__in=process_ids).delete()
    return PurgeResult(processes=len(process_ids), connections=connections)


def purge_stale(*, stale_after: float | None = None) -> PurgeResult:
    """Delete the rows of every process whose last heartbeat is older than ``stale_after`` seconds.

    Defaults to ``NOTIFICATIONS_STALE_AFTER``. Safe to run from any process at
    any time: a live process that is purged by mistake writes its rows again
    at its next heartbeat. Ages are measured by the database's clock, which
    wrote the heartbeats, not by this host's.
    """
    stale_after = conf.STALE_AFTER if stale_after is None else stale_after
    cutoff = Now() - timedelta(seconds=stale_after)
    with transaction.atomic():
        # Locked rows are being purged by another process (PostgreSQL; SQLite
        # serialises writers anyway): skip them rather than wait or deadlock.
        stale = list(
            ServerProcess.objects.select_for_update(skip_locked=True)
            .filter(heartbeat_at__lt=cutoff)
            .values_list("pk", flat=True)
        )
        return _purge_processes(stale)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Registry:
    """The per-process registry; the module-level :data:`registry` is the one consumers report to."""

    def __init__(self) -> None:
        self.host = socket.gethostname()[: _field_length(ServerProcess, "host")]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.process_id = uuid.uuid4().hex
        self.pid = os.getpid()
        self.started_at = time.time()
        self._live: dict[str, LiveConnection] = {}
        self._new: set[str] = set()
        self._registrations: set[tuple[str, str]] = set()
        self._first_registered: set[str] = set()
        self._active: set[str] = set()
        self._gone: set[str] = set()
        self._failed: Batch | None = None
        self._resync = False
        self._closed = False
        self._wake = asyncio.Event()

    # Reports from the consumer: called on the event loop, never wait.

    def connected(self, temp_id: str, channel_name: str, scope: dict[str, Any]) -> None:
        """A WebSocket was accepted."""
        if not conf.REGISTRY_ENABLED or not self._running():
            return
        now = time.time()
        self._live[temp_id] = LiveConnection(
            temp_id=temp_id,
            channel_name=channel_name,
            connected_at=now,
            last_activity_at=now,
            client_address=client_address(scope),
            user_agent=_header(scope, b"user-agent", _field_length(Connection, "user_agent")),
            origin=_header(scope, b"origin", _field_length(Connection, "origin")),
        )
        self._new.add(temp_id)
        self._wake.set()

    def registered(self, temp_id: str, recipient: str) -> None:
        """The connection registered ``recipient`` (validated, within the per-connection limit)."""
        live = self._live.get(temp_id)
        if live is None:
            return
        live.recipients.append(recipient)
        if live.registered_at is None:
            live.registered_at = time.time()
            if temp_id not in self._new:
                self._first_registered.add(temp_id)
        self._registrations.add((temp_id, recipient))
        self._wake.set()

    def active(self, temp_id: str) -> None:
        """The connection sent a frame; written with the next heartbeat, not per frame."""
        live = self._live.get(temp_id)
        if live is not None:
            live.last_activity_at = time.time()
            self._active.add(temp_id)

    def disconnected(self, temp_id: str) -> None:
        """The connection closed."""
        if self._live.pop(temp_id, None) is None:
            return
        self._new.discard(temp_id)
        self._first_registered.discard(temp_id)
        self._active.discard(temp_id)
        # Deleted even if its row was never written: deleting nothing is harmless,
        # and a write whose outcome is unknown (an error at commit) may have written it.
        self._gone.add(temp_id)
        self._wake.set()

    @property
    def live_count(self) -> int:
        return len(self._live)

    # The background task.

    def _running(self) -> bool:
        if self._closed:
            return False
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (a new server in this process, or a test): start afresh.
            if self._task is not None:
                self._task.cancel()
            self._reset()
            self._loop = loop
            self._task = loop.create_task(self._run(), name="notifications-registry")
        return True

    def start(self) -> None:
        """Start the background task on the running event loop (idempotent)."""
        if conf.REGISTRY_ENABLED:
            self._running()

    def start_with_daphne(self) -> None:
        """Under daphne, start when the server starts (announce, purge) and clean up on a graceful stop.

        daphne runs no ASGI lifespan, so hook into its Twisted reactor. Elsewhere
        (runserver, tests) the registry starts with the first connection.
        """
        reactor = sys.modules.get("twisted.internet.reactor")
        if reactor is None or not conf.REGISTRY_ENABLED:
            return
        # Startup triggers fire before the asyncio loop runs; a delayed call runs inside it.
        reactor.callLater(0, self.start)

        def before_shutdown() -> Any:
            from twisted.internet.defer import Deferred

            return Deferred.fromFuture(asyncio.ensure_future(self.aclose()))

        reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)

    async def aclose(self) -> None:
        """Stop the task and delete this process's rows (a graceful stop)."""
        if self._closed or self._task is None:
            return
        self._closed = True
        self._task.cancel()
        try:
            await asyncio.wait_for(database_sync_to_async(self._remove_own_rows)(), SHUTDOWN_TIMEOUT)
        except Exception as exc:
            logger.warning(
                "Registry: could not remove this process's rows on shutdown (%s: %s); they are purged "
                "once its heartbeat is %.0f s old",
                type(exc).__name__,
                exc,
                conf.STALE_AFTER,
            )
        else:
            logger.info("Registry: removed this process's %d connection rows on shutdown", len(self._live))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        announced = False
        next_beat = loop.time()
        retry_delay = conf.REGISTRY_FLUSH_INTERVAL
        while True:
            if failing:
                # Events keep gathering in memory meanwhile; they do not hurry the retry.
                await asyncio.sleep(retry_delay)
            elif (due := next_beat - loop.time()) > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), due)
                    # Woken by the first event: let more gather into the same transaction.
                    await asyncio.sleep(conf.REGISTRY_FLUSH_INTERVAL)
                except TimeoutError:
                    pass
            self._wake.clear()
            beat = loop.time() >= next_beat
            try:
                if not announced:
                    await database_sync_to_async(self._announce)()
                    announced = True
                await self._flush(with_activity=beat)
                if beat:
                    result = await database_sync_to_async(purge_stale)()
                    if result.processes:
                        logger.info(
                            "Registry: purged %d connections of %d server processes without a heartbeat",
                            result.connections,
                            result.processes,
                        )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    # One line per outage, not one per attempt.
                    logger.warning(
                        "Registry: cannot write to the database (%s: %s); retrying, nothing is lost",
                        type(exc).__name__,
                        str(exc).splitlines()[0] if str(exc) else "",
                    )
                failing = True
                retry_delay = min(max(retry_delay * 2, conf.REGISTRY_FLUSH_INTERVAL), MAX_RETRY_DELAY)
                continue
            if failing:
                logger.info("Registry: writing to the database again")
                failing = False
            retry_delay = conf.REGISTRY_FLUSH_INTERVAL
            if beat:
                next_beat = loop.time() + conf.HEARTBEAT_INTERVAL

    def _take(self, *, with_activity: bool) -> Batch:
        """Everything reported since the last take (on the event loop, so nothing changes meanwhile)."""
        live = self._live
        batch = Batch(gone=self._gone, counters=metrics.snapshot())
        batch.new = {temp_id: live[temp_id].row() for temp_id in self._new}
        batch.registrations = {r for r in self._registrations if r[0] in live}
        batch.first_registered = {t: live[t].registered_at or 0.0 for t in self._first_registered}
        if with_activity:
            batch.activity = {t: live[t].last_activity_at for t in self._active}
            self._active = set()
        self._new, self._registrations, self._first_registered, self._gone = set(), set(), set(), set()
        if self._failed is not None:
            batch = self._failed.then(batch)
            self._failed = None
        return batch

    async def _flush(self, *, with_activity: bool) -> None:
        if self._resync:
            await self._write_everything()
            return
        batch = self._take(with_activity=with_activity)
        try:
            await database_sync_to_async(self._write)(batch)
        except ProcessGone:
            logger.warning("Registry: this process's rows were purged (missed heartbeats); writing them again")
            self._resync = True
            await self._write_everything()
        except BaseException:
            self._failed = batch
            raise

    async def _write_everything(self) -> None:
        # A snapshot of every live connection supersedes all pending writes;
        # what happens after it is reported anew.
        self._resync = True
        self._failed = None
        self._take(with_activity=True)
        rows = [c.row() for c in self._live.values()]
        registrations = [(c.temp_id, r) for c in self._live.values() for r in c.recipients]
        await database_sync_to_async(self._rewrite)(rows, registrations)
        self._resync = False

    # Database work: runs in a worker thread through database_sync_to_async.

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

    def _announce(self) -> None:
        with transaction.atomic():
            self._insert_process_row()
            # Earlier processes on this host that are gone (a restart, a crash):
            # no need to wait for their heartbeat to go stale. Rows another
            # starting process is purging are skipped, as in purge_stale().
            dead = [
                pk
                for pk, pid in ServerProcess.objects.select_for_update(skip_locked=True)
                .filter(host=self.host)
                .exclude(pk=self.process_id)
                .values_list("pk", "pid")
                if pid == self.pid or not _pid_alive(pid)
            ]
            result = _purge_processes(dead)
        if result.processes:
            logger.info(
                "Registry: purged %d connections of %d earlier server processes on this host",
                result.connections,
                result.processes,
            )
        stale = purge_stale()
        if stale.processes:
            logger.info(
                "Registry: purged %d connections of %d server processes without a heartbeat",
                stale.connections,
                stale.processes,
            )
        logger.info("Registry: server process %s (%s pid %d) announced", self.process_id, self.host, self.pid)

    def _write(self, batch: Batch) -> None:
        with transaction.atomic():
            counters = {
                "relayed": batch.counters.get(metrics.RELAYED, 0),
                "undeliverable": batch.counters.get(metrics.UNDELIVERABLE, 0),
                "rejected_frames": batch.counters.get(metrics.REJECTED_FRAMES, 0),
            }
            if not ServerProcess.objects.filter(pk=self.process_id).update(heartbeat_at=Now(), **counters):
                raise ProcessGone
            if batch.new:
                Connection.objects.bulk_create(
                    [row.model(self.process_id) for row in batch.new.values()], batch_size=CHUNK, ignore_conflicts=True
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
                    for chunk in _chunks(temp_ids):
                        Connection.objects.filter(pk__in=chunk).update(last_activity_at=_at(second))
            if batch.gone:
                _delete_connections(batch.gone)

    def _rewrite(self, rows: list[Row], registrations: list[tuple[str, str]]) -> None:
        with transaction.atomic():
            self._insert_process_row()
            ServerProcess.objects.filter(pk=self.process_id).update(heartbeat_at=Now())
            _delete_connections(
                list(Connection.objects.filter(process_id=self.process_id).values_list("pk", flat=True))
            )
            Connection.objects.bulk_create([row.model(self.process_id) for row in rows], batch_size=CHUNK)
            Registration.objects.bulk_create(
                [Registration(connection_id=t, recipient=r) for t, r in registrations], batch_size=CHUNK
            )

    def _remove_own_rows(self) -> None:
        with transaction.atomic():
            _purge_processes([self.process_id])


registry = Registry()
