"""An attacker's test file: each attack fails closed, leaves no traceback, and does not disturb a neighbour.

Real daphne processes (``daphne_factory``), and the real nginx of the
project's deploy config (deploy/nginx/notify.conf) where a test says so.

*Fails closed* means: the attacker gets nothing it should not (no
registration, no notification, no relay, no way round a limit), and what it
does get is the behaviour docs/PROTOCOL.md documents (a close code, a
``refused`` reply, a 403). Every test also checks that the daphne log holds
no traceback, and runs a :class:`Neighbour`: a client of another address,
registered on another id, that is sent a probe every 50 ms for the length of
the attack; every probe must arrive, each within a second. Its latencies are
printed (``pytest -s``).

The attackers connect from 127.0.0.1 (or 127.0.0.3 behind nginx), the
neighbour from 127.0.0.2: per-address limits are the attacker's alone, as
they would be for two clients on the Internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils.crypto import salted_hmac
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State
from websockets.typing import Origin

from harness.clients import (
    TIMEOUT,
    assert_receives_nothing,
    close_code,
    frame,
    open_client,
    receive_json,
    register_v2,
    send_v2,
)
from harness.servers import Daphne, Nginx, eventually, run_python
from notifications.limits import CLOSE_LIMIT
from notifications.models import Connection
from notifications.protocol import GREETING
from notifications.tokens import registration_token

NEIGHBOUR_ADDRESS = "127.0.0.2"
NEIGHBOUR_ID = "neighbour"
PROBE_INTERVAL = 0.05  # seconds between probes
PROBE_DEADLINE = 1.0  # every probe must arrive within this
BEHIND_NGINX_ADDRESS = "127.0.0.3"  # the attacker's real address behind nginx (nginx reaches daphne from 127.0.0.1)
MAX_FRAME = 1024 * 1024  # daphne's (autobahn's) default message and frame size limit; bin/daphne keeps it
# An oversized message ends the connection without a close frame (autobahn's failByDrop): clients see 1006.
DROPPED = 1006
API_KEY = "Zt3vQ9-pLk2mW8xR4nB7cY1sD6fH0gJ5aE"
OTHER_SECRET = "another-deployments-secret-key-" + "z" * 40


class Neighbour:
    """A client of another address that keeps receiving probes, on a thread and event loop of its own.

    Its own loop keeps the attacker's work in the test process from delaying
    it: what it measures is the server's service to it. A receiving
    connection registers ``NEIGHBOUR_ID`` (protocol v2, so that it is answered
    even where sending needs a key), a second connection sends it a probe
    every 50 ms, and each probe must arrive within a second. As an async
    context manager: the probing starts before the block (one probe has
    arrived) and goes on until two more have arrived after it.
    """

    def __init__(self, url: str, *, token: str | None = None, prober_headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.token = token
        self.prober_headers = prober_headers or {}
        self.latencies: list[float] = []  # seconds from each probe's sending to its arrival
        self.failure: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neighbour", daemon=True)

    def probes(self) -> int:
        with self._lock:
            return len(self.latencies)

    async def __aenter__(self) -> Neighbour:
        self._thread.start()
        await self._until(lambda: self.probes() >= 1, "its first probe")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                during = self.probes()
                await self._until(lambda: self.probes() >= during + 2, "two probes after the attack")
        finally:
            self._stop.set()
            await asyncio.to_thread(self._thread.join, TIMEOUT)
        if exc_type is not None:
            return  # the test's own failure says more
        assert self.failure is None, f"the neighbour was disturbed: {self.failure}"
        assert not self._thread.is_alive(), "the neighbour did not stop"
        worst = max(self.latencies)
        print(
            f"\nneighbour: {len(self.latencies)} probes, every one arrived; latency median "
            f"{statistics.median(self.latencies) * 1000:.1f} ms, max {worst * 1000:.1f} ms"
        )
        assert worst < PROBE_DEADLINE

    async def _until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait for the neighbour's thread to reach ``condition``; fail at once if it failed."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while not condition():  # noqa: ASYNC110 (the event is on another thread: nothing to await)
                    if self.failure is not None or not self._thread.is_alive():
                        break
                    await asyncio.sleep(PROBE_INTERVAL)
        except TimeoutError:
            raise AssertionError(f"the neighbour did not get {what} within {TIMEOUT} s") from None
        if self.failure is not None:
            raise AssertionError(f"the neighbour was disturbed: {self.failure}")

    def _run(self) -> None:
        try:
            asyncio.run(self._probe())
        except BaseException as exc:  # anything: reported by the test's thread
            self.failure = self.failure or f"{type(exc).__name__}: {exc}"

    async def _probe(self) -> None:
        local = (NEIGHBOUR_ADDRESS, 0)
        receiver = await open_client(self.url, local_addr=local)
        prober = await open_client(self.url, additional_headers=self.prober_headers, local_addr=local)
        try:
            await register_v2(receiver, NEIGHBOUR_ID, token=self.token)
            n = 0
            while not self._stop.is_set():
                text = f"probe {n}"
                started = time.monotonic()
                await prober.send(frame(NEIGHBOUR_ID, text))
                try:
                    got = await receive_json(receiver, PROBE_DEADLINE)
                except TimeoutError:
                    self.failure = f"{text} did not arrive within {PROBE_DEADLINE} s"
                    return
                if (got.get("type"), got.get("message")) != ("message", text):
                    self.failure = f"{text}: received {got!r} instead"
                    return
                with self._lock:
                    self.latencies.append(time.monotonic() - started)
                n += 1
                await asyncio.sleep(PROBE_INTERVAL)  # the pace of the probes, not a wait for an event
        finally:
            await prober.close()
            await receiver.close()


async def finish(server: Daphne, *clients: ClientConnection) -> None:
    """Close the test's clients, stop the server, and check that its whole log, shutdown included, has no traceback.

    With no connection left, the server's drain on SIGTERM has nothing to wait for.
    """
    await asyncio.gather(*(ws.close() for ws in clients))
    await asyncio.to_thread(server.stop)
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "Exception inside application" not in log, log[-3000:]


async def greeted_or_closed(ws: ClientConnection) -> str | int | None:
    """``"greeting"`` if the server greeted this connection first, else the code it closed it with."""
    try:
        first = await asyncio.wait_for(ws.recv(), TIMEOUT)
    except ConnectionClosed:
        return ws.close_code
    assert first == GREETING
    return "greeting"


async def flood(ws: ClientConnection, recipient: str = "sink") -> tuple[int, float]:
    """Send frames as fast as the connection takes them until the server closes it; (frames sent, seconds)."""
    sent = 0
    started = time.monotonic()
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(TIMEOUT):
            while True:
                await ws.send(frame(recipient, f"flood {sent}"))
                sent += 1
                await asyncio.sleep(0)  # let the other flooders have their turn, not a wait
    return sent, time.monotonic() - started


@sync_to_async
def registry_rows(server: Daphne) -> list[tuple[str, str, list[str]]]:
    """The registry's rows of ``server``: (client address, origin, registered ids), as the admin shows them."""
    rows = Connection.objects.filter(process__pid=server.process.pid).prefetch_related("registrations")
    return [(row.client_address, row.origin, sorted(r.recipient for r in row.registrations.all())) for row in rows]


