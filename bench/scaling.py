"""The capacity plan, computed from a benchmark run: ``python -m bench.scaling [results.json] > docs/SCALING.md``.

Every number of the plan is arithmetic on figures that run measured (the
project's RSS and Redis memory per idle registered connection, its CPU per
delivered message, Redis's CPU per message, the bytes each kept notification
takes in Redis, its registration rate), shown beside the result, so that the
plan can be recomputed on the machine that will run it.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"

# The plan's own assumptions (not measurements), each stated in the document.
CORE_BUSY = 0.6  # share of a core a process is planned to use at the busiest expected rate: room for bursts
PROCESS_CONNECTIONS = 10_000  # connections per process: the most the benchmark held in one process
HOST_CORES = 2  # the machine kind the figures come from: one process per core
HOST_MEMORY_GB = 24
REDIS_CORE_BUSY = 0.5  # Redis is one thread: plan a shard per half core of commands
HISTORY_SIZE = 100  # NOTIFY_HISTORY_SIZE's default
HISTORY_TTL = 600  # NOTIFY_HISTORY_TTL's default, seconds
PING_INTERVAL = 60  # NOTIFY_PING_INTERVAL's default, seconds
EPHEMERAL_PORTS = 28_232  # Linux's default net.ipv4.ip_local_port_range, 32768-60999


@dataclass(frozen=True)
class Figures:
    """What one benchmark run measured of the project (one process unless named)."""

    when: str
    machine: str
    rss_kb: float  # RSS per idle registered connection, at the largest idle count
    idle_count: int
    process_base_mb: float  # a process's RSS before any connection
    redis_bytes: float | None  # Redis's memory per idle registered connection
    cpu_us: float  # server CPU per delivered message at the highest paced rate
    paced_rate: int
    redis_cpu_us: float | None  # Redis's CPU per delivered message at that rate
    saturation_one: float | None  # delivered msgs/s at saturation, one process
    saturation_two: float | None  # the same with two processes
    register_rate: float | None  # connections connected and registered per second, one process
    history_bytes: float | None  # Redis memory per kept notification

    @classmethod
    def of(cls, report: dict[str, Any]) -> Figures:
        results = report["results"]
        one = results["project"]
        two = results.get("project x2", {})
        idle = max((k for k in one if k.startswith("idle_")), key=lambda k: int(k.split("_")[1]))
        rates = sorted(int(k.split("_")[1]) for k in one if k.startswith("rate_"))
        paced = one[f"rate_{rates[-1]}"]
        machine = report["machine"]
        return cls(
            when=report["when"],
            machine=f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB",
            rss_kb=one[idle]["rss_per_connection_kb"],
            idle_count=int(idle.split("_")[1]),
            process_base_mb=one[idle]["rss_before_mb"],
            redis_bytes=one[idle].get("redis_bytes_per_connection"),
            cpu_us=paced["cpu_us_per_msg"],
            paced_rate=rates[-1],
            redis_cpu_us=paced.get("redis_cpu_us_per_msg"),
            saturation_one=one.get("saturation", {}).get("delivered_rate"),
            saturation_two=two.get("saturation", {}).get("delivered_rate"),
            register_rate=one.get("mass", {}).get("connect_register_rate"),
            history_bytes=(one.get("history") or {}).get("bytes_per_notification"),
        )


def _n(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:,.2g}"


def _gb(kb: float) -> str:
    return f"{kb / 2**20:,.1f} GB"


def clients_plan(f: Figures, clients: int) -> list[str]:
    processes = math.ceil(clients / PROCESS_CONNECTIONS)
    hosts = math.ceil(processes / HOST_CORES)
    memory_kb = clients * f.rss_kb + processes * f.process_base_mb * 1024
    per_host_kb = memory_kb / hosts
    pings = clients / PING_INTERVAL
    lines = [
        f"- **Processes:** {clients:,} / {PROCESS_CONNECTIONS:,} connections per process = **{processes:,}** "
        f"daphne processes; at {HOST_CORES} per {HOST_CORES}-core host, **{hosts:,} hosts** (or fewer, larger "
        "hosts: one process per core).",
        f"- **Memory:** {clients:,} × {f.rss_kb:g} KB + {processes:,} × {f.process_base_mb:g} MB = "
        f"**{_gb(memory_kb)}** in all, {_gb(per_host_kb)} per host (of {HOST_MEMORY_GB} GB).",
        f"- **Keep-alive:** {clients:,} / {PING_INTERVAL} s = {_n(pings)} pings per second across the "
        f"deployment, {_n(pings / processes)} per process: each is a frame and its answer, small beside the "
        f"{_n(1e6 * CORE_BUSY / f.cpu_us)} notifications per second a process is planned for.",
        f"- **File descriptors:** one per connection in daphne ({_n(clients / processes)} per process, under "
        f"`NOFILE` = 65,536); two per client in nginx (client and upstream): `worker_connections` ≥ "
        f"{_n(2 * clients)} / nginx workers, and `worker_rlimit_nofile` above that.",
        f"- **nginx to the hosts:** each upstream connection takes an ephemeral port of nginx's address towards "
        f"one host's socket: at most {EPHEMERAL_PORTS:,} per host with Linux's default "
        f"`net.ipv4.ip_local_port_range` (32768-60999). {_n(clients / hosts)} per host "
        + (
            "fits."
            if clients / hosts <= EPHEMERAL_PORTS
            else "does not: widen the range to 1024-65535 (64,511), bind each host's socket on several ports "
            "(one `server` line each), or give nginx several source addresses (`proxy_bind`)."
        ),
    ]
    if f.redis_bytes is not None:
        lines.append(
            f"- **Redis memory for the subscriptions:** {clients:,} × {_n(f.redis_bytes)} bytes = "
            f"**{_gb(clients * f.redis_bytes / 1024)}** (one subscription per registered id and process)."
        )
    if f.register_rate:
        rate = f.register_rate * processes
        lines.append(
            f"- **Everyone reconnecting at once** (a deploy, nginx restarted): {f.register_rate:,.0f} connections "
            f"registered per second per process × {processes:,} = {_n(rate)} per second: all back in "
            f"**{_n(clients / rate)} s**, if nginx spreads them evenly. The kernel's `net.core.somaxconn` and the "
            "socket's backlog (4,096 in deploy/) hold the bursts."
        )
    return lines


def rate_plan(f: Figures, rate: int) -> list[str]:
    cores = rate * f.cpu_us / 1e6
    processes = math.ceil(cores / CORE_BUSY)
    lines = [
        f"- **CPU:** {rate:,} × {f.cpu_us:g} µs = **{cores:.1f} cores** of daphne; at {CORE_BUSY:.0%} of a core "
        f"per process, **{processes} processes** ({math.ceil(processes / HOST_CORES)} hosts of {HOST_CORES} "
        "cores). A notification to an id registered by several connections costs this once per connection.",
    ]
    if f.redis_cpu_us is not None:
        redis_cores = rate * f.redis_cpu_us / 1e6
        shards = max(1, math.ceil(redis_cores / REDIS_CORE_BUSY))
        lines.append(
            f"- **Redis CPU:** {rate:,} × {f.redis_cpu_us:g} µs = **{redis_cores:.2f} of a core**: "
            + (
                "one Redis is enough."
                if shards == 1
                else f"at most {REDIS_CORE_BUSY:.0%} of a core each, **{shards} shards** "
                "(`REDIS_URL=redis://a/0,redis://b/0,...`)."
            )
        )
    if f.history_bytes is not None:
        kept = rate * HISTORY_TTL
        lines.append(
            f"- **History in Redis:** what {HISTORY_TTL} s (`NOTIFY_HISTORY_TTL`) of sends keeps, at most "
            f"{HISTORY_SIZE} per id (`NOTIFY_HISTORY_SIZE`): up to {rate:,} × {HISTORY_TTL} = {kept:,} "
            f"notifications × {_n(f.history_bytes)} bytes = **{_gb(kept * f.history_bytes / 1024)}** (fewer when "
            "ids reach their 100). Lower the TTL, or add shards: each holds its own ids' histories."
        )
    if f.saturation_one and f.saturation_two:
        gain = f.saturation_two / f.saturation_one
        lines.append(
            f"- **What one more process gave on the measuring machine:** {f.saturation_one:,.0f} msgs/s at "
            f"saturation with one process, {f.saturation_two:,.0f} with two ({gain:.2f}x), on {HOST_CORES} cores "
            "shared with Redis and the load generator: more a floor than a forecast."
        )
    return lines


def document(report: dict[str, Any]) -> str:
    f = Figures.of(report)
    redis = f"{f.redis_cpu_us:g} µs" if f.redis_cpu_us is not None else "not measured"
    measured = [
        f"| RSS per idle registered connection ({f.idle_count:,} held by one process) | {f.rss_kb:g} KB |",
        f"| a process's RSS before any connection | {f.process_base_mb:g} MB |",
        f"| Redis memory per idle registered connection | "
        f"{_n(f.redis_bytes) + ' bytes' if f.redis_bytes is not None else 'not measured'} |",
        f"| server CPU per delivered message at {f.paced_rate:,} msgs/s | {f.cpu_us:g} µs |",
        f"| Redis CPU per delivered message at {f.paced_rate:,} msgs/s | {redis} |",
        f"| connections connected and registered per second, one process | "
        f"{f'{f.register_rate:,.0f}' if f.register_rate else 'not measured'} |",
        f"| Redis memory per kept notification | "
        f"{_n(f.history_bytes) + ' bytes' if f.history_bytes is not None else 'not measured'} |",
    ]
    parts = [
        "# Sizing a deployment",
        "",
        "Written by `python -m bench.scaling` from the benchmark run below: every number is arithmetic on "
        "what that run measured, shown beside it, so that the plan can be recomputed on the machines that will "
        "run it (`python -m bench --servers baseline,project --processes 1,2`, then this command).",
        "",
        f"## What was measured ({f.when}; {f.machine})",
        "",
        "| figure | measured |",
        "|---|---|",
        *measured,
        "",
        "The plan also assumes (not measured): a process busy at most "
        f"{CORE_BUSY:.0%} of a core at the expected peak; at most {PROCESS_CONNECTIONS:,} connections per process "
        f"(the most the benchmark held in one); one process per core on {HOST_CORES}-core, {HOST_MEMORY_GB} GB "
        f"hosts (this machine kind); Redis at most {REDIS_CORE_BUSY:.0%} busy (one thread); the defaults "
        f"`NOTIFY_HISTORY_SIZE` = {HISTORY_SIZE}, `NOTIFY_HISTORY_TTL` = {HISTORY_TTL} s, "
        f"`NOTIFY_PING_INTERVAL` = {PING_INTERVAL} s.",
        "",
        "What a 2-core machine cannot show: how far processes scale on more cores. Two processes there share "
        "two cores with Redis and the load generator, so the benchmark's `project x2` row is a floor. The "
        "per-process figures above are what the plan multiplies.",
        "",
        "## 100,000 connected clients",
        "",
        *clients_plan(f, 100_000),
        "",
        "## 1,000,000 connected clients",
        "",
        *clients_plan(f, 1_000_000),
        "- **Redis pub/sub:** a million subscriptions are a million channels in Redis's dictionary; spread them "
        "over shards with the memory figure above. Redis Cluster is not supported (docs/DEPLOY.md).",
        "- **nginx:** two million sockets on one nginx host is past what a 2-core, 24 GB host should carry "
        "(not measured here); put several nginx hosts behind DNS or a layer-4 balancer, each with the "
        "upstream list of every daphne host.",
        "- **The limit per process** is the 10,000 connections the benchmark measured, not memory (a 24 GB host "
        "would hold far more): measure a larger idle count on your hosts (`--connections 50000`) before "
        "planning fewer, fuller processes.",
        "",
        "## 10,000 notifications per second",
        "",
        *rate_plan(f, 10_000),
        "",
        "## Kernel and nginx settings",
        "",
        "- `fs.file-max` and the services' `LimitNOFILE`/`minfds` (deploy/: 65,536) above the connections per "
        "process; nginx's `worker_rlimit_nofile` and `worker_connections` above twice its clients per worker.",
        "- `net.core.somaxconn` ≥ 4,096, the socket backlog deploy/ asks for, so that reconnect bursts queue.",
        "- `net.ipv4.ip_local_port_range` on the nginx host, as computed above.",
        "- Memory: the figures above plus the page cache nginx and the kernel's socket buffers need "
        "(`net.ipv4.tcp_mem`): a few KB per idle connection on each side.",
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DEFAULT_RESULTS
    try:
        report = json.loads(path.read_text())
        text = document(report)
    except (OSError, ValueError, KeyError) as exc:
        print(f"bench.scaling: cannot plan from {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
