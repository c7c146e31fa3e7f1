"""The graceful drain on SIGTERM: every WebSocket closed with 4012, spread over the drain, nothing lost.

Real processes through every launch line: ``bin/daphne`` processes on one
Redis, supervisord's fcgi-program (two processes on one socket) behind nginx,
and the systemd unit under systemd-socket-activate. The clients are v2
clients as the protocol asks (:mod:`harness.clients`): after a ``4012`` they
reconnect after a short random delay and resume with ``since``. What a
sender sends is numbered, so that each client's notifications can be checked
against it: every one exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from harness.clients import (
    Closed,
    Event,
    Notified,
    Registered,
    ResumingClient,
    open_client,
    receive_json,
    register_v2,
    send_v2,
)
from harness.servers import Daphne, eventually, free_port, wait_until
from notifications.models import Connection, Registration, ServerProcess
from tests.deploy_servers import (
    TEST_SECRET_KEY,
    Deployment,
    SocketActivated,
    put_env_values,
    render_deploy,
    set_env_values,
    start_deployment,
    start_systemd_service,
)
from tests.test_resume import exactly_once_in_order, story, tracebacks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("async_db")]

DRAIN = 2.0  # NOTIFY_DRAIN_SECONDS of every test here
# After the last close: the clients' close replies, the consumers leaving, the registry's rows, the exit.
EXIT_SLACK = 3.0
ARRIVAL = 10.0  # seconds a notification or a connection may take
CATCH_UP = 20.0  # seconds the clients may take to have everything after the drain
SEND_EVERY = 0.01  # seconds between two notifications of the steady stream
WINDOW = 0.3  # no more than half of the closes (or reconnections) may fall within any window this long
GRACE = 3.0  # notifications.drain.GRACE_SECONDS: how long the drain waits for its closes to end
STOP_TIMEOUT = 30.0  # stopwaitsecs (supervisord) and TimeoutStopSec (systemd) of deploy/


def drain_env(redis_url: str, redis_prefix: str) -> dict[str, str | None]:
    return {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix, "NOTIFY_DRAIN_SECONDS": str(DRAIN)}


def most_within(times: Sequence[float], window: float = WINDOW) -> int:
    """The largest number of ``times`` that fall within one interval ``window`` seconds long."""
    ordered = sorted(times)
    return max((sum(1 for t in ordered[i:] if t - start <= window) for i, start in enumerate(ordered)), default=0)


def spread_problems(times: Sequence[float], *, since: float, what: str) -> list[str]:
    """What breaks "spread evenly over the drain" for ``times`` (seconds, monotonic) after ``since``.

    The drain closes n sockets at 0, D/n, ..., (n-1)·D/n: the first and the
    last lie (n-1)/n·D apart; allow 60 % of that, and no more than half of
    them (at least 2) within any :data:`WINDOW`. All of it within the drain
    and one more second.
    """
    n = len(times)
    if n < 2:
        return [f"{what}: only {n}"]
    problems = []
    span, expected = max(times) - min(times), (n - 1) / n * DRAIN
    if span < 0.6 * expected:
        problems.append(
            f"{what}: the first and the last {span:.2f} s apart; the drain spreads them over {expected:.2f}"
        )
    crowded = most_within(times)
    if crowded > max(2, n // 2):
        problems.append(f"{what}: {crowded} of {n} within {WINDOW} s")
    if max(times) - since > DRAIN + 1.0:
        problems.append(f"{what}: the last {max(times) - since:.2f} s after the signal, the drain is {DRAIN} s")
    if min(times) < since:
        problems.append(f"{what}: one before the signal")
    return problems


def offsets(times: Sequence[float], since: float) -> list[str]:
    return [f"{t - since:.2f}" for t in sorted(times)]


@sync_to_async
def registry_rows(pid: int) -> tuple[int, int]:
    """The registry's rows of the process ``pid``: its process row(s) and its connection rows."""
    return ServerProcess.objects.filter(pid=pid).count(), Connection.objects.filter(process__pid=pid).count()


@sync_to_async
def process_of(recipient: str) -> int | None:
    """The pid of the process whose connection holds a registration of ``recipient`` (the first found)."""
    row = Registration.objects.filter(recipient=recipient).select_related("connection__process").first()
    return row.connection.process.pid if row else None