async def registry_shows(server: Daphne, recipient: str) -> list[tuple[str, str, list[str]]]:
    """The rows of ``server`` once its registration of ``recipient`` is written (the registry writes in batches).

    The registry writes events in order, so every connection made before that
    registration is in the rows by then, if it is recorded at all.
    """

    async def written() -> bool:
        return any(recipient in ids for _, _, ids in await registry_rows(server))

    await eventually(written, seconds=TIMEOUT)
    return await registry_rows(server)


# 1. Floods.

FLOOD_LIMITS = {"NOTIFY_MAX_FRAMES_PER_SECOND": "200", "NOTIFY_FLOOD_SECONDS": "2"}


async def test_a_flood_from_one_connection_is_closed_with_4008_having_relayed_no_more_than_the_rate(
    daphne_factory: Callable[..., Daphne],
) -> None:
    """Attack: one connection sends frames as fast as it can (limit 200 a second, 2 s of flood allowed).

    Fails closed: the connection is closed with 4008 after its 2 s over the
    rate; of everything it sent, no more than the rate (and its burst) was
    relayed.
    """
    server = daphne_factory(FLOOD_LIMITS)
    sink = await open_client(server.url, local_addr=("127.0.0.4", 0))
    await register_v2(sink, "sink")
    async with Neighbour(server.url):
        attacker = await open_client(server.url)
        sent, seconds = await flood(attacker)
        assert attacker.close_code == CLOSE_LIMIT
        assert seconds < 2 + 2, f"closed only after {seconds:.1f} s"  # its 2 s over the rate, and little more
    # What reached the sink: everything relayed before the close is in its queue before this marker.
    marker = await open_client(server.url, local_addr=("127.0.0.4", 0))
    await marker.send(frame("sink", "end of the flood"))
    relayed = 0
    while (await receive_json(sink))["message"] != "end of the flood":
        relayed += 1
    print(f"flood: {sent} frames sent in {seconds:.2f} s, {relayed} relayed, closed with {attacker.close_code}")
    assert 0 < relayed <= 200 + 200 * seconds, (sent, relayed, seconds)  # the burst, then the rate
    assert relayed < sent
    assert "closed with 4008: over 200 frames a second for 2 s" in server.log()
    await finish(server, sink, marker)


