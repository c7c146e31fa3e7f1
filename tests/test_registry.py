"""The live-connection registry, with real daphne processes, real clients and the real database."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.db.models.functions import Now

from harness.clients import open_client, register, register_confirmed
from harness.servers import Daphne, eventually
from notifications.conf import conf
from notifications.models import Connection, Registration, ServerProcess
from notifications.presence import aconnection_count, ais_online, connection_count, connection_counts, is_online
from tests.programs import skewed_clock

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("async_db")]

HEARTBEAT, STALE_AFTER = 0.3, 1.5
FAST_HEARTBEAT = {"NOTIFY_HEARTBEAT_INTERVAL": str(HEARTBEAT), "NOTIFY_STALE_AFTER": str(STALE_AFTER)}
# Rows show up within the flush interval (0.2 s); polling and a busy machine get the rest.
SOON = 5.0


@sync_to_async
def rows(*servers: Daphne) -> dict[str, dict[str, Any]]:
    """The connection rows the given processes wrote, by temporary id, with the ids each registered."""
    pids = [server.process.pid for server in servers]
    return {
        c.temp_id: {
            "pid": c.process.pid,
            "ids": sorted(r.recipient for r in c.registrations.all()),
            "channel_name": c.channel_name,
            "client_address": c.client_address,
            "user_agent": c.user_agent,
            "origin": c.origin,
            "connected_at": c.connected_at,
            "registered_at": c.registered_at,
            "last_activity_at": c.last_activity_at,
        }
        for c in Connection.objects.filter(process__pid__in=pids)
        .select_related("process")
        .prefetch_related("registrations")
    }


@sync_to_async
def process_rows(server: Daphne) -> int:
    return ServerProcess.objects.filter(pid=server.process.pid).count()


def until(check: Callable[[dict[str, dict[str, Any]]], bool], *servers: Daphne) -> Callable[[], Any]:
    async def condition() -> bool:
        return check(await rows(*servers))

    return condition


async def test_rows_follow_connect_register_and_disconnect(daphne: Daphne) -> None:
    ws = await open_client(daphne.url, user_agent_header="field-client/2.1", origin="https://app.example.com")
    await eventually(until(lambda r: len(r) == 1, daphne), seconds=SOON)
    [(temp_id, row)] = (await rows(daphne)).items()
    assert temp_id in daphne.log()  # the id the consumer logs
    assert row["client_address"] == "127.0.0.1"
    assert row["user_agent"] == "field-client/2.1"
    assert row["origin"] == "https://app.example.com"
    assert row["channel_name"]
    assert row["registered_at"] is None
    assert row["ids"] == []

    await register_confirmed(ws, "tab-b")
    await register(ws, "tab-a")
    await eventually(until(lambda r: r[temp_id]["ids"] == ["tab-a", "tab-b"], daphne), seconds=SOON)
    row = (await rows(daphne))[temp_id]
    assert row["connected_at"] <= row["registered_at"]

    await ws.close()
    await eventually(until(lambda r: r == {}, daphne), seconds=SOON)


async def test_what_a_client_supplies_is_bounded_before_it_is_stored(daphne: Daphne) -> None:
    longest_id = "é" * 255
    ws = await open_client(daphne.url, user_agent_header="A" * 5000, origin="https://" + "o" * 400 + ".example")
    await register(ws, longest_id)
    for i in range(30):
        await register(ws, f"id-{i}")
    await eventually(until(lambda r: len(r) == 1 and len(next(iter(r.values()))["ids"]) == 16, daphne), seconds=SOON)
    [row] = (await rows(daphne)).values()
    assert longest_id in row["ids"]
    assert len(row["user_agent"]) == 512
    assert len(row["origin"]) == 255
    assert "already 16 ids registered" in daphne.log()
    await ws.close()


async def test_a_killed_process_rows_vanish_within_the_bound_and_the_others_stay(
    daphne_factory: Callable[..., Daphne],
) -> None:
    killed, survivor = daphne_factory(FAST_HEARTBEAT), daphne_factory(FAST_HEARTBEAT)
    clients = [await open_client(server.url) for server in (killed, survivor) for _ in range(3)]
    for i, ws in enumerate(clients):
        await register(ws, f"user-{i}")
    await eventually(until(lambda r: sum(len(row["ids"]) for row in r.values()) == 6, killed, survivor), seconds=SOON)

    killed.stop(signal.SIGKILL)
    # Purged by the survivor within STALE_AFTER + one heartbeat; one more second for polling.
    await eventually(until(lambda r: r == {}, killed), seconds=STALE_AFTER + HEARTBEAT + 1.0)
    assert await process_rows(killed) == 0
    assert len(await rows(survivor)) == 3
    assert await process_rows(survivor) == 1
    for ws in clients[3:]:
        await ws.close()


async def test_a_stopped_process_removes_its_rows_on_the_way_out(daphne: Daphne) -> None:
    clients = [await open_client(daphne.url) for _ in range(3)]
    await eventually(until(lambda r: len(r) == 3, daphne), seconds=SOON)
    # On SIGTERM the process drains (each connection closed with 4012 leaves as usual),
    # then removes its own rows, without waiting for the 30 s bound.
    daphne.stop(signal.SIGTERM)
    assert await rows(daphne) == {}
    assert await process_rows(daphne) == 0
    assert "Drained: 3 WebSockets closed" in daphne.log()
    assert "Registry: removed this process's" in daphne.log()
    assert {ws.close_code for ws in clients} == {4012}


async def test_a_new_process_purges_what_a_crashed_one_on_its_host_left_behind(
    daphne_factory: Callable[..., Daphne],
) -> None:
    crashed = daphne_factory()  # the default 30 s bound: too long to be what cleans up here
    clients = [await open_client(crashed.url) for _ in range(2)]
    await eventually(until(lambda r: len(r) == 2, crashed), seconds=SOON)
    crashed.stop(signal.SIGKILL)
    successor = daphne_factory()
    await eventually(until(lambda r: r == {}, crashed), seconds=SOON)
    assert await process_rows(crashed) == 0
    assert "purged 2 connections of 1 earlier server processes on this host" in successor.log()
    del clients


async def test_a_process_purged_while_alive_writes_its_rows_again(daphne_factory: Callable[..., Daphne]) -> None:
    server = daphne_factory({"NOTIFY_HEARTBEAT_INTERVAL": str(HEARTBEAT)})
    ws = await open_client(server.url)
    await register(ws, "still-here")
    await eventually(until(lambda r: [row["ids"] for row in r.values()] == [["still-here"]], server), seconds=SOON)
    before = await rows(server)

    result = await sync_to_async(ServerProcess.objects.stale(0).purge)()  # as if it had missed its heartbeats
    assert result.connections == 1
    await eventually(until(lambda r: r.keys() == before.keys(), server), seconds=SOON)
    after = await rows(server)
    for row in (*before.values(), *after.values()):
        del row["last_activity_at"]  # may have moved on meanwhile
    assert after == before
    assert "this process's rows were purged" in server.log()
    await ws.close()


@sync_to_async
def rename_table(old: str, new: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {connection.ops.quote_name(old)} RENAME TO {connection.ops.quote_name(new)}")


async def test_writes_that_fail_are_retried_and_no_disconnect_is_lost(daphne: Daphne) -> None:
    leaving = await open_client(daphne.url)
    await register(leaving, "leaving")
    await eventually(until(lambda r: len(r) == 1, daphne), seconds=SOON)

    await rename_table("notifications_registration", "notifications_registration_away")
    try:
        await leaving.close()
        arriving = await open_client(daphne.url)
        await register(arriving, "arriving")
        await eventually(_in_log(daphne, "Registry: cannot write to the database"), seconds=SOON)
    finally:
        await rename_table("notifications_registration_away", "notifications_registration")

    await eventually(until(lambda r: [row["ids"] for row in r.values()] == [["arriving"]], daphne), seconds=SOON)
    log = daphne.log()
    assert log.count("Registry: cannot write to the database") == 1  # one line per outage, not per attempt
    assert "Registry: writing to the database again" in log
    assert "Traceback" not in log
    await arriving.close()


def _in_log(server: Daphne, text: str) -> Callable[[], Any]:
    async def condition() -> bool:
        return text in server.log()

    return condition


async def test_presence_counts_the_connections_of_an_id_on_every_process(
    redis_daphne_pair: tuple[Daphne, Daphne],
) -> None:
    a, b = redis_daphne_pair
    tab_a, tab_b, other = await open_client(a.url), await open_client(b.url), await open_client(a.url)
    await register(tab_a, "present")
    await register(tab_b, "present")
    await register(other, "someone-else")

    async def count_is(n: int) -> Callable[[], Any]:
        async def condition() -> bool:
            return await aconnection_count("present") == n

        return condition

    await eventually(await count_is(2), seconds=SOON)
    assert await ais_online("present")
    assert await sync_to_async(is_online)("present")
    assert await sync_to_async(connection_count)("present") == 2
    assert not await ais_online("absent")
    assert not await ais_online("PRESENT")  # ids are exact strings

    await tab_a.close()
    await eventually(await count_is(1), seconds=SOON)
    await tab_b.close()
    await eventually(await count_is(0), seconds=SOON)
    assert not await ais_online("present")
    await other.close()


async def test_two_hundred_clients_connecting_and_disconnecting_at_once_leave_no_errors_and_no_rows(
    redis_daphne_pair: tuple[Daphne, Daphne],
) -> None:
    a, b = redis_daphne_pair
    clients = await asyncio.gather(*(open_client((a, b)[i % 2].url) for i in range(200)))
    await asyncio.gather(*(register(ws, f"burst-{i}") for i, ws in enumerate(clients)))
    await eventually(until(lambda r: sum(len(row["ids"]) for row in r.values()) == 200, a, b), seconds=20)
    assert len(await rows(a, b)) == 200

    await asyncio.gather(*(ws.close() for ws in clients))
    assert {ws.close_code for ws in clients} == {1000}

    # Churn: each connects, registers and leaves at once, often inside one flush.
    async def visit(i: int) -> int | None:
        ws = await open_client((a, b)[i % 2].url)
        await register(ws, f"churn-{i}")
        await ws.close()
        return ws.close_code

    assert set(await asyncio.gather(*(visit(i) for i in range(200)))) == {1000}
    await eventually(until(lambda r: r == {}, a, b), seconds=20)
    for server in (a, b):
        log = server.log()
        assert "database is locked" not in log
        assert "Registry: cannot write" not in log
        assert "Traceback" not in log


async def test_each_process_reports_its_counters_with_its_heartbeat(daphne_factory: Callable[..., Daphne]) -> None:
    server = daphne_factory(FAST_HEARTBEAT)
    ws = await open_client(server.url)
    await register_confirmed(ws, "counted")  # relays at least one probe
    await ws.send("plain text is ignored, and counted")

    @sync_to_async
    def counters() -> tuple[int, int] | None:
        row = ServerProcess.objects.filter(pid=server.process.pid).first()
        return (row.relayed, row.rejected_frames) if row else None

    async def reported() -> bool:
        found = await counters()
        return found is not None and found[0] >= 1 and found[1] == 1

    await eventually(reported, seconds=SOON)
    await ws.close()


def _heartbeats_either_side_of_the_bound() -> tuple[datetime, dict[str, int], set[str]]:
    """Heartbeats written by Python just inside and just outside ``STALE_AFTER`` of the database's now.

    Returns the database's now as stored, what presence counts, and which processes a purge leaves.
    """
    stale_after = conf.STALE_AFTER
    started = datetime.now(tz=UTC) - timedelta(hours=1)
    probe = ServerProcess.objects.create(id="now", host="probe", pid=1, started_at=started, heartbeat_at=Now())
    probe.refresh_from_db()
    db_now = probe.heartbeat_at
    ages = {
        "fresh": timedelta(seconds=stale_after - 0.5),
        "stale": timedelta(seconds=stale_after + 0.5),
        # Whole seconds: stored without a fraction (SQLite keeps text), compared with the database's fractions.
        "fresh-whole-second": db_now - (db_now - timedelta(seconds=stale_after - 2)).replace(microsecond=0),
        "stale-whole-second": db_now - (db_now - timedelta(seconds=stale_after + 1)).replace(microsecond=0),
    }
    for pid, (name, age) in enumerate(ages.items(), start=2):
        process = ServerProcess.objects.create(
            id=name, host="probe", pid=pid, started_at=started, heartbeat_at=db_now - age
        )
        Connection.objects.create(
            temp_id=name,
            process=process,
            channel_name=f"specific.test!{name}",
            connected_at=started,
            registered_at=started,
            last_activity_at=started,
        )
        Registration.objects.create(connection_id=name, recipient=name)
    counts = connection_counts(ages)
    ServerProcess.objects.stale().purge()
    return db_now, counts, set(ServerProcess.objects.values_list("pk", flat=True))


async def test_heartbeats_are_judged_by_the_database_clock_in_the_format_they_are_stored() -> None:
    # STALE_AFTER (30 s) is far longer than this test takes: "fresh" stays fresh until the purge.
    db_now, counts, left = await sync_to_async(_heartbeats_either_side_of_the_bound)()
    # The database's now is UTC, as Django stores datetimes (this host's clock is the database's here).
    assert abs(db_now - datetime.now(tz=UTC)) < timedelta(seconds=2)
    assert counts == {"fresh": 1, "fresh-whole-second": 1, "stale": 0, "stale-whole-second": 0}
    assert left == {"now", "fresh", "fresh-whole-second"}


@sync_to_async
def skewed_clock_state(steady: Daphne, skewed: Daphne) -> dict[str, Any]:
    """The steady process's last heartbeat, the skewed one's clock offset, and what presence counts."""
    processes = {
        p.pid: p
        for p in ServerProcess.objects.filter(pid__in=[steady.process.pid, skewed.process.pid]).annotate(now=Now())
    }
    first_connected = Connection.objects.filter(process__pid=skewed.process.pid).order_by("connected_at").first()
    steady_row = processes.get(steady.process.pid)
    return {
        "steady_heartbeat": steady_row.heartbeat_at if steady_row else None,
        "skewed_offset": (first_connected.connected_at - steady_row.now).total_seconds()
        if first_connected and steady_row
        else None,
        "counts": connection_counts(["steady", "skewed"]),
    }


# Two to three times the bound: a process this far off was purged by the others or kept them alive.
SKEW = int(3 * STALE_AFTER)


@pytest.mark.parametrize("skew", [-SKEW, SKEW], ids=["behind", "ahead"])
async def test_a_process_on_a_host_whose_clock_is_off_stays_counted_and_its_rows_vanish_once_killed(
    daphne_factory: Callable[..., Daphne], skew: int
) -> None:
    if connection.vendor == "sqlite":
        pytest.skip(
            "SQLite has no clock of its own: each process reads its host's clock, and processes sharing "
            "one SQLite file share one host"
        )
    steady = daphne_factory(FAST_HEARTBEAT)
    skewed = daphne_factory({**FAST_HEARTBEAT, **skewed_clock(skew)})
    steady_ws = await open_client(steady.url)
    await register(steady_ws, "steady")
    opened = time.monotonic()
    skewed_ws = [await open_client(skewed.url) for _ in range(2)]
    for ws in skewed_ws:
        await register(ws, "skewed")
    await eventually(until(lambda r: sum(len(row["ids"]) for row in r.values()) == 3, steady, skewed), seconds=SOON)
    state = await skewed_clock_state(steady, skewed)
    # The clock did shift: the skewed process dates its connections by it. Its first connection was
    # dated between the moment it opened and the query, which a busy machine may make seconds apart.
    since_opened = time.monotonic() - opened
    assert skew - since_opened - 0.5 <= state["skewed_offset"] <= skew + 0.5, (state["skewed_offset"], since_opened)

    # Across the other's heartbeats for longer than the bound, nobody's rows are purged and all count.
    first_beat = state["steady_heartbeat"]
    async with asyncio.timeout(SOON + STALE_AFTER):
        while state["steady_heartbeat"] - first_beat < timedelta(seconds=STALE_AFTER + HEARTBEAT):
            assert state["counts"] == {"steady": 1, "skewed": 2}
            assert [len(await rows(server)) for server in (steady, skewed)] == [1, 2]
            await asyncio.sleep(0.05)  # polling what other processes write: nothing to await
            state = await skewed_clock_state(steady, skewed)
            assert state["steady_heartbeat"] is not None, "the steady process's row was purged"
    for server in (steady, skewed):
        assert "this process's rows were purged" not in server.log()

    skewed.stop(signal.SIGKILL)
    # Purged by the steady process within STALE_AFTER + one heartbeat, whichever way the clock was off.
    await eventually(until(lambda r: r == {}, skewed), seconds=STALE_AFTER + HEARTBEAT + 1.0)
    assert await process_rows(skewed) == 0
    assert await aconnection_count("skewed") == 0
    assert await aconnection_count("steady") == 1
    await steady_ws.close()
