"""Load generator worker: real WebSocket clients on loopback, driven by the runner.

One worker is one process (one Python process cannot saturate a server on a
2-core machine alone, so the runner starts several). It is started as
``python -m bench.loadgen '<json spec>'``, prints JSON lines on stdout
(``{"event": "ready"}``, then ``{"event": "result", ...}``) and takes one-word
commands on stdin (``go``, ``drain <expected> <seconds>``, ``close``).

Roles:

- ``receivers``: register ``count`` ids, confirm each by a probe to itself,
  then count what arrives: delivered, duplicated, misrouted, latency.
- ``senders``: open ``count`` connections and send open-loop at ``rate``
  messages/s in total (0: as fast as the connections take them) for
  ``seconds`` or ``limit`` messages, whichever comes first.
- ``idle``: connect and register ``count`` clients (``concurrency`` at once),
  confirm each, hold them until ``close``, then close them all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import time
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from harness.clients import frame, is_probe, open_client, open_registered

TIMEOUT = 30.0
# Many clients at once: no keep-alive pings, no cap on what waits to be read. No permessage-deflate:
# daphne does not negotiate it and the baseline (websockets) would, so offering it would compare a
# compressing server with one that does not; both run the same uncompressed wire format.
CONNECT_OPTIONS: dict[str, Any] = {
    "ping_interval": None,
    "close_timeout": TIMEOUT,
    "max_queue": None,
    "compression": None,
}


_background: set[asyncio.Future[None]] = set()


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


async def commands() -> asyncio.Queue[str]:
    """Lines from stdin, as a queue (the runner's commands)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def pump() -> None:
        while line := await reader.readline():
            await queue.put(line.decode().strip())
        await queue.put("eof")

    _background.add(asyncio.ensure_future(pump()))  # a reference, or the task may be collected
    return queue


async def registered(url: str, recipient: str) -> ClientConnection:
    """A client registered as ``recipient``, proven by a probe to itself (probes are skipped when counting)."""
    return await open_registered(url, recipient, seconds=TIMEOUT, attempt_seconds=2.0, **CONNECT_OPTIONS)


async def run_receivers(spec: dict[str, Any], queue: asyncio.Queue[str]) -> None:
    urls, first, count, run = spec["urls"], spec["first"], spec["count"], spec["run"]
    ids = [f"bench-{run}-{first + i}" for i in range(count)]
    sockets = await asyncio.gather(*(registered(urls[i % len(urls)], ids[i]) for i in range(count)))
    seen: set[tuple[int, int]] = set()
    latencies: list[float] = []
    stats = {"delivered": 0, "duplicated": 0, "misrouted": 0, "closed": 0, "first_ns": 0, "last_ns": 0}
    done = asyncio.Event()
    expected = [None]

    async def receive(index: int, ws: ClientConnection) -> None:
        own = first + index
        try:
            async for text in ws:
                now = time.monotonic_ns()
                if is_probe(text):
                    continue
                sender, seq, target, sent_ns = (int(part) for part in text.split(":"))
                if target != own:
                    stats["misrouted"] += 1
                    continue
                key = (sender, seq)
                if key in seen:
                    stats["duplicated"] += 1
                    continue
                seen.add(key)
                stats["delivered"] += 1
                stats["first_ns"] = stats["first_ns"] or now
                stats["last_ns"] = now
                latencies.append((now - sent_ns) / 1e6)
                if expected[0] is not None and stats["delivered"] >= expected[0]:
                    done.set()
        except ConnectionClosed:
            stats["closed"] += 1

    emit("ready", count=len(sockets))
    tasks = [asyncio.ensure_future(receive(i, ws)) for i, ws in enumerate(sockets)]
    command = await queue.get()  # "drain <expected> <seconds>"
    _, want, seconds = command.split()
    expected[0] = int(want)
    if stats["delivered"] >= expected[0]:
        done.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), float(seconds))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    emit("result", latencies_ms=latencies, **stats)


async def run_senders(spec: dict[str, Any], queue: asyncio.Queue[str]) -> None:
    urls, count, receivers, run = spec["urls"], spec["count"], spec["receivers"], spec["run"]
    rate, seconds, limit, base = spec["rate"], spec["seconds"], spec["limit"], spec["first"]
    sockets = []
    for i in range(count):
        # A generous close_timeout: a sender the server slowed down (it stops reading a sender that outruns it)
        # closes only once the server has read every frame it sent; websockets' default (10 s) would abort
        # the connection and throw its unread frames away, a loss of the client's making.
        sockets.append(
            await open_client(
                urls[i % len(urls)], seconds=TIMEOUT, ping_interval=None, max_queue=None, close_timeout=120
            )
        )
    emit("ready", count=len(sockets))
    await queue.get()  # "go"
    per_sender_limit = limit // count
    per_sender_rate = rate / count if rate else 0.0
    sent = [0] * count
    errors = [0]
    start = time.monotonic()

    async def send(index: int, ws: ClientConnection) -> None:
        sender = base + index
        deadline = start + seconds
        n = 0
        try:
            while n < per_sender_limit:
                now = time.monotonic()
                if now >= deadline:
                    break
                if per_sender_rate:
                    due = min(per_sender_limit, int((now - start) * per_sender_rate) + 1)
                    if n >= due:
                        await asyncio.sleep((due / per_sender_rate) - (now - start))
                        continue
                else:
                    due = min(per_sender_limit, n + 50)
                while n < due:
                    # Target receivers round-robin over senders and sequence numbers.
                    target = (n * 7919 + sender) % receivers
                    await ws.send(frame(f"bench-{run}-{target}", f"{sender}:{n}:{target}:{time.monotonic_ns()}"))
                    n += 1
                if not per_sender_rate:
                    await asyncio.sleep(0)
        except ConnectionClosed:
            errors[0] += 1
        sent[index] = n

    await asyncio.gather(*(send(i, ws) for i, ws in enumerate(sockets)))
    elapsed = time.monotonic() - start
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    emit("result", sent=sent, first_sender=base, seconds=elapsed, start_ns=int(start * 1e9), errors=errors[0])


async def run_idle(spec: dict[str, Any], queue: asyncio.Queue[str]) -> None:
    urls, first, count, run, concurrency = spec["urls"], spec["first"], spec["count"], spec["run"], spec["concurrency"]
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def one(i: int) -> ClientConnection | None:
        async with gate:
            try:
                return await registered(urls[i % len(urls)], f"bench-{run}-idle-{first + i}")
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                return None

    emit("ready", count=count)
    await queue.get()  # "go"
    start = time.monotonic()
    opened = await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.monotonic() - start
    sockets = [ws for ws in opened if ws is not None]
    emit("registered", registered=len(sockets), seconds=elapsed, failures=failures[:10], failed=len(failures))
    await queue.get()  # "close"
    codes: dict[str, int] = {}
    for ws in sockets:  # closed by the server while idle (1011 would be a crash)
        if ws.close_code is not None:
            codes[str(ws.close_code)] = codes.get(str(ws.close_code), 0) + 1
    start = time.monotonic()
    results = await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    emit(
        "result",
        closed_by_server=codes,
        close_errors=len(errors),
        close_error_samples=errors[:10],
        close_seconds=time.monotonic() - start,
    )


async def main(spec: dict[str, Any]) -> None:
    queue = await commands()
    role = {"receivers": run_receivers, "senders": run_senders, "idle": run_idle}[spec["role"]]
    await role(spec, queue)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    raise_fd_limit()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(main(json.loads(sys.argv[1])))
