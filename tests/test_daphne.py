"""End to end: a real daphne process, real `websockets` clients behaving as the field's do."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from harness.clients import assert_receives_nothing, frame, open_client, receive, register_confirmed, send_once
from harness.servers import Daphne, wait_until
from notifications.protocol import GREETING


async def test_greet_register_and_receive_from_a_short_lived_sender(daphne: Daphne) -> None:
    ws = await open_client(daphne.url)
    await register_confirmed(ws, "test-uuid")
    await send_once(daphne.url, "test-uuid", "image2video")
    assert await receive(ws) == "image2video"
    await ws.close()


async def test_the_ws_path_serves_the_same_protocol(daphne: Daphne) -> None:
    ws = await open_client(daphne.url + "ws/")
    await register_confirmed(ws, "on-ws-path")
    await send_once(daphne.url, "on-ws-path", "hello")
    assert await receive(ws) == "hello"
    await ws.close()


async def test_backend_services_send_json_documents_inside_the_string(daphne: Daphne) -> None:
    ws = await open_client(daphne.url)
    await register_confirmed(ws, "receiver-uuid")
    document = json.dumps({"status": 200, "result": {"url": "https://cdn.example/v.mp4"}})
    await send_once(daphne.url, "receiver-uuid", document)
    assert json.loads(await receive(ws)) == {"status": 200, "result": {"url": "https://cdn.example/v.mp4"}}
    await ws.close()


async def test_several_connections_under_one_id_all_receive(daphne: Daphne) -> None:
    tabs = [await open_client(daphne.url) for _ in range(3)]
    for tab in tabs:
        await register_confirmed(tab, "shared-id")
    await send_once(daphne.url, "shared-id", "to every tab")
    assert [await receive(tab) for tab in tabs] == ["to every tab"] * 3
    for tab in tabs:
        await tab.close()


async def test_a_hundred_recipients_each_get_their_own_message(daphne: Daphne) -> None:
    recipients = await asyncio.gather(*(open_client(daphne.url) for _ in range(100)))
    await asyncio.gather(*(register_confirmed(ws, f"user-{i}") for i, ws in enumerate(recipients)))
    sender = await open_client(daphne.url)
    for i in range(100):
        await sender.send(frame(f"user-{i}", f"message for {i}"))
    received = await asyncio.gather(*(receive(ws) for ws in recipients))
    assert received == [f"message for {i}" for i in range(100)]
    await asyncio.gather(*(assert_receives_nothing(ws, 0.2) for ws in recipients))
    await sender.close()
    await asyncio.gather(*(ws.close() for ws in recipients))


async def test_bad_input_keeps_the_connection_open_and_disturbs_nobody(daphne: Daphne) -> None:
    recipient = await open_client(daphne.url)
    await register_confirmed(recipient, "victim")
    sender = await open_client(daphne.url)
    for bad in [
        "connected",
        "{oops",
        "[]",
        '{"recipient_uuid": "victim"}',
        '{"recipient_uuid": "\\ud800", "message": "x"}',
        '{"recipient_uuid": "victim", "message": "\\ud800"}',
        '{"recipient_uuid": "victim", "message": "\\u0000"}',
    ]:
        await sender.send(bad)
    await sender.send(b"\x00\x01binary")
    await assert_receives_nothing(sender)
    await assert_receives_nothing(recipient)
    await sender.send(frame("victim", "after the noise"))
    assert await receive(recipient) == "after the noise"
    log = daphne.log()
    assert "Traceback" not in log
    assert "binary frame" in log
    await sender.close()
    await recipient.close()


async def test_a_frame_over_the_size_limit_ends_only_that_connection(daphne_factory: Callable[..., Daphne]) -> None:
    server = daphne_factory(extra_args=("--websocket-max-message-size", "65536", "--websocket-max-frame-size", "65536"))
    recipient = await open_client(server.url)
    await register_confirmed(recipient, "bystander")
    offender = await open_client(server.url, max_size=None)
    await offender.send(frame("bystander", "x" * 70_000))
    with pytest.raises(ConnectionClosed) as closed:
        await receive(offender)
    assert closed.value.rcvd is None or closed.value.rcvd.code in (1009, 1006)
    await assert_receives_nothing(recipient)
    await send_once(server.url, "bystander", "still served")
    assert await receive(recipient) == "still served"
    await recipient.close()


async def test_daphnes_default_limit_of_one_mebibyte_applies(daphne: Daphne) -> None:
    offender = await open_client(daphne.url, max_size=None)
    await offender.send(frame("someone", "x" * (1024 * 1024 + 10)))
    with pytest.raises(ConnectionClosed):
        await receive(offender)


async def test_registrations_outlive_many_keepalive_rounds(daphne_factory: Callable[..., Daphne]) -> None:
    # Shortened timeouts: pings every second; the connection must stay open and
    # registered for as long as the client answers them, whatever its age.
    server = daphne_factory({"NOTIFY_PING_INTERVAL": "1", "NOTIFY_PING_TIMEOUT": "1"})
    ws = await open_client(server.url)
    await register_confirmed(ws, "long-lived")
    # Idle for several ping rounds: nothing arrives and the connection stays open.
    await assert_receives_nothing(ws, within=4.0)
    await send_once(server.url, "long-lived", "still registered")
    assert await receive(ws) == "still registered"
    await ws.close()


async def test_a_client_that_stops_answering_pings_is_dropped(daphne_factory: Callable[..., Daphne]) -> None:
    server = daphne_factory({"NOTIFY_PING_INTERVAL": "1", "NOTIFY_PING_TIMEOUT": "1"})
    watcher = await open_client(server.url)
    silent = await open_client(server.url, ping_interval=None)
    silent.transport.pause_reading()  # stop reading: no pong ever goes back
    # The server drops the silent client; the watcher, answering pings, stays.
    await wait_until(lambda: "disconnected (code" in server.log(), seconds=15)
    assert server.log().count("disconnected (code") == 1
    silent.transport.abort()
    await watcher.close()


async def test_origin_policy_through_daphne(daphne_factory: Callable[..., Daphne]) -> None:
    server = daphne_factory({"NOTIFY_ALLOWED_ORIGINS": "https://app.example.com"})
    python_client = await open_client(server.url)  # no Origin header at all
    await python_client.close()
    browser = await open_client(server.url, origin="https://app.example.com")
    await browser.close()
    with pytest.raises(InvalidStatus) as refused:
        await open_client(server.url, origin="https://evil.example.net")
    assert refused.value.response.status_code == 403


async def test_an_unknown_path_is_refused_with_one_log_line(daphne: Daphne) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await open_client(daphne.url + "nope/")
    assert refused.value.response.status_code == 403
    await wait_until(lambda: "unknown path '/nope/'" in daphne.log(), seconds=5)
    assert "Traceback" not in daphne.log()


async def test_the_greeting_is_exact(daphne: Daphne) -> None:
    ws = await open_client(daphne.url)  # open_client asserts the greeting
    await ws.close()
    assert GREETING == "..:: Hello from the Notification Center ::.."