@sync_to_async
def registered_on(pid: int) -> set[str]:
    """The ids registered on the process ``pid``'s connections."""
    return set(Registration.objects.filter(connection__process__pid=pid).values_list("recipient", flat=True))


@dataclass
class Watched:
    """A v2 connection registered as one id, read until it closes: when, and with which code."""

    recipient: str
    ws: ClientConnection
    closed_at: float | None = None
    code: int | None = None  # the server's close code; None without a close frame

    async def watch(self) -> None:
        try:
            async for _ in self.ws:
                pass
        except ConnectionClosed:
            pass
        self.closed_at = time.monotonic()
        received = self.ws.protocol.close_rcvd
        self.code = received.code if received is not None else None


async def watched(url: str, recipient: str) -> tuple[Watched, asyncio.Task[None]]:
    ws = await open_client(url, seconds=ARRIVAL)
    reply = await register_v2(ws, recipient, seconds=ARRIVAL)
    assert reply["recovered"] is None, reply
    client = Watched(recipient, ws)
    return client, asyncio.create_task(client.watch())


def exit_time(process: subprocess.Popen[Any], timeout: float) -> float:
    """Wait (in a thread) for ``process`` to exit; the monotonic time it was seen to."""
    process.wait(timeout)
    return time.monotonic()


def drain_log_problems(log: str, count: int) -> list[str]:
    """What the drain's two log lines should say of ``count`` WebSockets over :data:`DRAIN` seconds, if they do not."""
    begun = f"Draining: closing {count} WebSockets with 4012 over {DRAIN:.1f} s, then exiting"
    ended = f"Drained: {count} WebSockets closed in "
    return [f"the log has no {line!r}" for line in (begun, ended) if line not in log]


# 1. bin/daphne: SIGTERM drains.

CLIENTS = 20


async def test_sigterm_closes_every_websocket_with_4012_spread_over_the_drain_and_exits_cleanly(
    daphne_factory: Callable[..., Daphne], redis_url: str, redis_prefix: str
) -> None:
    env = drain_env(redis_url, redis_prefix)
    a, b = daphne_factory(env), daphne_factory(env)
    run = uuid.uuid4().hex[:6]
    on_a = [await watched(a.url, f"drain-{run}-{n}") for n in range(CLIENTS)]
    on_b = [await watched(b.url, f"drain-{run}-b{n}") for n in range(2)]  # the other process: untouched
    clients = [client for client, _ in on_a]
    pid = a.process.pid

    async def all_rows_written() -> bool:
        return await registry_rows(pid) == (1, CLIENTS) and len(await registered_on(pid)) == CLIENTS

    await eventually(all_rows_written, seconds=ARRIVAL)

    signalled = time.monotonic()
    a.process.send_signal(signal.SIGTERM)
    exited = asyncio.create_task(asyncio.to_thread(exit_time, a.process, DRAIN + EXIT_SLACK + 10))
    watchers = asyncio.gather(*(task for _, task in on_a))
    # Step 1 of the drain comes before the first close: once a client saw one, A accepts no connection.
    await asyncio.wait_for(
        asyncio.wait([task for _, task in on_a], return_when=asyncio.FIRST_COMPLETED), DRAIN + EXIT_SLACK
    )
    refused: BaseException | None = None
    try:
        ws = await open_client(a.url, seconds=2)
        await ws.close()
    except OSError as exc:
        refused = exc
    assert isinstance(refused, ConnectionRefusedError), f"a new connection to the draining process: {refused!r}"
    await asyncio.wait_for(watchers, DRAIN + EXIT_SLACK)
    exited_at = await exited
    log = a.log()

    codes = Counter(client.code for client in clients)
    assert codes == {4012: CLIENTS}, f"close codes {dict(codes)} (None: no close frame, as daphne alone does)"
    closed = [client.closed_at for client in clients if client.closed_at is not None]
    print(f"\nclosed at {offsets(closed, signalled)} s after SIGTERM; exited after {exited_at - signalled:.2f} s")
    problems = spread_problems(closed, since=signalled, what="closes")
    assert not problems, f"{problems}; closed at {offsets(closed, signalled)} s after SIGTERM"
    assert a.process.returncode == 0, log[-3000:]
    assert exited_at - signalled <= DRAIN + EXIT_SLACK, f"exited {exited_at - signalled:.2f} s after SIGTERM"
    assert not drain_log_problems(log, CLIENTS), (drain_log_problems(log, CLIENTS), log[-3000:])
    assert not tracebacks(log), tracebacks(log)
    assert await registry_rows(pid) == (0, 0)
    assert not await registered_on(pid)

    # B's clients noticed nothing, and still receive.
    sender = await open_client(b.url)
    for client, task in on_b:
        assert not task.done(), f"{client.recipient} on B was closed with {client.code}"
        task.cancel()
        await send_v2(sender, client.recipient, "after A left")
        frame = await receive_json(client.ws, ARRIVAL)
        assert (frame["type"], frame["message"]) == ("message", "after A left"), frame
        await client.ws.close()
    await sender.close()
    assert not tracebacks(b), tracebacks(b)