async def test_a_flood_from_twenty_connections_of_one_address_is_refused_past_five_and_closed(
    daphne_factory: Callable[..., Daphne],
) -> None:
    """Attack: one address opens 20 connections at once (limit 5 per address) and floods through each it keeps.

    Fails closed: the 15 over the limit are closed with 4008 at once (within
    a second of the storm's start) and before any greeting, so nothing can be
    sent or received on them; the 5 admitted are each closed with 4008 for flooding.
    """
    server = daphne_factory({**FLOOD_LIMITS, "NOTIFY_MAX_CONNECTIONS_PER_ADDRESS": "5"})
    async with Neighbour(server.url):
        started = time.monotonic()
        attackers = await asyncio.gather(*(connect(server.url, open_timeout=TIMEOUT) for _ in range(20)))
        firsts = await asyncio.gather(*(greeted_or_closed(ws) for ws in attackers))
        refused_within = time.monotonic() - started
        assert sorted(firsts, key=str) == [CLOSE_LIMIT] * 15 + ["greeting"] * 5, firsts
        assert refused_within < 1.0, f"the extra connections were closed only after {refused_within:.2f} s"
        admitted = [ws for ws, first in zip(attackers, firsts, strict=True) if first == "greeting"]
        floods = await asyncio.gather(*(flood(ws) for ws in admitted))
        assert [ws.close_code for ws in admitted] == [CLOSE_LIMIT] * 5
    print(
        f"20 connections: 15 closed with 4008 within {refused_within:.2f} s; 5 flooded "
        f"({sum(sent for sent, _ in floods)} frames) and were closed with 4008 after "
        f"{max(seconds for _, seconds in floods):.2f} s at most"
    )
    assert "its address has 5 connections open already" in server.log()
    assert server.log().count("closed with 4008: over 200 frames a second") == 5
    await finish(server, *attackers)


# 2. The same per-address limit behind nginx, with forged forwarding headers.


def forged_headers(n: int) -> list[tuple[str, str]]:
    """What an attacker sets to claim another address each time: every forwarding header, some twice."""
    return [
        ("X-Real-IP", f"6.6.6.{n}"),
        ("X-Real-IP", f"7.7.7.{n}"),
        ("X-Forwarded-For", f"8.8.8.{n}, 9.9.9.{n}"),
        ("X-Real-Port", f"{6000 + n}"),
        ("Forwarded", f"for=5.5.5.{n}"),
        ("X-Client-IP", f"4.4.4.{n}"),
    ]


