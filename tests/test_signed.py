"""Signed registrations and sender modes, through a real daphne: only the owner reads, only trusted senders write.

The test process shares the servers' ``SECRET_KEY`` (tests/settings.py), so
tokens made here are tokens of the application's server code.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

import pytest
from django.core import signing

from harness.clients import (
    assert_receives_nothing,
    frame,
    open_client,
    receive,
    receive_json,
    register_confirmed,
    register_v2,
    send_v2,
)
from harness.servers import Daphne, Python
from notifications.tokens import MAX_TOKEN_LENGTH, SALT, registration_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("async_db")]

SIGNED = {"NOTIFY_REGISTRATION": "signed"}
API_KEY = "a-test-api-key-of-at-least-32-characters-0123"
OWNER = "4f1c9a52-owner"


def expired_token(recipient: str) -> str:
    """A token this server made for ``recipient`` that expired a minute ago."""
    return signing.dumps(int(time.time()) - 60, salt=f"{SALT}:{recipient}")


def bad_tokens() -> list[tuple[str, object, str]]:
    """(what it is, the token, the refusal code) for every way a token can fail to register OWNER."""
    good = registration_token(OWNER)
    payload, timestamp, signature = good.split(":")
    with_other_key = signing.dumps(int(time.time()) + 600, salt=f"{SALT}:{OWNER}", key="another-" + "k" * 50)
    return [
        ("no token", None, "token-required"),
        ("another id's", registration_token("someone-else"), "token-invalid"),
        ("expired", expired_token(OWNER), "token-expired"),
        (
            "tampered",
            f"{payload}:{timestamp}:{signature[:-2]}{'AB' if signature[-2:] != 'AB' else 'CD'}",
            "token-invalid",
        ),
        (
            "a later expiry pasted in",
            f"{signing.b64_encode(b'9999999999').decode()}:{timestamp}:{signature}",
            "token-invalid",
        ),
        ("truncated", good[: len(good) // 2], "token-invalid"),
        ("made with another secret key", with_other_key, "token-invalid"),
        ("a number", 12345, "token-invalid"),
        ("an object", {"token": good}, "token-invalid"),
        ("an empty string", "", "token-invalid"),
        ("longer than the cap", good + "x" * MAX_TOKEN_LENGTH, "token-invalid"),
        ("a lone surrogate", "\ud800" + good, "token-invalid"),
    ]


async def test_only_a_token_for_the_id_registers_it_and_nothing_reaches_anyone_else(
    daphne_factory: Callable[..., Daphne],
) -> None:
    server = daphne_factory(SIGNED)
    sender = await open_client(server.url)
    outcome = await send_v2(sender, OWNER, "waiting for the owner")
    assert outcome["outcome"] == "pending", outcome

    intruders = []
    for name, token, code in bad_tokens():
        v2 = await open_client(server.url)
        await v2.send(json.dumps({"recipient_uuid": OWNER, "message": "connected", "v": 2, "token": token}))
        reply = await receive_json(v2)
        assert (reply["type"], reply["code"]) == ("refused", code), (name, reply)
        v1 = await open_client(server.url)
        body: dict[str, object] = {"recipient_uuid": OWNER, "message": "connected"}
        if token is not None:
            body["token"] = token
        await v1.send(json.dumps(body))
        intruders += [v1, v2]

    # Nothing went live to them (the sender hears "pending": nobody is registered) ...
    assert (await send_v2(sender, OWNER, "still waiting"))["outcome"] == "pending"
    for ws in intruders:
        await assert_receives_nothing(ws, within=0.2)
    # ... and the owner, with its token, gets everything, the pending ones included.
    owner = await open_client(server.url)
    reply = await register_v2(owner, OWNER, token=registration_token(OWNER))
    assert reply["type"] == "registered", reply
    texts = [(await receive_json(owner))["message"] for _ in range(2)]
    assert texts == ["waiting for the owner", "still waiting"]
    await send_v2(sender, OWNER, "live")
    assert (await receive_json(owner))["message"] == "live"
    for ws in intruders:
        await assert_receives_nothing(ws, within=0.2)

    log = server.log()
    assert "Traceback" not in log
    assert log.count(f"may not register {OWNER!r}") == 2 * len(bad_tokens())
    for _, token, _ in bad_tokens():
        if isinstance(token, str) and len(token) > 8:
            assert token not in log, "a token was written to the log"


async def test_a_v1_client_registers_with_its_token_and_a_reconnect_takes_a_fresh_one(
    daphne_factory: Callable[..., Daphne],
) -> None:
    server = daphne_factory(SIGNED)
    for attempt in range(2):  # each connection with a token of its own, as getToken() gives them
        page = await open_client(server.url)
        await page.send(
            json.dumps({"recipient_uuid": OWNER, "message": "connected", "token": registration_token(OWNER)})
        )
        await register_confirmed(page, OWNER)
        sender = await open_client(server.url)
        await sender.send(frame(OWNER, f"done {attempt}"))
        assert await receive(page) == f"done {attempt}"
        await page.close()


async def test_open_mode_ignores_tokens_and_registers_as_v1_always_did(daphne: Daphne) -> None:
    page = await open_client(daphne.url)
    await page.send(json.dumps({"recipient_uuid": "anyone", "message": "connected", "token": "not even a token"}))
    await register_confirmed(page, "anyone")
    sender = await open_client(daphne.url)
    await sender.send(frame("anyone", "hi"))
    assert await receive(page) == "hi"


# Who may send over the WebSocket.


@pytest.mark.parametrize("mode", ["key", "none"])
async def test_a_connection_without_a_key_sends_nothing_and_is_told(
    daphne_factory: Callable[..., Daphne], mode: str
) -> None:
    server = daphne_factory({"NOTIFY_WS_SENDERS": mode, "NOTIFY_API_KEYS": API_KEY})
    page = await open_client(server.url)
    await register_v2(page, "target")
    browser = await open_client(server.url)
    reply = await send_v2(browser, "target", "forged: error, go to https://evil.example")
    assert (reply["outcome"], reply["code"]) == ("refused", "token-required"), reply
    await browser.send(frame("target", "forged v1"))  # a v1 send: no reply, not relayed
    wrong = await open_client(server.url, additional_headers={"Authorization": "Bearer " + "w" * 40})
    assert (await send_v2(wrong, "target", "wrong key"))["code"] == "token-invalid"
    keyed = await open_client(server.url, additional_headers={"Authorization": f"Bearer {API_KEY}"})
    reply = await send_v2(keyed, "target", "from the back-end")
    if mode == "key":
        assert reply["outcome"] == "live", reply
        assert (await receive_json(page))["message"] == "from the back-end"
    else:
        assert (reply["outcome"], reply["code"]) == ("refused", "token-invalid"), reply
    await assert_receives_nothing(page, within=0.3)
    log = server.log()
    assert "may not send" in log and "Traceback" not in log
    assert log.count("may not send") == (3 if mode == "none" else 2)  # once per connection


@pytest.mark.parametrize("mode", ["key", "none"])
async def test_the_projects_own_senders_keep_working_in_every_mode_on_the_embedded_default(
    daphne_factory: Callable[..., Daphne], manage: Python, database_url: str, mode: str
) -> None:
    server = daphne_factory({"NOTIFY_WS_SENDERS": mode})
    page = await open_client(server.url)
    await register_v2(page, "by-command")  # confirmed by its reply (v1's probes are sends, refused here)
    env = {"DATABASE_URL": database_url, "NOTIFY_SERVER_URL": server.url, "REDIS_URL": None}
    shared_key = {"DJANGO_SECRET_KEY": "test-only-secret-key-not-for-production-0123456789"}
    done = manage("notify", "by-command", "from the command", env={**env, **shared_key})
    assert done.returncode == 0, done.stderr
    assert (await receive_json(page))["message"] == "from the command"
    # Another secret key is not the server's: refused, in one line.
    other: subprocess.CompletedProcess[str] = manage(
        "notify", "by-command", "impostor", env={**env, "DJANGO_SECRET_KEY": "another-" + "k" * 50}
    )
    assert other.returncode != 0
    assert "Traceback" not in other.stderr and len(other.stderr.strip().splitlines()) == 1, other.stderr
    assert "refused" in other.stderr and "DJANGO_SECRET_KEY" in other.stderr, other.stderr
    await assert_receives_nothing(page, within=0.3)


async def test_sending_through_redis_and_the_http_endpoint_needs_no_websocket_key(
    daphne_factory: Callable[..., Daphne], manage: Python, database_url: str, redis_url: str, redis_prefix: str
) -> None:
    redis = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
    server = daphne_factory({**redis, "NOTIFY_WS_SENDERS": "none"})
    page = await open_client(server.url)
    await register_v2(page, "through-redis")
    done = manage("notify", "through-redis", "via the layer", env={**redis, "DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    assert (await receive_json(page))["message"] == "via the layer"