def keep_alive_get(port: int, path: str) -> tuple[socket.socket, str]:
    """A page over HTTP/1.1 on a connection of its own, left open (keep-alive); the socket and the status line."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=ARRIVAL)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    sock.setblocking(False)
    return sock, lines[0]


async def test_a_websocket_opened_during_the_grace_wait_is_closed_with_4012_too(
    daphne_factory: Callable[..., Daphne],
) -> None:
    server = daphne_factory({"NOTIFY_DRAIN_SECONDS": str(DRAIN)})
    # A client slow to answer its close frame keeps the drain in its grace wait (autobahn gives it up to 1 s).
    slow, slow_watch = await watched(server.url, f"slow-{uuid.uuid4().hex[:6]}")
    # A browser's keep-alive connection, accepted before the drain: its next request may be a WebSocket handshake.
    sock, status = await asyncio.to_thread(keep_alive_get, server.port, "/example/")
    assert status == "HTTP/1.1 200 OK", status
    slow.ws.transport.pause_reading()
    # autobahn's 1 s for a close reply goes through txaio's batched timer, which rounds the deadline down
    # to a whole second of the clock: it ends 0 to 1 s after the close frame. Signalled early in a second,
    # the slow client holds the drain for most of a second, far longer than the late handshake takes.
    await wait_until(lambda: time.time() % 1 < 0.3, seconds=2, interval=0.01)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    # The spread of one socket and the sweep after it are done once the drain said how many it closes.
    await wait_until(lambda: "Draining: closing 1 WebSockets" in server.log(), seconds=ARRIVAL)
    late_ws = await open_client(server.url, sock=sock, seconds=ARRIVAL)
    opened = time.monotonic()
    late = Watched("late", late_ws)
    slow.ws.transport.resume_reading()
    await asyncio.wait_for(asyncio.gather(slow_watch, late.watch()), GRACE + EXIT_SLACK)
    exited_at = await asyncio.to_thread(exit_time, server.process, ARRIVAL)
    assert slow.code == 4012, slow.code
    assert late.closed_at is not None
    print(
        f"\nthe late WebSocket opened {opened - signalled:.2f} s after SIGTERM, closed {late.closed_at - opened:.2f} s "
        f"later with {late.code}; the process exited {exited_at - signalled:.2f} s after SIGTERM"
    )
    assert late.code == 4012, (
        f"the late WebSocket closed {late.closed_at - opened:.2f} s after it opened with {late.code}"
    )
    assert late.closed_at - opened < 1.0, f"closed {late.closed_at - opened:.2f} s after it opened"
    assert not tracebacks(server), tracebacks(server)


# 2. Nothing lost, nothing twice: the clients of a draining process resume on another one.


class TimedEvents(list[Event]):
    """A :class:`ResumingClient`'s events, each with the monotonic time it happened (was appended)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, event: Event) -> None:
        self.times.append(time.monotonic())
        super().append(event)