FORGED_PREFIXES = ("4.4.4.", "5.5.5.", "6.6.6.", "7.7.7.", "8.8.8.", "9.9.9.")


@pytest.mark.usefixtures("async_db")
async def test_behind_nginx_forged_forwarding_headers_neither_escape_the_address_limit_nor_show_in_the_registry(
    daphne_factory: Callable[..., Daphne], nginx_factory: Callable[[Daphne], Nginx]
) -> None:
    """Attack: through the project's nginx, each connection claims another address in X-Real-IP, X-Forwarded-For...

    Fails closed: nginx overwrites X-Real-IP with the address it saw, so
    daphne counts every connection as the attacker's one real address: the
    6th and later are closed with 4008 whatever they claim, and the
    registry (what the admin shows) records the real address, never a forged one.
    """
    server = daphne_factory({"NOTIFY_BEHIND_PROXY": "1", "NOTIFY_MAX_CONNECTIONS_PER_ADDRESS": "5"})
    nginx = nginx_factory(server)
    real = (BEHIND_NGINX_ADDRESS, 0)
    async with Neighbour(nginx.url):
        admitted = [
            await open_client(nginx.url, additional_headers=forged_headers(n), local_addr=real) for n in range(5)
        ]
        for n, ws in enumerate(admitted):
            await register_v2(ws, f"forged-{n}")
        extra = [
            await connect(nginx.url, open_timeout=TIMEOUT, additional_headers=forged_headers(n), local_addr=real)
            for n in range(5, 8)
        ]
        assert [await greeted_or_closed(ws) for ws in extra] == [CLOSE_LIMIT] * 3
        rows = await registry_shows(server, "forged-4")
    # The registry: the neighbour's two connections and the five admitted, at their real addresses.
    addresses = sorted(address for address, _, _ in rows if address != NEIGHBOUR_ADDRESS)
    assert addresses == [BEHIND_NGINX_ADDRESS] * 5, rows
    assert not [row for row in rows if str(row[0]).startswith(FORGED_PREFIXES)], rows
    log = server.log()
    assert f"Closed a connection from {BEHIND_NGINX_ADDRESS} with 4008" in log
    assert not [prefix for prefix in FORGED_PREFIXES if prefix in log], "a forged address reached daphne's log"
    await finish(server, *admitted, *extra)


# 3. A handshake storm.


async def test_a_handshake_storm_is_closed_with_4008_past_its_rate(daphne_factory: Callable[..., Daphne]) -> None:
    """Attack: one address opens 40 connections at once (limit 5 new connections a second).

    Fails closed: every connection over the rate is closed with 4008 before
    its greeting; only the burst of 5, and what the rate refilled while the
    storm lasted, are greeted.
    """
    server = daphne_factory({"NOTIFY_MAX_HANDSHAKES_PER_SECOND_PER_ADDRESS": "5"})
    async with Neighbour(server.url):
        started = time.monotonic()
        storm = await asyncio.gather(*(connect(server.url, open_timeout=TIMEOUT) for _ in range(40)))
        firsts = await asyncio.gather(*(greeted_or_closed(ws) for ws in storm))
        lasted = time.monotonic() - started
        greeted = firsts.count("greeting")
        assert firsts.count(CLOSE_LIMIT) + greeted == 40, firsts
        assert 5 <= greeted <= 5 + 5 * lasted + 1, (greeted, lasted)  # the burst, and the refill meanwhile
        await asyncio.gather(*(ws.close() for ws in storm))
    print(f"handshake storm: 40 in {lasted:.2f} s, {greeted} greeted, {40 - greeted} closed with 4008")
    assert "new connections a second from its address" in server.log()
    await finish(server)


# 4. Oversized frames.


async def oversized_one_frame(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"recipient_uuid": "target", "message": "x" * MAX_FRAME}))


