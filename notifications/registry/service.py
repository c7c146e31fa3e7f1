"""The registry's background service: it writes what the consumers report, beats the heartbeat, purges.

The consumer reports connection events (connect, register, disconnect) and
frames received; each report is a few dictionary operations on the event
loop (:mod:`.state`) and never waits for the database. One background task
per process writes what accumulated every ``REGISTRY_FLUSH_INTERVAL``
seconds in a single transaction (:mod:`.writer`), beats the process's
heartbeat, and purges the rows of processes whose heartbeat stopped (killed
with SIGKILL, or cancelled on SIGTERM without running ``disconnect()``).

The process keeps every live connection in memory, so its rows can always be
rebuilt: a write that fails is retried with everything it carried (a
disconnect is never lost), and a process whose rows were purged while it could
not reach the database (it looked dead) writes them all again.

Nothing is recorded until :meth:`Registry.serve` is called, which
:func:`notifications.server.start_server` does for a server process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from notifications import drain, metrics
from notifications.conf import conf
from notifications.exceptions import one_line
from notifications.models import Connection, ServerProcess, field_length
from notifications.registry.state import Batch, ConnectionTable
from notifications.registry.writer import DatabaseWriter, ProcessGone

logger = logging.getLogger(__name__)

# Longest wait between attempts while the database refuses writes.
MAX_RETRY_DELAY = 5.0
# A graceful stop removes the process's rows, but never holds the shutdown longer than this.
SHUTDOWN_TIMEOUT = 5.0


def _text(value: str, limit: int) -> str:
    # NUL cannot be stored in a PostgreSQL text column.
    return value.replace("\x00", "")[:limit]


DISCONNECT_TIMEOUT = 20.0  # seconds one round of closing may take, every shard together
GIVE_UP_DISCONNECTING = 600.0  # seconds after a purge that closing what the process held is still tried


async def _disconnect_from_layer(process_ids: list[str]) -> bool:
    """Close what processes gone still hold in the channel layer (Redis subscriptions); False if that failed.

    A host cut off the network keeps its connections to Redis open on Redis's
    side until TCP gives up, many minutes later; meanwhile Redis counts its
    subscriptions as listeners, so notifications to its ids would be taken
    for delivered rather than kept pending for their next registration.
    """
    disconnect = getattr(get_channel_layer(), "disconnect_processes", None)
    if disconnect is None:
        return True
    try:
        await asyncio.wait_for(disconnect(process_ids), DISCONNECT_TIMEOUT)
    except Exception as exc:
        logger.warning("Registry: could not close the channel-layer connections of processes gone: %s", one_line(exc))
        return False
    return True


def _still_away(process_ids: list[str]) -> list[str]:
    """Those of ``process_ids`` that have not written their rows again (a process purged by mistake does)."""
    back = set(ServerProcess.objects.filter(pk__in=process_ids).values_list("pk", flat=True))
    return [p for p in process_ids if p not in back]


class Registry:
    """The per-process registry; the module-level :data:`registry` is the one consumers report to."""

    def __init__(self) -> None:
        self.process_id = uuid.uuid4().hex
        self.writer = DatabaseWriter(
            process_id=self.process_id,
            host=socket.gethostname()[: field_length(ServerProcess, "host")],
            pid=os.getpid(),
            started_at=time.time(),
        )
        self.table = ConnectionTable()
        self._serving = False  # serve() was called: record connections, start with the first one
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._failed: Batch | None = None
        self._resync = False
        self._closed = False
        self._wake = asyncio.Event()
        # Purged processes whose Redis subscriptions may still be open, with when they were purged.
        self._purged: dict[str, float] = {}
        self._disconnecting: asyncio.Future[None] | None = None

    async def _disconnect_purged(self) -> None:
        """Close the subscriptions of purged processes that stayed away for ``STALE_AFTER`` after their purge.

        The wait tells a process gone from one purged because the database was away
        (every process misses its heartbeats then): that one writes its rows again
        as soon as the database answers, and keeps its subscriptions.
        """
        now = asyncio.get_running_loop().time()
        due = [p for p, purged_at in self._purged.items() if now - purged_at >= conf.STALE_AFTER]
        if not due:
            return
        try:
            away = await database_sync_to_async(_still_away)(due)
        except Exception as exc:  # the database is away: next beat
            logger.debug("Registry: cannot tell which purged processes stayed away: %s", one_line(exc))
            return
        if not away or await _disconnect_from_layer(away):
            for process_id in due:
                del self._purged[process_id]
        else:  # tried again each beat, for a while
            for process_id in due:
                if now - self._purged[process_id] > GIVE_UP_DISCONNECTING:
                    del self._purged[process_id]

    # Start and stop.

    def serve(self) -> None:
        """Record this process's connections: it is a server.

        The background task starts at once when an event loop runs, else with
        the Twisted reactor when daphne runs it (announce, purge, and a
        graceful stop that removes the rows), else with the first connection.
        """
        if not conf.REGISTRY_ENABLED:
            return
        self._serving = True
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            self._start()
            return
        reactor = sys.modules.get("twisted.internet.reactor")
        if reactor is not None:
            # Only a reactor that runs fires this: importing Twisted (django.setup()
            # does, with daphne in INSTALLED_APPS) is not running under daphne.
            reactor.callWhenRunning(self._start_under_twisted, reactor)

    def _start_under_twisted(self, reactor: Any) -> None:
        async def after_the_drain() -> None:
            # A draining process still serves its connections for a few seconds: their rows stay until then.
            await drain.finished()
            await self.aclose()

        def before_shutdown() -> Any:
            from twisted.internet.defer import Deferred

            return Deferred.fromFuture(asyncio.ensure_future(after_the_drain()))

        reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
        # Startup triggers fire before the asyncio loop runs; a delayed call runs inside it.
        reactor.callLater(0, self._start)

    @property
    def started(self) -> bool:
        return self._task is not None

    def _start(self) -> bool:
        """Start the background task on the running loop once; False once closed."""
        if self._closed:
            return False
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run(), name="notifications-registry")
        return True

    async def aclose(self) -> None:
        """Stop the task and delete this process's rows (a graceful stop)."""
        if self._closed or self._task is None:
            return
        self._closed = True
        self._task.cancel()
        if self._disconnecting is not None:
            self._disconnecting.cancel()
        try:
            await asyncio.wait_for(database_sync_to_async(self.writer.remove_own_rows)(), SHUTDOWN_TIMEOUT)
        except Exception as exc:
            logger.warning(
                "Registry: could not remove this process's rows on shutdown (%s: %s); they are purged "
                "once its heartbeat is %.0f s old",
                type(exc).__name__,
                exc,
                conf.STALE_AFTER,
            )
        else:
            logger.info("Registry: removed this process's %d connection rows on shutdown", self.live_count)

    # Reports from the consumer: called on the event loop, never wait.

    def connected(self, temp_id: str, channel_name: str, *, client_address: str, user_agent: str, origin: str) -> None:
        """A WebSocket was accepted."""
        if not self._serving or not self._start():
            return
        self.table.connected(
            temp_id,
            channel_name,
            client_address=_text(client_address, field_length(Connection, "client_address")),
            user_agent=_text(user_agent, field_length(Connection, "user_agent")),
            origin=_text(origin, field_length(Connection, "origin")),
        )
        self._wake.set()

    def registered(self, temp_id: str, recipient: str) -> None:
        """The connection registered ``recipient`` (validated, within the per-connection limit)."""
        if self.table.registered(temp_id, recipient):
            self._wake.set()

    def active(self, temp_id: str) -> None:
        """The connection sent a frame; written with the next heartbeat, not per frame."""
        self.table.active(temp_id)

    def disconnected(self, temp_id: str) -> None:
        """The connection closed."""
        if self.table.disconnected(temp_id):
            self._wake.set()

    @property
    def live_count(self) -> int:
        return len(self.table.live)

    # The background task.

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
                purged: list[str] = []
                if not announced:
                    purged += await database_sync_to_async(self.writer.announce)()
                    announced = True
                await self._flush(with_activity=beat)
                if beat:
                    purged += await database_sync_to_async(self.writer.purge_stale)()
                for process_id in purged:
                    self._purged.setdefault(process_id, loop.time())
                if beat and self._purged and (self._disconnecting is None or self._disconnecting.done()):
                    self._disconnecting = asyncio.ensure_future(self._disconnect_purged())
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
        """Everything reported since the last take, after what a failed write still carries."""
        batch = self.table.take(
            with_activity=with_activity,
            counters=metrics.snapshot() | metrics.process_figures(),
            recent_undeliverable=[list(event) for event in metrics.recent_undeliverable],
        )
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
            await database_sync_to_async(self.writer.write)(batch)
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
        connections, registrations = self.table.snapshot()
        await database_sync_to_async(self.writer.rewrite)(connections, registrations)
        self._resync = False


registry = Registry()
