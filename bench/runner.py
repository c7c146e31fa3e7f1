"""Start the servers, drive the load generator workers against each, report.

Every server is started here, on loopback and free ports: the project as
deployed (``bin/daphne`` processes on Redis and the real database) and the
baseline (:mod:`bench.baseline`). Each scenario gets a fresh server so that
memory figures are not flattered by memory freed in an earlier scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import redis

from harness.clients import open_client, receive_json, register_v2, send_v2
from harness.servers import ROOT, RedisServer, free_port, run_python, start_daphne, wait_for_port

RECEIVERS = 100
SENDERS = 10
# The project with another channel layer, to show why the project's own was chosen.
VARIANTS = {
    "library-pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "library-redis": "channels_redis.core.RedisChannelLayer",
    "in-memory": "notifications.layers.memory.InMemoryLayer",
}
# The project with settings of its own, by the environment variables that set them.
SETTINGS_VARIANTS: dict[str, dict[str, str]] = {
    # No history and no pending: what keeping notifications costs, side by side with "project".
    "history-off": {"NOTIFY_HISTORY_SIZE": "0"},
}
# Servers of protocol v1 alone, one process each: the old server, and its logic on daphne (bench/floor.py).
V1_ONLY = ("baseline", "daphne-floor")
SERVERS = ["baseline", "daphne-floor", "project", *SETTINGS_VARIANTS, *VARIANTS]
SCENARIOS = ["mass", "idle", "relay", "resume"]
# Seconds the server's counters may take to settle after a relay run (what was in flight becomes pending).
SETTLE = 30.0
# The resume scenario: a v2 client that missed RESUME_COUNT notifications comes back, RESUME_ROUNDS times.
RESUME_COUNT = 100
RESUME_ROUNDS = 20
# What the server counts for each notification it could not hand to a client (metrics' names).
UNDELIVERABLE_REASONS = ("layer_full", "not_reading", "missed", "unhandled_frames")


@dataclass
class Options:
    servers: list[str]
    processes: list[int] = field(default_factory=lambda: [1])  # daphne processes of the project, one run each
    rates: list[int] = field(default_factory=lambda: [400, 2000])
    seconds: float = 10.0
    rounds: int = 3  # relay rounds, the servers alternated (see relay_side_by_side)
    saturation_limit: int = 50_000
    drain: float = 10.0
    connections: list[int] = field(default_factory=lambda: [2000, 10000])
    mass: int = 2000
    idle_workers: int = 2
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    settle: float = 2.0  # seconds before reading memory, so that allocations settle
    log_level: str = "WARNING"
    redis_url: str = ""
    database_url: str = ""


@dataclass
class Running:
    name: str
    urls: list[str]
    pids: list[int]
    log_paths: list[Path]
    redis: redis.Redis | None = None
    redis_pid: int | None = None
    prefix: str = ""
    stop: Any = None
    counters: Any = None  # () -> the server's counters, summed over its processes (the project only)

    def rss(self) -> int:
        return sum(psutil.Process(pid).memory_info().rss for pid in self.pids)

    def cpu(self) -> float:
        return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in self.pids)

    def redis_cpu(self) -> float | None:
        return sum(psutil.Process(self.redis_pid).cpu_times()[:2]) if self.redis_pid else None

    def log_size(self) -> int:
        return sum(path.stat().st_size for path in self.log_paths)

    def log_problems(self, since: int) -> list[str]:
        """Lines at ERROR or worse, and tracebacks, written after ``since`` bytes of log."""
        text = "".join(path.read_text(errors="replace") for path in self.log_paths)[since:]
        return [line for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line or "Traceback" in line]

    def undeliverable_logged(self, since: int) -> int:
        """WARNING lines of notifications the server could not deliver (dropped, not just late)."""
        text = "".join(path.read_text(errors="replace") for path in self.log_paths)[since:]
        return text.count("Undeliverable notification for ")

    def redis_memory(self) -> int | None:
        """Redis's ``used_memory`` in bytes (None without Redis): what registrations cost it."""
        return None if self.redis is None else int(self.redis.info("memory")["used_memory"])

    def subscriptions(self, pattern: str) -> int | None:
        if self.redis is None:
            return None
        return len(self.redis.pubsub_channels(f"{self.prefix}{pattern}"))