class TimedClient(ResumingClient):
    """A :class:`ResumingClient` that knows when each of its events happened."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timed = TimedEvents()
        self.events = self.timed

    def at(self, wanted: Callable[[Event], bool]) -> list[float]:
        """The times of the events ``wanted`` chooses."""
        return [t for event, t in zip(self.timed, self.timed.times, strict=True) if wanted(event)]

    def server_closes(self) -> list[Closed]:
        """The closes the client did not make itself (its :meth:`stop` at the end is one)."""
        return [c for c in self.closes() if not c.by_client]


async def started(client: ResumingClient) -> ResumingClient:
    client.start()
    await asyncio.wait_for(client.registered.wait(), ARRIVAL)
    return client


@dataclass
class Stream:
    """A sender of numbered notifications to several ids in turn over one v2 connection, steadily."""

    ws: ClientConnection
    recipients: Sequence[str]
    every: float = SEND_EVERY
    sent: dict[str, list[str]] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)  # when each was sent
    outcomes: Counter[str] = field(default_factory=Counter)
    replies: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            recipient = self.recipients[n % len(self.recipients)]
            text = f"{recipient} #{n}"
            await self.ws.send(json.dumps({"recipient_uuid": recipient, "message": text, "v": 2}))
            self.sent.setdefault(recipient, []).append(text)
            self.times.append(time.monotonic())
            n += 1
            await asyncio.sleep(self.every)  # pacing the stream

    async def read_replies(self) -> None:
        while True:
            reply = await receive_json(self.ws, 60)
            self.outcomes[str(reply.get("outcome"))] += 1
            self.replies += 1

    @property
    def total(self) -> int:
        return len(self.times)

    def between(self, start: float, end: float) -> int:
        return sum(1 for t in self.times if start <= t < end)


@dataclass
class Streaming:
    """A :class:`Stream` running, with its reply reader; :meth:`finish` stops it once every reply came."""

    stream: Stream
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self.stream.run(self.stop)),
            asyncio.create_task(self.stream.read_replies()),
        ]

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.tasks[0], ARRIVAL)
        await wait_until(lambda: self.stream.replies == self.stream.total, seconds=ARRIVAL)

    async def close(self) -> None:
        self.stop.set()
        for task in self.tasks:
            task.cancel()
        await self.stream.ws.close()


def everything_arrived(clients: Sequence[ResumingClient], stream: Stream) -> Callable[[], bool]:
    return lambda: all(len(c.texts(r)) >= len(stream.sent.get(r, [])) for c in clients for r in c.recipients)


def once_in_order_problems(clients: Sequence[ResumingClient], stream: Stream) -> list[str]:
    """Every notification sent to each client's ids exactly once and in order; every resume recovered."""
    failures: list[str] = []
    for client in clients:
        failures += client.problems
        for recipient in client.recipients:
            wrong = exactly_once_in_order(client.texts(recipient), stream.sent.get(recipient, []))
            if wrong:
                failures.append(f"{recipient}: {wrong}; what it saw: {story(client, recipient)[-12:]}")
            failures += [
                f"{recipient}: resumed from {r.since!r} on connection {r.connection}: recovered={r.recovered}"
                for r in client.resumes(recipient)
                if r.recovered is not True
            ]
    return failures


RESUMING = 10


