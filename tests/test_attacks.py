"""An attacker's test file: each abuse fails closed, leaves no traceback, and does not disturb a neighbour.

Real daphne processes (and the project's nginx where named). In each test a
neighbour, registered on another connection, keeps receiving probes while
the attack goes on: every probe must arrive, each within a second.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from harness.clients import TIMEOUT, frame, open_client, receive, receive_json, register_confirmed, register_v2_frame
from harness.servers import Daphne, Nginx, run_python
from notifications.limits import CLOSE_LIMIT

FORGED = {"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6"}
API_KEY = "Zt3vQ9-pLk2mW8xR4nB7cY1sD6fH0gJ5aE"
SECRET = "test-only-secret-key-not-for-production-0123456789"  # the daphne_factory's key


# The neighbour connects from another loopback address than the attacker: per-address limits are the attacker's.
NEIGHBOUR_ADDRESS = ("127.0.0.2", 0)


@asynccontextmanager
async def neighbour_watching(server_url: str) -> AsyncIterator[list[float]]:
    """A neighbour that receives a probe every 50 ms for the length of the block; yields the delays seen.

    Fails the test if any probe does not arrive within a second.
    """
    neighbour = await open_client(server_url, local_addr=NEIGHBOUR_ADDRESS)
    await register_confirmed(neighbour, "neighbour")
    prober = await open_client(server_url, local_addr=NEIGHBOUR_ADDRESS)
    delays: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            await prober.send(frame("neighbour", f"probe {n}"))
            assert await receive(neighbour, 1.0) == f"probe {n}"
            delays.append(time.monotonic() - started)
            n += 1
            await asyncio.sleep(0.05)  # the pace of the probes, not a wait for an event

    probing = asyncio.create_task(probe())
    try:
        yield delays
    finally:
        stop.set()
        await asyncio.wait_for(probing, TIMEOUT)  # raises if a probe was late or lost
        await neighbour.close()
        await prober.close()
    assert delays, "no probe was sent"
    print(f"\nneighbour: {len(delays)} probes, slowest {max(delays) * 1000:.1f} ms")


async def close_code(ws: ClientConnection) -> int | None:
    """The close code the server sent, after whatever it sent before."""
    try:
        async with asyncio.timeout(TIMEOUT):
            async for _ in ws:
                pass
    except ConnectionClosed:
        pass
    return ws.close_code


def no_traceback(server: Daphne) -> None:
    assert "Traceback" not in server.log()
    assert "Exception inside application" not in server.log()


async def flood(ws: ClientConnection) -> int | None:
    """Send frames as fast as the connection takes them until the server closes it; its close code."""
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(TIMEOUT):
            n = 0
            while True:
                await ws.send(frame("sink", f"flood {n}"))
                n += 1
    return ws.close_code


LIMITS = {
    "NOTIFY_MAX_FRAMES_PER_SECOND": "200",
    "NOTIFY_FLOOD_SECONDS": "2",
    "NOTIFY_MAX_CONNECTIONS_PER_ADDRESS": "5",
    "NOTIFY_MAX_HANDSHAKES_PER_SECOND_PER_ADDRESS": "50",
}


async def test_a_flood_from_many_connections_of_one_address_is_closed_and_the_rest_refused(
    daphne_factory: Callable[..., Daphne],
) -> None:
    server = daphne_factory(LIMITS)
    async with neighbour_watching(server.url):
        attackers = [await connect(server.url, open_timeout=TIMEOUT) for _ in range(20)]
        admitted = []
        for ws in attackers:
            try:
                await asyncio.wait_for(ws.recv(), TIMEOUT)  # the greeting: admitted
                admitted.append(ws)
            except ConnectionClosed:
                assert ws.close_code == CLOSE_LIMIT
        assert len(admitted) == 5
        codes = await asyncio.gather(*(flood(ws) for ws in admitted))
        assert codes == [CLOSE_LIMIT] * 5
    no_traceback(server)


async def test_behind_nginx_forged_forwarding_headers_neither_escape_the_address_limit_nor_show(
    daphne_factory: Callable[..., Daphne], nginx_factory: Callable[[Daphne], Nginx]
) -> None:
    server = daphne_factory({"NOTIFY_BEHIND_PROXY": "1", "NOTIFY_MAX_CONNECTIONS_PER_ADDRESS": "5"})
    nginx = nginx_factory(server)
    admitted = []
    for n in range(5):  # each claims another address
        headers = {"X-Forwarded-For": f"6.6.6.{n}", "X-Real-IP": f"6.6.6.{n}"}
        admitted.append(await open_client(nginx.url, additional_headers=headers))
    sixth = await connect(nginx.url, open_timeout=TIMEOUT, additional_headers={"X-Real-IP": "9.9.9.9"})
    assert await close_code(sixth) == CLOSE_LIMIT
    for n, ws in enumerate(admitted):
        await register_confirmed(ws, f"behind-{n}")
    assert "6.6.6." not in server.log() and "9.9.9.9" not in server.log()  # the real address, never a forged one
    assert "Closed a connection from 127.0.0.1 with 4008" in server.log()
    no_traceback(server)


async def test_a_handshake_storm_is_closed_past_its_rate_and_the_neighbour_is_served(
    daphne_factory: Callable[..., Daphne],
) -> None:
    server = daphne_factory({"NOTIFY_MAX_HANDSHAKES_PER_SECOND_PER_ADDRESS": "5"})
    async with neighbour_watching(server.url):
        storm = await asyncio.gather(*(connect(server.url, open_timeout=TIMEOUT) for _ in range(40)))
        codes = await asyncio.gather(*(first_frame_or_close(ws) for ws in storm))
        assert codes.count("greeting") <= 10  # the burst of 5 and the few refilled meanwhile
        assert codes.count(CLOSE_LIMIT) >= 30
        await asyncio.gather(*(ws.close() for ws in storm))
    no_traceback(server)


async def first_frame_or_close(ws: ClientConnection) -> str | int | None:
    try:
        await asyncio.wait_for(ws.recv(), TIMEOUT)
        return "greeting"
    except ConnectionClosed:
        return ws.close_code


async def test_an_oversized_frame_closes_only_its_own_connection(daphne: Daphne) -> None:
    async with neighbour_watching(daphne.url):
        attacker = await open_client(daphne.url, max_size=None)
        await attacker.send(json.dumps({"recipient_uuid": "neighbour", "message": "x" * (1024 * 1024 + 1)}))
        assert await close_code(attacker) == 1006  # dropped without a close frame, as docs/PROTOCOL.md says
    no_traceback(daphne)


async def test_a_forged_origin_is_refused_at_the_handshake(daphne_factory: Callable[..., Daphne]) -> None:
    server = daphne_factory({"NOTIFY_ALLOWED_ORIGINS": "https://app.example.com"})
    with pytest.raises(InvalidStatus) as refused:
        await connect(server.url, open_timeout=TIMEOUT, origin="https://evil.example.net")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    no_traceback(server)


def token(server: Daphne, recipient: str, *extra: str, secret: str = SECRET) -> str:
    done = run_python("manage.py", "notify_token", recipient, *extra, env={"DJANGO_SECRET_KEY": secret})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_in_signed_mode_no_bad_token_registers_or_takes_what_is_pending(
    daphne_factory: Callable[..., Daphne],
) -> None:
    server = daphne_factory({"NOTIFY_REGISTRATION": "signed"})
    sender = await open_client(server.url)
    await sender.send(json.dumps({"recipient_uuid": "victim", "message": "secret", "v": 2}))
    assert (await receive_json(sender))["outcome"] == "pending"
    good = await asyncio.to_thread(token, server, "victim")
    expired = await asyncio.to_thread(token, server, "victim", "--max-age", "1")
    bad: list[tuple[object, str]] = [
        (None, "token-required"),
        (7, "token-invalid"),
        ("", "token-invalid"),
        (await asyncio.to_thread(token, server, "someone-else"), "token-invalid"),
        (good[:-1] + ("A" if good[-1] != "A" else "B"), "token-invalid"),  # tampered
        (good[: len(good) // 2], "token-invalid"),  # truncated
        (await asyncio.to_thread(token, server, "victim", secret="another-secret-key-" + "z" * 40), "token-invalid"),
        ("x" * 1001, "token-invalid"),
    ]
    attacker = await open_client(server.url)
    for value, code in bad:
        await attacker.send(json.dumps({"recipient_uuid": "victim", "message": "connected", "v": 2, "token": value}))
        answer = await receive_json(attacker)
        assert (answer["type"], answer["code"]) == ("refused", code), value
    await asyncio.sleep(1.1)  # the short-lived token's second passes: this waits for time itself
    await attacker.send(register_v2_frame("victim", token=expired))
    assert (await receive_json(attacker))["code"] == "token-expired"
    # A v1 registration with a bad token: nothing back, and nothing sent to the id reaches it.
    await attacker.send(json.dumps({"recipient_uuid": "victim", "message": "connected", "token": "forged"}))
    # The owner, with its token, still gets what was pending: no refused registration took it.
    owner = await open_client(server.url)
    await owner.send(register_v2_frame("victim", token=good))
    assert (await receive_json(owner))["type"] == "registered"
    message = await receive_json(owner)
    assert (message["message"], message.get("replayed")) == ("secret", True)
    await sender.send(frame("victim", "live one"))
    assert (await receive_json(owner))["message"] == "live one"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(attacker.recv(), 0.5)  # the attacker got none of it
    assert server.log().count("may not register 'victim'") == len(bad) + 2  # each refusal logged
    assert good not in server.log()  # tokens are never logged
    no_traceback(server)


async def test_with_keyed_senders_a_connection_without_the_key_cannot_send(
    daphne_factory: Callable[..., Daphne],
) -> None:
    server = daphne_factory({"NOTIFY_WS_SENDERS": "key", "NOTIFY_API_KEYS": API_KEY})
    receiver = await open_client(server.url)
    await receiver.send(frame("target", "connected"))
    for headers in ({}, {"Authorization": "Bearer wrong-key-" + "w" * 30}):
        attacker = await open_client(server.url, additional_headers=headers)
        await attacker.send(json.dumps({"recipient_uuid": "target", "message": "error: forged", "v": 2}))
        answer = await receive_json(attacker)
        assert (answer["outcome"], answer["code"]) == ("refused", "token-required" if not headers else "token-invalid")
        await attacker.close()
    keyed = await open_client(server.url, additional_headers={"Authorization": f"Bearer {API_KEY}"})
    await keyed.send(frame("target", "from the back-end"))
    assert await receive(receiver) == "from the back-end"  # the first it receives: no forged one before it
    no_traceback(server)