def raise_fd_limit() -> int:
    """10,000 connections need 10,000 descriptors in the server and as many in the clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Environment:
    """Redis and the database, shared by every project server of one run."""

    def __init__(self, options: Options, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.redis_server: RedisServer | None = None
        self.redis_url = options.redis_url
        self.database_url = options.database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
        self.migrated = False

    def redis_url_for_project(self) -> str:
        if not self.redis_url:
            self.redis_server = RedisServer.start()
            self.redis_url = self.redis_server.url
        return self.redis_url

    def env(self) -> dict[str, str | None]:
        return {
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "bench-only-secret-key-" + "x" * 40,
            "REDIS_URL": self.redis_url_for_project(),
            "DATABASE_URL": self.database_url,
            "LOG_LEVEL": self.options.log_level,
            # Each process writes its counters to the registry every second: the runner reads them there.
            "NOTIFY_HEARTBEAT_INTERVAL": "1",
        }

    def counters(self, not_before: float) -> dict[str, int]:
        """The counters of every live project process, summed, as written after ``not_before`` (a time.time())."""
        deadline = time.monotonic() + 15
        while True:
            done = run_python("manage.py", "notify_stats", "--json", env=self.env(), timeout=60)
            if done.returncode != 0:
                raise RuntimeError(f"manage.py notify_stats failed with {done.returncode}:\n{done.stderr}")
            stats = json.loads(done.stdout)
            beats = [datetime.fromisoformat(p["heartbeat_at"]).timestamp() for p in stats["processes"]]
            if beats and min(beats) >= not_before:
                return {str(k): int(v) for k, v in stats["total"]["counters"].items()}
            if time.monotonic() > deadline:
                raise RuntimeError(f"no process wrote its counters after the run: {stats}")
            time.sleep(0.3)  # the next heartbeat, a second apart (the bench's own wait, not a test's)

    def migrate(self) -> None:
        if self.migrated:
            return
        done = run_python("manage.py", "migrate", "--noinput", "-v", "0", env=self.env(), timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"manage.py migrate failed with {done.returncode}:\n{done.stderr}")
        self.migrated = True

    def close(self) -> None:
        if self.redis_server is not None:
            self.redis_server.stop()


@contextmanager
def start_server(name: str, env_: Environment, processes: int = 1) -> Iterator[Running]:
    workdir = env_.workdir
    if name in V1_ONLY:
        port = free_port()
        log_path = workdir / f"{name}-{port}.log"
        command = {
            "baseline": ["-m", "bench.baseline", str(port)],
            # The project's launch line and WebSocket options (bin/daphne), on the bare relay.
            "daphne-floor": [
                *("-m", "notifyproject.server", "-b", "127.0.0.1", "-p", str(port)),
                *("--ping-interval", "60", "--ping-timeout", "30", "--websocket_timeout", "-1"),
                "bench.floor:application",
            ],
        }[name]
        with log_path.open("wb") as log:
            process = subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, process=process)
            yield Running(name, [f"ws://127.0.0.1:{port}/"], [process.pid], [log_path])
        finally:
            process.terminate()
            process.wait(timeout=30)
        return
    env_.migrate()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    env = {**env_.env(), "REDIS_PREFIX": prefix}
    if name in VARIANTS:
        env.update({"DJANGO_SETTINGS_MODULE": "bench.settings", "BENCH_CHANNEL_LAYER": VARIANTS[name]})
    env.update(SETTINGS_VARIANTS.get(name, {}))
    daphnes = [start_daphne(env=env, log_dir=workdir) for _ in range(processes)]
    client = redis.Redis.from_url(env_.redis_url)
    redis_pid = env_.redis_server.process.pid if env_.redis_server and env_.redis_server.process else None
    try:
        yield Running(
            name,
            [d.url for d in daphnes],
            [d.process.pid for d in daphnes],
            [d.log_path for d in daphnes],
            redis=client,
            redis_pid=redis_pid,
            prefix=prefix,
            counters=env_.counters,
        )
    finally:
        for d in daphnes:
            d.stop()
        client.close()


_workers: list[Worker] = []


class Worker:
    """One load generator process (bench/loadgen.py)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, spec: dict[str, Any]) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.loadgen",
            json.dumps(spec),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=256 * 1024 * 1024,
        )
        worker = cls(process)
        _workers.append(worker)
        return worker

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    async def expect(self, event: str, within: float = 300.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), within)
        if not line:
            code = await self.process.wait()
            raise RuntimeError(f"load generator exited with {code} while {event!r} was awaited")
        data = json.loads(line)
        if data["event"] != event:
            raise RuntimeError(f"load generator said {data['event']!r}, not {event!r}")
        return data

    def command(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")

    async def finish(self) -> None:
        try:
            await asyncio.wait_for(self.process.wait(), 60)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def relay(server: Running, *, rate: int, seconds: float, limit: int, drain: float) -> dict[str, Any]:
    """100 receivers, 10 open-loop senders at ``rate`` msg/s (0: saturation), then a drain window."""
    run = uuid.uuid4().hex[:8]
    receivers = await Worker.start(
        {"role": "receivers", "urls": server.urls, "first": 0, "count": RECEIVERS, "run": run}
    )
    await receivers.expect("ready")
    senders = await Worker.start(
        {
            "role": "senders",
            "urls": server.urls,
            "first": 0,
            "count": SENDERS,
            "receivers": RECEIVERS,
            "run": run,
            "rate": rate,
            "seconds": seconds,
            "limit": limit,
        }
    )
    await senders.expect("ready")
    cpu0, redis_cpu0, log0 = server.cpu(), server.redis_cpu(), server.log_size()
    counters0 = await asyncio.to_thread(server.counters, time.time()) if server.counters else None
    senders.command("go")
    sent = await senders.expect("result", within=seconds + 120)
    expected = sum(sent["sent"])
    receivers.command(f"drain {expected} {drain}")
    got = await receivers.expect("result", within=drain + 120)
    cpu1, redis_cpu1 = server.cpu(), server.redis_cpu()
    await asyncio.gather(senders.finish(), receivers.finish())
    delivered = got["delivered"]
    # What the server says became of what did not arrive: counted as undeliverable (by reason), or kept
    # as pending for the next registration (the receivers closed at the end of the window).
    accounted: dict[str, Any] = {}
    if counters0 is not None:
        # What was still on its way when the receivers closed reaches the server after they left, and is
        # kept as pending again: read the counters until they stop changing (at most SETTLE seconds).
        counters1 = await asyncio.to_thread(server.counters, time.time())
        settle_until = time.monotonic() + SETTLE
        while time.monotonic() < settle_until:
            again = await asyncio.to_thread(server.counters, time.time() + 1)  # a later heartbeat
            if again == counters1:
                break
            counters1 = again
        delta = {name: counters1.get(name, 0) - counters0.get(name, 0) for name in {*counters0, *counters1}}
        undeliverable = {reason: delta.get(reason, 0) for reason in UNDELIVERABLE_REASONS if delta.get(reason, 0)}
        accounted = {
            "server_relayed": delta.get("relayed", 0),
            "server_delivered": delta.get("delivered", 0),
            "server_undeliverable": delta.get("undeliverable", 0),
            "server_undeliverable_by_reason": undeliverable,
            "server_pending": delta.get("pending", 0) + delta.get("pending_again", 0),
            "server_reads_paused": delta.get("reads_paused", 0),
            # Sent, neither received nor accounted for by the server: silently lost (must be 0).
            "unaccounted": expected
            - delivered
            - delta.get("undeliverable", 0)
            - delta.get("unhandled_frames", 0)  # read from a sender, never handled: not "undeliverable"
            - delta.get("pending", 0)
            - delta.get("pending_again", 0),
        }
    span = (got["last_ns"] - sent["start_ns"]) / 1e9 if delivered else 0.0
    latencies = got["latencies_ms"]
    return {
        "offered_rate": rate or None,
        "sent": expected,
        "send_rate": round(expected / sent["seconds"]) if sent["seconds"] else None,
        "delivered": delivered,
        "lost": expected - delivered,
        "duplicated": got["duplicated"],
        "misrouted": got["misrouted"],
        "delivered_rate": round(delivered / span) if span else None,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p99_ms": percentile(latencies, 99),
        "cpu_us_per_msg": round((cpu1 - cpu0) / delivered * 1e6, 1) if delivered else None,
        "redis_cpu_us_per_msg": (
            round((redis_cpu1 - redis_cpu0) / delivered * 1e6, 1) if delivered and redis_cpu0 is not None else None
        ),
        "sender_errors": sent["errors"],
        "receivers_closed": got["closed"],
        "server_log_errors": len(server.log_problems(log0)),
        "server_undeliverable_logged": server.undeliverable_logged(log0),
        **accounted,
    }


async def idle(server: Running, *, count: int, workers: int, concurrency: int, settle: float) -> dict[str, Any]:
    """Connect and register ``count`` clients, measure memory, then close them all at once."""
    run = uuid.uuid4().hex[:8]
    specific0 = server.subscriptions("specific.*")
    groups0 = server.subscriptions("__group__*")
    await asyncio.sleep(settle)
    rss0, log0, redis0 = server.rss(), server.log_size(), server.redis_memory()
    share = count // workers
    pool = [
        await Worker.start(
            {
                "role": "idle",
                "urls": server.urls,
                "first": i * share,
                "count": share if i < workers - 1 else count - share * (workers - 1),
                "run": run,
                "concurrency": concurrency,
            }
        )
        for i in range(workers)
    ]
    for worker in pool:
        await worker.expect("ready")
    for worker in pool:
        worker.command("go")
    registered = [await worker.expect("registered", within=600) for worker in pool]
    await asyncio.sleep(settle)  # let allocations settle before reading RSS (a measurement, not a sync)
    rss1, redis1 = server.rss(), server.redis_memory()
    groups_held = server.subscriptions("__group__*")
    for worker in pool:
        worker.command("close")
    closed = [await worker.expect("result", within=600) for worker in pool]
    await asyncio.gather(*(worker.finish() for worker in pool))
    stale_groups = stale_specific = None
    if groups0 is not None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stale_groups = server.subscriptions("__group__*") - groups0
            stale_specific = server.subscriptions("specific.*") - specific0
            if stale_groups <= 0 and stale_specific <= 0:
                break
            await asyncio.sleep(0.2)
    n_registered = sum(r["registered"] for r in registered)
    codes: dict[str, int] = {}
    for result in closed:
        for code, n in result["closed_by_server"].items():
            codes[code] = codes.get(code, 0) + n
    return {
        "connections": count,
        "registered": n_registered,
        "register_failures": sum(r["failed"] for r in registered),
        "failure_samples": [s for r in registered for s in r["failures"]][:5],
        "connect_register_seconds": round(max(r["seconds"] for r in registered), 3),
        "connect_register_rate": round(n_registered / max(r["seconds"] for r in registered)),
        "rss_before_mb": round(rss0 / 2**20, 1),
        "rss_after_mb": round(rss1 / 2**20, 1),
        "rss_per_connection_kb": round((rss1 - rss0) / max(n_registered, 1) / 1024, 1),
        # Redis's memory for each registered connection (its subscriptions): shared by a deployment's processes.
        "redis_bytes_per_connection": None
        if redis0 is None or redis1 is None
        else round((redis1 - redis0) / max(n_registered, 1)),
        "group_subscriptions_held": None if groups_held is None else groups_held - (groups0 or 0),
        "closed_by_server": codes,
        "close_errors": sum(r["close_errors"] for r in closed),
        "close_seconds": round(max(r["close_seconds"] for r in closed), 3),
        "stale_group_subscriptions": stale_groups,
        "stale_channel_subscriptions": stale_specific,
        "server_log_errors": len(server.log_problems(log0)),
        "server_log_error_samples": server.log_problems(log0)[:5],
    }


async def resume(server: Running, *, count: int, rounds: int) -> dict[str, Any]:
    """A v2 client that missed ``count`` notifications registers with ``since``: how long until it has them all.

    Each round uses an id of its own: a client registers (v2), leaves, ``count``
    notifications are sent to its id (each kept in its history, and pending),
    and the client comes back with the position it had. Timed from its
    registration to the last replayed notification; server CPU over the same span.
    """
    run = uuid.uuid4().hex[:8]
    url = server.urls[0]
    sender = await open_client(url)
    seconds: list[float] = []
    cpu = 0.0
    recovered = 0
    try:
        for round_ in range(rounds):
            recipient = f"resume-{run}-{round_}"
            page = await open_client(url)
            since = (await register_v2(page, recipient))["position"]
            await page.close()
            for i in range(count):
                await send_v2(sender, recipient, f"{round_}:{i}")
            page = await open_client(url)
            cpu0, start = server.cpu(), time.perf_counter()
            reply = await register_v2(page, recipient, since)
            if reply["recovered"] is not True:  # a server that keeps nothing: nothing to time
                await page.close()
                continue
            replayed = 0
            while replayed < count:
                replayed += (await receive_json(page, 30)).get("replayed") is True
            seconds.append(time.perf_counter() - start)
            cpu += server.cpu() - cpu0
            recovered += reply["recovered"] is True
            await page.close()
    finally:
        await sender.close()
    return {
        "notifications": count,
        "rounds": rounds,
        "recovered": recovered,
        "resume_ms_p50": round(1000 * percentile(seconds, 50), 2) if seconds else None,
        "resume_ms_p99": round(1000 * percentile(seconds, 99), 2) if seconds else None,
        "server_cpu_ms_per_resume": round(1000 * cpu / len(seconds), 2) if seconds else None,
    }


async def attempt(scenario: Any) -> dict[str, Any]:
    """Run one scenario; a server that fails it is part of the result, not the end of the run."""
    try:
        return await scenario
    except Exception as exc:
        for worker in _workers:
            worker.kill()
        return {"error": f"{type(exc).__name__}: {exc}"}


async def measure(name: str, env_: Environment, options: Options, progress: Any, processes: int = 1) -> dict[str, Any]:
    result: dict[str, Any] = {"server": name, "processes": 1 if name in V1_ONLY else processes}
    if "mass" in options.scenarios:
        with start_server(name, env_, processes) as server:
            progress(f"{name}: connect+register {options.mass} at once, then disconnect them at once")
            result["mass"] = await attempt(
                idle(server, count=options.mass, workers=1, concurrency=options.mass, settle=options.settle)
            )
    for count in options.connections if "idle" in options.scenarios else ():
        with start_server(name, env_, processes) as server:
            progress(f"{name}: {count} idle registered connections")
            result[f"idle_{count}"] = await attempt(
                idle(
                    server,
                    count=count,
                    workers=options.idle_workers,
                    concurrency=min(count, 250),
                    settle=options.settle,
                )
            )
    if "resume" in options.scenarios and name not in V1_ONLY:  # v1 only: nothing to resume
        with start_server(name, env_, processes) as server:
            progress(f"{name}: resume {RESUME_COUNT} missed notifications, {RESUME_ROUNDS} times")
            result["resume"] = await attempt(resume(server, count=RESUME_COUNT, rounds=RESUME_ROUNDS))
    return result


# Relay figures that are rates, latencies or costs: the median of the rounds. Every other number is a
# count (sent, lost, duplicated...), summed over the rounds: one lost notification in any round shows.
MEDIAN_FIELDS = (
    "offered_rate",
    "send_rate",
    "delivered_rate",
    "latency_p50_ms",
    "latency_p99_ms",
    "cpu_us_per_msg",
    "redis_cpu_us_per_msg",
)
# Shown round by round beside the median, so that the spread is in the JSON too.
BY_ROUND_FIELDS = ("latency_p99_ms", "cpu_us_per_msg", "delivered_rate")


def combined(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One relay phase's rounds as one result: medians of rates and costs, sums of counts (the first error, if any)."""
    for result in rounds:
        if "error" in result:
            return result
    if len(rounds) == 1:
        return rounds[0]
    out: dict[str, Any] = {}
    for field_ in rounds[0]:
        values = [result.get(field_) for result in rounds]
        numbers = [v for v in values if isinstance(v, int | float)]
        if field_ in MEDIAN_FIELDS:
            out[field_] = statistics.median(numbers) if numbers else None
        elif all(isinstance(v, dict) for v in values):
            merged: dict[str, int] = {}
            for v in values:
                for key, count in v.items():  # type: ignore[union-attr]
                    merged[key] = merged.get(key, 0) + count
            out[field_] = merged
        elif len(numbers) == len(values):
            out[field_] = sum(numbers)
        else:
            out[field_] = values[0]
    out["rounds"] = len(rounds)
    for field_ in BY_ROUND_FIELDS:
        out[f"{field_}_by_round"] = [result.get(field_) for result in rounds]
    return out


async def relay_side_by_side(
    configs: list[tuple[str, str, int]], env_: Environment, options: Options, progress: Any, results: dict[str, Any]
) -> None:
    """The relay phases of every server, alternated: round after round, each phase runs on each server in turn.

    A machine's speed drifts over minutes (a virtual machine's neighbours);
    measured one server after the other, the drift lands in the ratio. With
    every server up at once and the servers taking turns phase by phase, each
    round compares them under nearly the same conditions, and the median of
    ``options.rounds`` rounds leaves out a round that drifted.
    """
    with contextlib.ExitStack() as stack:
        servers: dict[str, Running] = {}
        for key, name, processes in configs:
            servers[key] = stack.enter_context(start_server(name, env_, processes))
        for key, server in list(servers.items()):
            progress(f"{key}: warm-up")
            warm = await attempt(relay(server, rate=1000, seconds=1, limit=1000, drain=5))
            if "error" in warm:
                results[key]["relay"] = warm
                del servers[key]
        phases = [*((f"rate_{rate}", rate) for rate in options.rates), ("saturation", 0)]
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {key: {} for key in servers}
        for round_ in range(1, options.rounds + 1):
            for phase, rate in phases:
                for key, server in servers.items():
                    what = (
                        f"{rate} msg/s for {options.seconds:g} s"
                        if rate
                        else (f"saturation ({options.saturation_limit} messages, at most {options.seconds:g} s)")
                    )
                    progress(f"{key}: {what}, round {round_} of {options.rounds}")
                    limit = int(rate * options.seconds) if rate else options.saturation_limit
                    runs[key].setdefault(phase, []).append(
                        await attempt(
                            relay(server, rate=rate, seconds=options.seconds, limit=limit, drain=options.drain)
                        )
                    )
        for key, server in servers.items():
            for phase, _ in phases:
                results[key][phase] = combined(runs[key][phase])
            results[key]["history"] = history_memory(server)


def history_memory(server: Running) -> dict[str, Any] | None:
    """What the relay runs left kept in Redis: ids with a history, notifications kept, bytes per notification."""
    if server.redis is None:
        return None
    keys = list(server.redis.scan_iter(match=f"{server.prefix}kept:*:h", count=1000))
    if not keys:
        return None
    pipe = server.redis.pipeline(transaction=False)
    for key in keys:
        pipe.xlen(key)
        pipe.memory_usage(key, samples=0)
    replies = pipe.execute()
    kept = sum(replies[0::2])
    used = sum(r or 0 for r in replies[1::2])
    return {"ids": len(keys), "kept": kept, "bytes_per_notification": round(used / max(kept, 1))}


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


async def run(options: Options, progress: Any) -> dict[str, Any]:
    fd_limit = raise_fd_limit()
    if max(options.connections, default=0) + 100 > fd_limit:
        raise SystemExit(f"the descriptor limit is {fd_limit}: too low for {max(options.connections)} connections")
    with tempfile.TemporaryDirectory(prefix="notify-bench-") as tmp:
        env_ = Environment(options, Path(tmp))
        host = machine()
        try:
            started = time.time()
            results = {}
            configs = [
                (name if processes == 1 else f"{name} x{processes}", name, processes)
                for name in options.servers
                for processes in ([1] if name in V1_ONLY else options.processes)
            ]
            for key, name, processes in configs:
                results[key] = await measure(name, env_, options, progress, processes)
            if "relay" in options.scenarios:
                await relay_side_by_side(configs, env_, options, progress, results)
        finally:
            for worker in _workers:  # left over when a scenario failed
                worker.kill()
            env_.close()
    return {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "machine": host,
        "options": options.__dict__,
        "results": results,
    }
