"""Sharded Redis: REDIS_URL with several servers, each holding a share of the ids.

Three real redis-server processes and two daphne processes: every id lives
on one shard, the same in every process; a shard that is SIGKILLed affects
only its own ids (sends to them are refused at once and counted, the others'
notifications keep flowing), /readyz stays 200 naming it, and once it is back
its ids receive again without their clients reconnecting.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from websockets.asyncio.client import ClientConnection

from harness.clients import frame, open_client, open_registered, receive, receive_json, register_v2, send_v2
from harness.servers import Daphne, Python, RedisServer, eventually, wait_until
from notifications.layers.redis import RedisPubSubLayer, _LoopLayer
from notifications.protocol import broadcast_group, group_name
from tests.test_operations import Scrape, aget

PREFIX = "shards"
IDS = [f"shard-client-{n:02d}" for n in range(30)]


@pytest.fixture
def shards() -> Iterator[list[RedisServer]]:
    servers = [RedisServer.start() for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()


def group_channel(recipient: str) -> str:
    return f"{PREFIX}__group__{group_name(recipient)}"


def subscribed_groups(server: RedisServer) -> set[str]:
    client = redis.Redis.from_url(server.url)
    try:
        return {c.decode() for c in client.pubsub_channels(f"{PREFIX}__group__*")}  # type: ignore[union-attr]
    finally:
        client.close()


def numsub(server: RedisServer, channel: str) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        return int(client.pubsub_numsub(channel)[0][1])  # type: ignore[index]
    finally:
        client.close()


def layer_of(urls: list[str]) -> _LoopLayer:
    return _LoopLayer(hosts=urls, prefix=PREFIX, channel_layer=RedisPubSubLayer(hosts=urls, prefix=PREFIX))


def test_each_id_has_one_shard_and_removing_a_shard_moves_only_its_own_ids() -> None:
    urls = [f"redis://127.0.0.1:{port}/0" for port in (7001, 7002, 7003)]
    three = layer_of(urls)
    placed = {r: three._get_shard(group_channel(r)).name for r in IDS}
    assert all(three._get_shard(group_channel(r)).name == shard for r, shard in placed.items())  # stable
    assert set(placed.values()) == set(urls)  # thirty ids use every shard
    # The same in another process, whatever the order of REDIS_URL, and with a password added.
    other = layer_of([urls[2], urls[0].replace("redis://", "redis://:secret@"), urls[1]])
    assert {r: other._get_shard(group_channel(r)).name for r in IDS} == {
        r: s.replace("redis://", "redis://:***@") if s == urls[0] else s for r, s in placed.items()
    }
    # Without the third shard, only its ids move.
    two = layer_of(urls[:2])
    for recipient, shard in placed.items():
        if shard != urls[2]:
            assert two._get_shard(group_channel(recipient)).name == shard


async def test_thirty_ids_over_three_shards_and_a_dead_shard_stops_only_its_own(
    daphne_factory: Callable[..., Daphne], shards: list[RedisServer], manage: Python
) -> None:
    env = {
        "REDIS_URL": ",".join(s.url for s in shards),
        "REDIS_PREFIX": PREFIX,
        "NOTIFY_METRICS_ALLOWED_ADDRESSES": "127.0.0.1",
    }
    first, second = daphne_factory(env), daphne_factory(env)
    # Thirty ids, half on each process; a sender on each.
    clients = {r: await open_registered((first if n % 2 else second).url, r, seconds=20) for n, r in enumerate(IDS)}
    sender = await open_client(first.url)
    for recipient in IDS:
        await sender.send(frame(recipient, f"hello {recipient}"))
    for recipient, ws in clients.items():
        assert await receive(ws) == f"hello {recipient}"

    # Each id's group is subscribed on exactly one shard, and every shard holds some.
    on_shard = [subscribed_groups(s) for s in shards]
    for recipient in IDS:
        assert sum(group_channel(recipient) in groups for groups in on_shard) == 1, recipient
    assert all(len(groups & {group_channel(r) for r in IDS}) >= 3 for groups in on_shard), [len(g) for g in on_shard]
    shard_of = {r: next(i for i, g in enumerate(on_shard) if group_channel(r) in g) for r in IDS}
    # The shard to kill: the one the broadcast group lives on.
    everyone = f"{PREFIX}__group__{broadcast_group()}"
    dead = next(i for i, groups in enumerate(on_shard) if everyone in groups)
    lost = [r for r in IDS if shard_of[r] == dead]
    alive = [r for r in IDS if shard_of[r] != dead]

    # A v2 client of one of the dead shard's ids, whose place is kept there.
    watcher = await open_client(first.url)
    await register_v2(watcher, lost[0])
    await sender.send(frame(lost[0], "kept on the shard"))
    assert await receive(clients[lost[0]]) == "kept on the shard"
    since = (await receive_json(watcher))["position"]
    await watcher.close()

    # The shard is SIGKILLed.
    assert shards[dead].process is not None
    shards[dead].process.send_signal(signal.SIGKILL)
    shards[dead].process.wait(10)

    # A v2 sender learns at once that a dead shard's id is refused; the others' go live without delay,
    # each frame answered well under a second, the refused ones included.
    v2 = await open_client(second.url)
    outcomes: dict[str, str] = {}
    slowest = 0.0
    for recipient in lost[:3] + alive[:6] + lost[3:5]:
        started = time.monotonic()
        reply = await send_v2(v2, recipient, f"during {recipient}")
        slowest = max(slowest, time.monotonic() - started)
        outcomes[recipient] = reply["outcome"] if reply["outcome"] != "refused" else f"refused:{reply['code']}"
    assert slowest < 0.5, slowest
    assert {outcomes[r] for r in lost[:3] + lost[3:5]} == {"refused:unavailable"}
    assert {outcomes[r] for r in alive[:6]} == {"live"}
    for recipient in alive[:6]:
        assert await receive(clients[recipient], seconds=2) == f"during {recipient}"

    # A v1 sender's frames to a dead shard's ids do not hold up its frames to the others'.
    started = time.monotonic()
    for recipient in lost[:4]:
        await sender.send(frame(recipient, "to the dead shard"))
    await sender.send(frame(alive[0], "right after"))
    assert await receive(clients[alive[0]], seconds=2) == "right after"
    assert time.monotonic() - started < 1.0

    # A process started now registers new connections for the other shards' ids, although the
    # broadcast group, and some of the connections' own channels, live on the dead shard.
    third = daphne_factory(env)
    newcomers = [await open_registered(third.url, recipient, seconds=10) for recipient in alive[:6]]
    assert "Traceback" not in third.log()

    # Both processes stay ready, naming the shard that is down and no other.
    for server in (first, second):
        answer = await aget(f"{server.http_url}/readyz")
        assert answer.status == 200, answer
        body = json.loads(answer.body)
        assert body["status"] == "ready", body
        assert f"Redis {dead} ({shards[dead].url})" in body["degraded"], body
        assert all(s.url not in body["degraded"] for i, s in enumerate(shards) if i != dead), body

    # What could not be sent is counted, by reason, by the process that tried: the 4 relayed through the
    # first, the 5 sent by v2 through the second. Each process's own scrape shows its figures as they are
    # now (another's reach it only with that one's next registry write, up to a heartbeat later).
    refused: list[float] = []

    async def counted() -> bool:
        refused[:] = [
            Scrape((await aget(f"{server.http_url}/metrics")).body).value(
                "notify_undeliverable_total",
                reason="layer_refused",
                process=f"{socket.gethostname()}:{server.process.pid}",
            )
            for server in (first, second)
        ]
        return refused == [4, 5]

    try:
        await eventually(counted, seconds=10, interval=0.3)
    except TimeoutError:
        pytest.fail(f"refused, as the first and the second process count them: {refused}, not [4, 5]")

    # The shard comes back (empty, where it was): its ids receive again, nobody reconnects.
    shards[dead].start_again()
    for recipient in lost:
        await eventually_receives(sender, clients[recipient], recipient, seconds=20)
    for recipient in alive:
        await sender.send(frame(recipient, "after"))
        assert await receive_past_probes(clients[recipient]) == "after"
    for ws in newcomers:  # registered for the first six of them
        assert await receive_past_probes(ws) == "after"
    # The broadcast group is subscribed again everywhere, the third process's too, and a broadcast
    # reaches every registered connection once.
    await wait_until(lambda: numsub(shards[dead], everyone) == 3, seconds=10)
    result = manage("notify", "--all", "to everyone", env=env)
    assert result.returncode == 0, result.stderr
    for ws in [*clients.values(), *newcomers]:
        assert await receive_past_probes(ws) == "to everyone"

    # A v2 client of the dead shard's id resuming from before: its history went with the shard.
    resumer = await open_client(first.url)
    assert (await register_v2(resumer, lost[0], since=since))["recovered"] is False
    for ws in [*clients.values(), *newcomers, sender, v2, resumer]:
        await ws.close()
    for server in (first, second, third):
        assert "Traceback" not in server.log()


async def receive_past_probes(ws: ClientConnection) -> str:
    """The next notification other than the probes of :func:`eventually_receives`.

    A probe sent while the shard's subscription was being made again was kept pending, and is
    handed over after the subscription: after later probes, which went live.
    """
    while (text := await receive(ws)).startswith("back "):
        pass
    return text


async def eventually_receives(
    sender: ClientConnection, ws: ClientConnection, recipient: str, *, seconds: float
) -> None:
    """Send probes to ``recipient`` until ``ws`` receives one (the shard may take a moment to be subscribed again)."""
    deadline = time.monotonic() + seconds
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        text = f"back {attempt}"
        await sender.send(frame(recipient, text))
        try:
            while (await asyncio.wait_for(ws.recv(), 0.5)) != text:
                pass
            return
        except TimeoutError:
            continue
    raise AssertionError(f"{recipient} receives nothing {seconds} s after its shard came back")


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:secret@h/0?password=secret&db=1", "redis://user:***@h/0?password=***&db=1"),
        ("unix:///run/redis.sock?password=secret", "unix:///run/redis.sock?password=***"),
        ("redis://h:6379/0?socket_timeout=5", "redis://h:6379/0?socket_timeout=5"),
    ],
)
def test_a_shard_is_named_in_logs_and_probes_without_its_password(address: str, shown: str) -> None:
    assert layer_of([address, "redis://other:6379/0"])._shards[0].name == shown