async def oversized_in_fragments(ws: ClientConnection) -> None:
    """One message of 17 fragments of 64 KiB: each frame is small, the message is over the limit."""
    head, tail = '{"recipient_uuid": "target", "message": "', '"}'
    chunk = 64 * 1024
    await ws.send([head, *(["y" * chunk] * 17), tail])


@pytest.mark.parametrize("send_oversized", [oversized_one_frame, oversized_in_fragments], ids=["frame", "fragments"])
async def test_an_oversized_message_ends_only_its_own_connection(
    daphne_factory: Callable[..., Daphne], send_oversized: Callable[[ClientConnection], Any]
) -> None:
    """Attack: a message over daphne's 1 MiB limit, as one frame or in small fragments, aimed at a registered id.

    Fails closed: daphne ends that connection, and only that one; nothing
    of the message reaches the id; the neighbour is not disturbed. The client
    sees what docs/PROTOCOL.md documents ("Frame size"): 1006, the connection
    dropped without a close frame.
    """
    server = daphne_factory()
    target = await open_client(server.url, local_addr=("127.0.0.4", 0), max_size=None)
    await register_v2(target, "target")
    async with Neighbour(server.url):
        attacker = await open_client(server.url, max_size=None)
        with contextlib.suppress(ConnectionClosed):  # closed while it was still sending
            await send_oversized(attacker)
        code = await close_code(attacker)
        assert attacker.state is State.CLOSED
    print(f"oversized message: the attacker's connection ended with {code}")
    await assert_receives_nothing(target, within=0.3)
    # The target still receives: the close touched nothing of it.
    sender = await open_client(server.url, local_addr=("127.0.0.4", 0))
    assert (await send_v2(sender, "target", "after"))["outcome"] == "live"
    assert (await receive_json(target))["message"] == "after"
    await finish(server, target, sender)
    assert code == DROPPED, f"docs/PROTOCOL.md documents 1006 (dropped, no close frame); the client saw {code}"


# 5. A forged Origin.

ALLOWED_ORIGIN = "https://app.example.com"
FORGED_ORIGINS = [
    "https://evil.example.net",
    "https://app.example.com.evil.net",  # the allowed host as a prefix of another
    "https://evilapp.example.com",
    "http://app.example.com",  # another scheme
    "https://app.example.com:8443",  # another port
    "null",  # a page opened from disk, or a sandboxed iframe
]


@pytest.mark.usefixtures("async_db")
async def test_a_forged_origin_is_refused_with_403_and_nothing_is_registered(
    daphne_factory: Callable[..., Daphne],
) -> None:
    """Attack: a page of another site (or origin ``null``) opens a WebSocket where only one origin is allowed.

    Fails closed: each handshake is refused with HTTP 403; no connection of
    those origins appears in the registry, so nothing could be registered.
    The allowed origin still connects.
    """
    server = daphne_factory({"NOTIFY_ALLOWED_ORIGINS": ALLOWED_ORIGIN})
    async with Neighbour(server.url):
        for origin in FORGED_ORIGINS:
            with pytest.raises(InvalidStatus) as refused:
                await connect(server.url, open_timeout=TIMEOUT, origin=Origin(origin))
            assert refused.value.response.status_code == 403, origin
        page = await open_client(server.url, origin=Origin(ALLOWED_ORIGIN))
        await register_v2(page, "allowed-page")
        rows = await registry_shows(server, "allowed-page")
    origins = sorted(origin for address, origin, _ in rows if address != NEIGHBOUR_ADDRESS)
    assert origins == [ALLOWED_ORIGIN], rows
    await finish(server, page)


# 6. Signed mode: every bad token.


def token_from_command(recipient: str, *args: str, secret: str) -> str:
    """A token printed by ``manage.py notify_token``, as the application's scripts make them, with ``secret``."""
    done = run_python("manage.py", "notify_token", recipient, *args, env={"DJANGO_SECRET_KEY": secret})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def flipped(token: str, index: int) -> str:
    """``token`` with the character at ``index`` changed."""
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]