async def test_a_steady_stream_reaches_every_client_exactly_once_in_order_across_a_drain(
    daphne_factory: Callable[..., Daphne], redis_url: str, redis_prefix: str
) -> None:
    env = {**drain_env(redis_url, redis_prefix), "NOTIFY_HISTORY_SIZE": "1000"}
    a, b = daphne_factory(env), daphne_factory(env)
    run = uuid.uuid4().hex[:6]
    ids = [f"steady-{run}-{n}" for n in range(RESUMING)]
    # A first: every client starts on A; once A stops listening, a reconnect lands on B.
    clients = [TimedClient([a.url, b.url], [recipient], delay=(0.0, 0.2)) for recipient in ids]
    for client in clients:
        await started(client)
    assert sum(c.failed_connects for c in clients) == 0, "a client did not start on A"
    streaming = Streaming(Stream(await open_client(b.url), ids))  # B stays up: every notification is handed over
    streaming.start()
    stream = streaming.stream
    pid = a.process.pid
    try:
        # Before: each client has received some, so that it resumes with a since.
        await wait_until(lambda: all(len(c.texts(r)) >= 3 for c in clients for r in c.recipients), seconds=ARRIVAL)
        signalled = time.monotonic()
        a.process.send_signal(signal.SIGTERM)
        exited_at = await asyncio.to_thread(exit_time, a.process, DRAIN + EXIT_SLACK + 10)
        # After: as many again as went out during the drain, then the stream ends.
        during = stream.between(signalled, exited_at)
        await wait_until(lambda: stream.between(exited_at, time.monotonic()) >= max(during, 50), seconds=ARRIVAL)
        await streaming.finish()
        with contextlib.suppress(TimeoutError):  # what arrived is checked below, with the details
            await wait_until(everything_arrived(clients, stream), seconds=CATCH_UP)
    finally:
        await streaming.close()
        for client in clients:
            await client.stop()
    before, after = stream.between(0, signalled), stream.between(exited_at, time.monotonic())
    print(
        f"\n{stream.total} sent ({before} before SIGTERM, {during} during the drain, {after} after), "
        f"outcomes {dict(stream.outcomes)}; A exited {exited_at - signalled:.2f} s after SIGTERM"
    )
    assert a.process.returncode == 0, a.log()[-3000:]
    assert exited_at - signalled <= DRAIN + EXIT_SLACK, f"A exited {exited_at - signalled:.2f} s after SIGTERM"
    assert before > 0 and during > 0 and after > 0, (before, during, after)
    assert stream.outcomes.keys() <= {"live", "pending"}, stream.outcomes
    failures = once_in_order_problems(clients, stream)
    assert not failures, "\n".join(failures[:30])
    for client in clients:
        closes = [(c.connection, c.code) for c in client.server_closes()]
        assert closes == [(1, 4012)], f"{client.recipients}: closes {closes}"
        resumes = [(r.connection, r.recovered) for r in client.resumes()]
        assert resumes == [(2, True)], f"{client.recipients}: resumes {resumes}"
    # A kept serving its clients while it drained: the later ones received on A after the signal.
    served = [
        c for c in clients if any(t > signalled for t in c.at(lambda e: isinstance(e, Notified) and e.connection == 1))
    ]
    assert len(served) >= RESUMING // 2, f"only {len(served)} clients received on A while it drained"
    reconnected = [t for c in clients for t in c.at(lambda e: isinstance(e, Registered) and e.connection == 2)]
    print(f"registered again on B at {offsets(reconnected, signalled)} s after SIGTERM")
    problems = spread_problems(reconnected, since=signalled, what="reconnections")
    assert not problems, f"{problems}; at {offsets(reconnected, signalled)} s after SIGTERM"
    assert await registry_rows(pid) == (0, 0)
    assert not tracebacks(a, b), tracebacks(a, b)[:10]


# 3. The deploy files: supervisord's restart of one process behind nginx, and the systemd unit.


def deployment_settings(database_url: str, redis_url: str, redis_prefix: str) -> dict[str, str]:
    return {
        "DJANGO_SECRET_KEY": TEST_SECRET_KEY,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": redis_prefix,
    }


DRAIN_SETTING = {"NOTIFY_DRAIN_SECONDS": str(DRAIN)}  # the template leaves it at its default (5 s)


def render_with_settings(workdir: Path, settings: dict[str, str]) -> dict[str, str]:
    """Render deploy/ into ``workdir``; its environment file with ``settings`` and the drain's. The variables."""
    values = render_deploy(workdir, port=free_port(), listen_port=free_port())
    env_file = Path(values["ENV_FILE"])
    env_file.parent.mkdir()
    template = (workdir / "deploy" / "notify.env").read_text()
    env_file.write_text(put_env_values(set_env_values(template, settings), DRAIN_SETTING))
    Path(values["STATIC_ROOT"]).mkdir()  # collectstatic's (whitenoise warns while it is missing)
    return values


@pytest.fixture
def deployments() -> Iterator[list[Deployment]]:
    started: list[Deployment] = []
    yield started
    for deployment in started:
        deployment.stop()


@pytest.fixture
def systemd_services() -> Iterator[list[SocketActivated]]:
    started: list[SocketActivated] = []
    yield started
    for service in started:
        service.stop()


def is_alive(pid: int) -> bool:
    """Whether the process ``pid`` (not our child: supervisord's) still runs; a zombie does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def running(deployment: Deployment, *, gone: int | None = None) -> dict[str, int]:
    """Wait until supervisord runs its two daphne processes (none of them ``gone``); their pids by name."""

    async def ready() -> bool:
        pids = await asyncio.to_thread(deployment.supervisor.running_pids)
        return len(pids) == 2 and gone not in pids.values()

    try:
        await eventually(ready, seconds=30, interval=0.2)
    except TimeoutError:
        raise AssertionError(f"not running: {deployment.supervisor.processes()}\n{deployment.server_logs()}") from None
    return await asyncio.to_thread(deployment.supervisor.running_pids)


async def located(recipient: str) -> int:
    """The pid of the process that holds ``recipient``'s registration, once the registry shows it."""
    found: list[int] = []

    async def shown() -> bool:
        pid = await process_of(recipient)
        found[:] = [pid] if pid is not None else []
        return bool(found)

    await eventually(shown, seconds=ARRIVAL)
    return found[0]


