"""Redis Sentinel: a master, a replica and three sentinels, all real; the master is SIGKILLed mid-stream.

Two daphne processes find the master through the sentinels
(``REDIS_SENTINELS``, ``REDIS_SENTINEL_MASTER``). A v2 sender streams
notifications to a v1 client registered before the failover and learns each
one's outcome; after the replica's promotion the client receives again
without reconnecting, ``manage.py notify`` reaches it, everything the sender
was told went live or pending arrived exactly once and nothing refused did,
and a resume from before the failover says ``recovered: false`` (the replica
may lack the old master's last writes).
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis
from redis.sentinel import MasterNotFoundError, Sentinel

from harness.clients import open_client, open_registered, receive, receive_json, register_v2, send_v2
from harness.servers import Daphne, Python, RedisSentinel, RedisServer, eventually, wait_until
from tests.test_operations import Scrape, aget

MASTER = "notify-master"
PREFIX = "sentinel"


@dataclass
class SentinelRedis:
    master: RedisServer
    replica: RedisServer
    sentinels: list[RedisSentinel]

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def master_port(self) -> int | None:
        """The master's port as the sentinels say; None while none is agreed (during a failover)."""
        sentinel = Sentinel([("127.0.0.1", s.port) for s in self.sentinels], socket_timeout=1)
        try:
            return int(sentinel.discover_master(MASTER)[1])
        except MasterNotFoundError:
            return None


def _info(server: RedisServer, section: str) -> dict[str, str]:
    client = redis.Redis.from_url(server.url)
    try:
        return {k: str(v) for k, v in client.info(section).items()}
    finally:
        client.close()


def _sentinel_knows_everyone(sentinel: RedisSentinel) -> bool:
    client = redis.Redis(port=sentinel.port)
    try:
        replicas = client.execute_command("SENTINEL", "REPLICAS", MASTER)
        others = client.execute_command("SENTINEL", "SENTINELS", MASTER)
        return len(replicas) == 1 and len(others) == 2
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture
def sentinel_redis() -> Iterator[SentinelRedis]:
    master = RedisServer.start()
    replica = RedisServer.start(args=("--replicaof", "127.0.0.1", str(master.port)))
    sentinels: list[RedisSentinel] = []
    try:
        sentinels = [RedisSentinel.start(MASTER, master.port) for _ in range(3)]
        yield SentinelRedis(master, replica, sentinels)
    finally:
        for sentinel in sentinels:
            sentinel.stop()
        replica.stop()
        master.stop()


async def test_after_the_master_is_killed_the_replica_takes_over_and_every_notification_is_accounted_for(
    daphne_factory: Callable[..., Daphne], sentinel_redis: SentinelRedis, manage: Python
) -> None:
    setup = sentinel_redis
    await wait_until(lambda: _info(setup.replica, "replication").get("master_link_status") == "up", seconds=20)
    await wait_until(lambda: all(_sentinel_knows_everyone(s) for s in setup.sentinels), seconds=30, interval=0.2)
    env: dict[str, str | None] = {
        "REDIS_URL": None,  # the suite's own Redis, when set, is not this one
        "REDIS_SENTINELS": setup.addresses,
        "REDIS_SENTINEL_MASTER": MASTER,
        "REDIS_PREFIX": PREFIX,
        "NOTIFY_METRICS_ALLOWED_ADDRESSES": "127.0.0.1",
    }
    first, second = daphne_factory(env), daphne_factory(env)
    receiver = await open_registered(second.url, "failover-v1", seconds=20)
    # A v2 client whose place, before the failover, is kept in the master's history.
    watcher = await open_client(second.url)
    await register_v2(watcher, "failover-v2")
    sender = await open_client(first.url)
    assert (await send_v2(sender, "failover-v2", "before"))["outcome"] == "live"
    since = (await receive_json(watcher))["position"]
    await watcher.close()

    outcomes: dict[str, str] = {}
    promoted = asyncio.Event()
    live_after_promotion = 0

    async def stream() -> None:
        nonlocal live_after_promotion
        n = 0
        while live_after_promotion < 20:
            n += 1
            text = f"stream {n}"
            reply = await send_v2(sender, "failover-v1", text, seconds=15)
            outcomes[text] = reply["outcome"]
            if promoted.is_set() and reply["outcome"] == "live":
                live_after_promotion += 1
            await asyncio.sleep(0.05)
            if n > 2000:
                raise AssertionError("the stream never went live again after the promotion")

    streaming = asyncio.create_task(stream())
    await wait_until(lambda: len(outcomes) >= 20, seconds=20)
    old_port = setup.master.port
    assert setup.master.process is not None
    setup.master.process.send_signal(signal.SIGKILL)
    setup.master.process.wait(10)
    await wait_until(lambda: setup.master_port() not in (old_port, None), seconds=30, interval=0.2)
    assert setup.master_port() == setup.replica.port
    promoted.set()
    await asyncio.wait_for(streaming, 60)

    # Every notification the sender was told went live or pending reached the client once; none refused did.
    counts = Counter(outcomes.values())
    assert set(counts) <= {"live", "pending", "refused"}, counts
    expected = {text for text, outcome in outcomes.items() if outcome in ("live", "pending")}
    received: list[str] = []

    async def all_arrived() -> bool:
        while True:
            try:
                received.append(await receive(receiver, seconds=0.2))
            except TimeoutError:
                return expected <= set(received)

    await eventually(all_arrived, seconds=20)
    assert not [text for text, n in Counter(received).items() if n > 1], "duplicates"
    assert set(received) == expected, sorted(set(received) ^ expected)
    assert counts["live"] + counts["pending"] + counts["refused"] == len(outcomes)

    # The relaying process counted each refused one as undeliverable, with its reason.
    scrape = Scrape((await aget(f"{first.http_url}/metrics")).body)
    assert scrape.value("notify_undeliverable_total", reason="layer_refused") == counts["refused"]

    # The operator's command finds the new master through the sentinels.
    result = manage("notify", "failover-v1", "by the command", env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert await receive(receiver) == "by the command"

    # A resume from before the failover is not claimed as recovered: the replica may lack the last writes.
    resumer = await open_client(first.url)
    reply = await register_v2(resumer, "failover-v2", since=since)
    assert reply["recovered"] is False
    assert "serves a history it took over (a failover" in first.log() + second.log()
    for ws in (receiver, sender, resumer):
        await ws.close()
    for server in (first, second):
        assert "Traceback" not in server.log()