MISSING: Any = object()  # a registration without a "token" key


def registration(recipient: str, token: object, *, v2: bool) -> str:
    body: dict[str, object] = {"recipient_uuid": recipient, "message": "connected"}
    if v2:
        body["v"] = 2
    if token is not MISSING:
        body["token"] = token
    return json.dumps(body)


async def test_in_signed_mode_no_bad_token_registers_receives_or_takes_what_is_pending(
    daphne_factory: Callable[..., Daphne],
) -> None:
    """Attack: register the victim's id with every kind of bad token, as v2 and as v1.

    Fails closed: each v2 registration is answered ``refused`` with the
    documented code; a v1 one gets nothing; none of them receives what is
    sent to the id; the id's pending notifications are not taken (its owner,
    with a valid token, still gets them, ``replayed``); tokens never reach the log.
    """
    secret = settings.SECRET_KEY  # daphne shares the test process's key: tokens made here are the server's
    expired, other_key = await asyncio.gather(
        asyncio.to_thread(token_from_command, "victim", "--max-age", "1", secret=secret),
        asyncio.to_thread(token_from_command, "victim", secret=OTHER_SECRET),
    )
    expires_by = time.time() + 1  # the short-lived token's expiry is at the latest this
    server = daphne_factory({"NOTIFY_REGISTRATION": "signed", "DJANGO_SECRET_KEY": secret})
    good = registration_token("victim")
    payload, timestamp, signature = good.split(":")
    bad: list[tuple[str, object, str]] = [
        ("missing", MISSING, "token-required"),
        ("null", None, "token-required"),
        ("a number", 12345, "token-invalid"),
        ("an object", {"token": good}, "token-invalid"),
        ("an empty string", "", "token-invalid"),
        ("another id's", registration_token("someone-else"), "token-invalid"),
        ("the neighbour's", registration_token(NEIGHBOUR_ID), "token-invalid"),
        ("tampered signature", flipped(good, len(payload) + len(timestamp) + 2 + len(signature) // 2), "token-invalid"),
        ("tampered expiry", flipped(good, 1), "token-invalid"),
        ("truncated", good[:-1], "token-invalid"),
        ("made with another secret key", other_key, "token-invalid"),
        ("1,001 characters", good + ":" + "A" * (1000 - len(good)), "token-invalid"),
        ("100,000 characters", good * (100_000 // len(good) + 1), "token-invalid"),
        ("expired", expired, "token-expired"),
    ]
    assert len(str(bad[11][1])) == 1001
    async with Neighbour(server.url, token=registration_token(NEIGHBOUR_ID)):
        sender = await open_client(server.url, local_addr=("127.0.0.4", 0))
        assert (await send_v2(sender, "victim", "pending before"))["outcome"] == "pending"
        await asyncio.sleep(max(0.0, expires_by - time.time()))  # waits for time itself: the token to expire
        v2 = await open_client(server.url)
        v1s: list[ClientConnection] = []
        for name, token, code in bad:
            await v2.send(registration("victim", token, v2=True))
            reply = await receive_json(v2)
            assert (reply["type"], reply["recipient_uuid"], reply["code"]) == ("refused", "victim", code), name
            v1 = await open_client(server.url)
            await v1.send(registration("victim", token, v2=False))
            # Its frames are handled in order: this reply comes after the registration was handled, and first.
            assert (await send_v2(v1, f"nobody-{len(v1s)}", "ping"))["outcome"] == "pending", name
            v1s.append(v1)
        # Nobody is registered: the server itself finds no registrant for the id.
        assert (await send_v2(sender, "victim", "pending during"))["outcome"] == "pending"
        for ws in [v2, *v1s]:
            await assert_receives_nothing(ws, within=0.05)
        # The owner, with a valid token, gets what was pending (nothing was taken), then live ones.
        owner = await open_client(server.url, local_addr=("127.0.0.4", 0))
        await register_v2(owner, "victim", token=good)
        replayed = [await receive_json(owner) for _ in range(2)]
        assert [(m["message"], m.get("replayed")) for m in replayed] == [
            ("pending before", True),
            ("pending during", True),
        ]
        assert (await send_v2(sender, "victim", "live"))["outcome"] == "live"
        assert (await receive_json(owner))["message"] == "live"
        for ws in [v2, *v1s]:
            await assert_receives_nothing(ws, within=0.05)
    log = server.log()
    assert log.count("may not register 'victim'") == 2 * len(bad), "each refusal is logged once"
    for name, token, _ in bad:
        if isinstance(token, str) and len(token) > 8:
            assert token[:40] not in log, f"the {name} token was written to the log"
    await finish(server, sender, v2, *v1s, owner)


# 7. Keyed senders.

ANOTHER_DEPLOYMENTS_SERVER_KEY = salted_hmac(
    "notifications.senders.server_key", "websocket sender", secret=OTHER_SECRET, algorithm="sha256"
).hexdigest()
KEYLESS: Sequence[tuple[str, dict[str, str], str]] = [
    ("no Authorization", {}, "token-required"),
    ("a wrong key", {"Authorization": "Bearer wrong-key-" + "w" * 30}, "token-invalid"),
    ("the key one character short", {"Authorization": f"Bearer {API_KEY[:-1]}"}, "token-invalid"),
    ("the key with a character changed", {"Authorization": f"Bearer {flipped(API_KEY, 10)}"}, "token-invalid"),
    ("the key with another scheme", {"Authorization": f"Basic {API_KEY}"}, "token-required"),
    ("Bearer and no key", {"Authorization": "Bearer"}, "token-required"),
    ("another deployment's server key", {"Authorization": f"Bearer {ANOTHER_DEPLOYMENTS_SERVER_KEY}"}, "token-invalid"),
]


async def test_with_keyed_senders_a_connection_without_the_key_cannot_send(
    daphne_factory: Callable[..., Daphne],
) -> None:
    """Attack: with NOTIFY_WS_SENDERS=key, send to a registered id without the API key, with a wrong one, or
    with the key in the frame instead of the handshake.

    Fails closed: a v2 send is answered ``sent`` with ``outcome: refused``
    and the documented code; a v1 send gets nothing; nothing reaches the
    target, whose first notification is the keyed back-end's.
    """
    server = daphne_factory({"NOTIFY_WS_SENDERS": "key", "NOTIFY_API_KEYS": API_KEY})
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    target = await open_client(server.url, local_addr=("127.0.0.4", 0))
    await register_v2(target, "target")
    async with Neighbour(server.url, prober_headers=bearer):
        for name, headers, code in KEYLESS:
            attacker = await open_client(server.url, additional_headers=headers)
            await attacker.send(frame("target", f"error: forged v1 ({name})"))
            reply = await send_v2(attacker, "target", f"error: forged v2 ({name})")
            assert (reply["outcome"], reply["code"]) == ("refused", code), (name, reply)
            await attacker.close()
        # The key in the frame instead of the handshake counts for nothing.
        attacker = await open_client(server.url)
        body = {"recipient_uuid": "target", "message": "error: key in frame", "v": 2, "token": API_KEY, "key": API_KEY}
        await attacker.send(json.dumps(body))
        reply = await receive_json(attacker)
        assert (reply["type"], reply["outcome"], reply["code"]) == ("sent", "refused", "token-required"), reply
        keyed = await open_client(server.url, additional_headers=bearer)
        assert (await send_v2(keyed, "target", "from the back-end"))["outcome"] == "live"
        # The first notification the target receives: no forged one came before it.
        assert (await receive_json(target))["message"] == "from the back-end"
        await assert_receives_nothing(target, within=0.05)
    log = server.log()
    assert log.count("may not send") == len(KEYLESS) + 1  # once per connection
    assert API_KEY not in log
    await finish(server, target, attacker, keyed)