def supervisorctl(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's ``supervisorctl`` on the deployment's supervisord."""
    program = Path(sys.executable).parent / "supervisorctl"
    conf = deployment.workdir / "supervisord.conf"
    return subprocess.run([str(program), "-c", str(conf), *args], capture_output=True, text=True, timeout=90)


async def test_supervisorctl_restart_of_one_process_drains_its_clients_to_the_other_through_nginx_losing_nothing(
    tmp_path: Path,
    nginx_binary: str,
    deployments: list[Deployment],
    database_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    settings = deployment_settings(database_url, redis_url, redis_prefix)
    deployment = start_deployment(tmp_path, settings=settings, nginx_binary=nginx_binary, extra_settings=DRAIN_SETTING)
    deployments.append(deployment)
    pids = await running(deployment)
    nginx = deployment.nginx
    assert nginx is not None
    run = uuid.uuid4().hex[:6]

    # The sender registers an id of its own, so that the registry says which process it is on: the other restarts.
    sender = await open_client(nginx.url)
    await register_v2(sender, f"sender-{run}")
    kept_pid = await located(f"sender-{run}")
    [(victim_name, victim_pid)] = [(name, pid) for name, pid in pids.items() if pid != kept_pid]

    # Clients through nginx, in small bursts, until each process holds several.
    clients: list[TimedClient] = []
    on: dict[int, list[TimedClient]] = {victim_pid: [], kept_pid: []}
    while len(on[victim_pid]) < 6 or len(on[kept_pid]) < 2:
        assert len(clients) < 40, f"40 clients through nginx: {len(on[victim_pid])} on one, {len(on[kept_pid])}"
        burst = [TimedClient([nginx.url], [f"field-{run}-{len(clients) + n}"], delay=(0.0, 0.2)) for n in range(4)]
        await asyncio.gather(*(started(client) for client in burst))
        for client in burst:
            on[await located(client.recipients[0])].append(client)
        clients += burst
    victims, survivors = on[victim_pid], on[kept_pid]

    streaming = Streaming(Stream(sender, [r for c in clients for r in c.recipients]))
    streaming.start()
    stream = streaming.stream
    try:
        await wait_until(lambda: all(len(c.texts(r)) >= 3 for c in clients for r in c.recipients), seconds=ARRIVAL)
        signalled = time.monotonic()
        restart = asyncio.create_task(asyncio.to_thread(supervisorctl, deployment, "restart", f"notify:{victim_name}"))
        await wait_until(lambda: not is_alive(victim_pid), seconds=STOP_TIMEOUT)
        gone_at = time.monotonic()
        restarted = await restart
        new_pids = await running(deployment, gone=victim_pid)
        marker = stream.total
        await wait_until(lambda: stream.total >= marker + 50, seconds=ARRIVAL)  # after: the stream goes on
        await streaming.finish()
        with contextlib.suppress(TimeoutError):  # what arrived is checked below, with the details
            await wait_until(everything_arrived(clients, stream), seconds=CATCH_UP)
    finally:
        await streaming.close()
        for client in clients:
            await client.stop()
    logs = deployment.server_logs()
    victim_log = logs[f"server-{victim_name.rpartition('_')[2]}.log"]
    supervisord_log = deployment.supervisor.log.read_text(errors="replace")
    print(
        f"\n{len(victims)} clients on the restarted process, {len(survivors)} on the other; {stream.total} sent, "
        f"outcomes {dict(stream.outcomes)}; the process gone {gone_at - signalled:.2f} s after the restart began"
    )

    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert f"notify:{victim_name}: stopped" in restarted.stdout, restarted.stdout
    assert f"notify:{victim_name}: started" in restarted.stdout, restarted.stdout
    assert gone_at - signalled <= DRAIN + EXIT_SLACK, f"gone {gone_at - signalled:.2f} s after the restart began"
    assert f"stopped: {victim_name} (exit status 0)" in supervisord_log, supervisord_log[-3000:]
    assert "SIGKILL" not in supervisord_log, supervisord_log[-3000:]
    assert new_pids[victim_name] != victim_pid and kept_pid in new_pids.values(), (pids, new_pids)
    assert stream.outcomes.keys() <= {"live", "pending"}, stream.outcomes
    failures = once_in_order_problems(clients, stream)
    assert not failures, "\n".join(failures[:30])
    for client in victims:
        closes = [(c.connection, c.code) for c in client.server_closes()]
        assert closes == [(1, 4012)], f"{client.recipients} on the restarted process: closes {closes}"
        assert [(r.connection, r.recovered) for r in client.resumes()] == [(2, True)], client.resumes()
    for client in survivors:
        assert not client.server_closes() and client.connections == 1, f"{client.recipients}: {client.closes()}"
    closed = [t for c in victims for t in c.at(lambda e: isinstance(e, Closed) and not e.by_client)]
    reconnected = [t for c in victims for t in c.at(lambda e: isinstance(e, Registered) and e.connection == 2)]
    print(f"closed at {offsets(closed, signalled)}, registered again at {offsets(reconnected, signalled)} s")
    problems = spread_problems(closed, since=signalled, what="closes")
    problems += spread_problems(reconnected, since=signalled, what="reconnections")
    assert not problems, f"{problems}; closed at {offsets(closed, signalled)}, registered again at " + str(
        offsets(reconnected, signalled)
    )
    wrong = drain_log_problems(victim_log, len(victims))
    assert not wrong, (wrong, victim_log[-3000:])
    assert await registry_rows(victim_pid) == (0, 0)
    for name, log in logs.items():
        assert not tracebacks(log), (name, tracebacks(log))


async def test_the_systemd_unit_drains_its_websockets_with_4012_on_sigterm(
    tmp_path: Path,
    systemd_services: list[SocketActivated],
    socket_activate: str,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    values = render_with_settings(tmp_path, deployment_settings(database_url, redis_url, redis_prefix))
    service = start_systemd_service(socket_activate, tmp_path, values)
    systemd_services.append(service)
    await wait_until(lambda: f"Listening on 127.0.0.1:{values['PORT']} " in service.log.read_text(), seconds=ARRIVAL)
    run = uuid.uuid4().hex[:6]
    count = 8
    try:
        on_unit = [await watched(service.url, f"unit-{run}-{n}") for n in range(count)]
    except Exception as exc:  # a service that fails to start: show its log
        raise AssertionError(f"{exc!r}\n{service.log.read_text(errors='replace')}") from exc
    pid = service.process.pid

    async def all_rows_written() -> bool:
        return await registry_rows(pid) == (1, count)

    await eventually(all_rows_written, seconds=ARRIVAL)

    def stop() -> tuple[int, float]:
        status = service.stop()  # SIGTERM to the unit's processes, as systemctl stop does
        return status, time.monotonic()

    signalled = time.monotonic()
    stopping = asyncio.create_task(asyncio.to_thread(stop))
    await asyncio.wait_for(asyncio.gather(*(task for _, task in on_unit)), DRAIN + EXIT_SLACK)
    status, exited_at = await stopping
    log = service.log.read_text(errors="replace")
    clients = [client for client, _ in on_unit]
    codes = Counter(client.code for client in clients)
    assert codes == {4012: count}, f"close codes {dict(codes)}\n{log[-3000:]}"
    closed = [client.closed_at for client in clients if client.closed_at is not None]
    print(f"\nclosed at {offsets(closed, signalled)} s after SIGTERM; exited after {exited_at - signalled:.2f} s")
    problems = spread_problems(closed, since=signalled, what="closes")
    assert not problems, f"{problems}; closed at {offsets(closed, signalled)} s after SIGTERM"
    assert status == 0, log[-3000:]
    assert exited_at - signalled <= DRAIN + EXIT_SLACK, f"exited {exited_at - signalled:.2f} s after SIGTERM"
    assert not drain_log_problems(log, count), (drain_log_problems(log, count), log[-3000:])
    assert not tracebacks(log), tracebacks(log)
    assert await registry_rows(pid) == (0, 0)
