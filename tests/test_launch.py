"""bin/daphne, the one launch line: the keep-alive and lifetime flags every deployment gets."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import inspect
import json
import os
import subprocess
import weakref
from pathlib import Path
from typing import Any

import pytest
from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from harness.servers import ROOT, free_port, run_python
from notifications.backpressure import ClientQueue
from notifications.launch import GC_THRESHOLDS, DrainingServer


def launch_line(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """The command bin/daphne runs, captured by a stand-in for Python that prints its arguments."""
    stand_in = tmp_path / "python"
    stand_in.write_text('#!/bin/sh\nfor arg in "$@"; do echo "$arg"; done\n')
    stand_in.chmod(0o755)
    result = subprocess.run(
        [str(ROOT / "bin" / "daphne"), *args],
        env={**os.environ, "PYTHON": str(stand_in), **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.splitlines()


def option(line: list[str], name: str) -> str:
    return line[line.index(name) + 1]


def test_connections_are_never_closed_for_their_age(tmp_path: Path) -> None:
    # daphne's default --websocket_timeout of 86400 would cut every client off after a day.
    assert option(launch_line(tmp_path), "--websocket_timeout") == "-1"


def test_keepalive_is_a_ping_after_60_s_and_30_s_to_answer(tmp_path: Path) -> None:
    line = launch_line(tmp_path)
    assert (option(line, "--ping-interval"), option(line, "--ping-timeout")) == ("60", "30")


def test_a_burst_of_handshakes_gets_20_s_rather_than_daphnes_5(tmp_path: Path) -> None:
    assert option(launch_line(tmp_path), "--websocket_connect_timeout") == "20"
    tuned = launch_line(tmp_path, env={"NOTIFY_HANDSHAKE_TIMEOUT": "60"})
    assert option(tuned, "--websocket_connect_timeout") == "60"


def test_keepalive_can_be_tuned_from_the_environment(tmp_path: Path) -> None:
    line = launch_line(tmp_path, env={"NOTIFY_PING_INTERVAL": "120", "NOTIFY_PING_TIMEOUT": "45"})
    assert (option(line, "--ping-interval"), option(line, "--ping-timeout")) == ("120", "45")


def test_other_daphne_options_pass_through_before_the_application(tmp_path: Path) -> None:
    line = launch_line(tmp_path, "-b", "127.0.0.1", "-p", "9000")
    assert line[:2] == ["-m", "notifyproject.server"]
    assert option(line, "-p") == "9000"
    assert line[-1] == "notifyproject.asgi:application"


@pytest.mark.parametrize("script", ["serve"])
def test_the_other_launch_scripts_go_through_bin_daphne(script: str) -> None:
    text = (ROOT / "bin" / script).read_text()
    assert "exec bin/daphne" in text
    assert "-m daphne" not in text


@pytest.fixture(scope="module", params=["notifyproject.server", "notifications.serve"])
def launched(request: pytest.FixtureRequest) -> dict[str, Any]:
    """What a launch path had set up once the reactor ran: this repository's (bin/daphne runs
    notifyproject.server) and the installable app's own (python -m notifications.serve).

    A probe application reports it from the reactor's start, after the launcher's own start-up work, and stops.
    """
    done = run_python(
        *("-m", request.param, "-b", "127.0.0.1", "-p", str(free_port()), "tests.launch_probe:application"),
        env={"DJANGO_SETTINGS_MODULE": "notifyproject.settings", "DJANGO_DEBUG": "1"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    state: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return state


def test_the_launcher_sets_start_up_objects_aside_from_the_collector_and_collects_less_often(
    launched: dict[str, Any],
) -> None:
    assert tuple(launched["thresholds"]) == GC_THRESHOLDS != gc.get_threshold()
    assert launched["frozen"] > 10_000  # Django, Twisted, daphne and the app, loaded before the reactor ran


def test_the_launcher_unmasks_small_client_frames_with_the_apps_masker(launched: dict[str, Any]) -> None:
    assert launched["masker"] == "notifications.masking.create_xor_masker"


def test_the_launcher_makes_the_channel_layer_before_any_connection(launched: dict[str, Any]) -> None:
    # Not on the first connection, which would pay for its imports (about 9 MB and a fraction of a second).
    assert launched["channel_layer"] in {"InMemoryLayer", "RedisPubSubLayer"}


# daphne 4.2.3's Server.create_application, which DrainingServer.create_application repeats with another queue.
DAPHNES_CREATE_APPLICATION = "f1e300b4"


def test_daphnes_create_application_is_still_the_one_the_apps_server_repeats() -> None:
    source = inspect.getsource(Server.create_application)
    assert "input_queue = asyncio.Queue()" in source
    digest = hashlib.sha256(source.encode()).hexdigest()[:8]
    assert digest == DAPHNES_CREATE_APPLICATION, (
        "daphne's Server.create_application changed: bring notifications.launch.DrainingServer.create_application "
        f"in line with it, then record its digest {digest}"
    )


async def test_the_apps_server_gives_each_application_a_client_queue_to_receive_from() -> None:
    server = DrainingServer.__new__(DrainingServer)  # the state create_application reads, without running
    received: list[dict[str, Any]] = []

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        received.append(await receive())
        received.append(scope)

    server.application = application
    protocol = object()
    server.connections = {protocol: {}}
    queue = server.create_application(protocol, {"type": "websocket"})
    assert isinstance(queue, ClientQueue)
    queue.put_nowait({"type": "websocket.connect"})
    await asyncio.wait_for(server.connections[protocol]["application_instance"], 1)
    assert received == [{"type": "websocket.connect"}, {"type": "websocket", "asgi": {"version": "3.0"}}]


async def waits(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An application that reads what the client sends and never answers."""
    while True:
        await receive()


def upgraded_request(server_class: type[Server], application: Any = waits) -> tuple[Server, WebRequest]:
    """A server of ``server_class`` after daphne upgraded one HTTP request to a WebSocket, as run() wires it."""
    server = server_class(application, endpoints=["tcp:0"])
    server.connections = {}
    server.ws_factory = WebSocketFactory(server, server="test")
    channel = HTTPFactory(server).buildProtocol(IPv4Address("TCP", "127.0.0.1", 4000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4000))
    channel.makeConnection(transport)
    key = base64.b64encode(b"0123456789abcdef").decode()
    channel.dataReceived(
        (
            "GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    [request] = [p for p in server.connections if isinstance(p, WebRequest)]
    assert request.transport is None and server.connections[request].get("disconnected")  # handed over
    return server, request


@pytest.mark.parametrize("server_class", [DrainingServer, Server], ids=["app", "daphne"])
async def test_the_request_of_an_upgraded_connection_is_freed_by_reference_counting(
    server_class: type[Server],
) -> None:
    # daphne's own server leaves the request in a cycle with Twisted's HTTP channel, freed only by a
    # full collection (and in the meantime a few KB per connection); the app's server breaks it.
    collecting = gc.isenabled()
    gc.disable()
    try:
        server, request = upgraded_request(server_class)
        await asyncio.sleep(0)  # the turn after the hand-over
        gone = weakref.ref(request)
        del server.connections[request], request  # what daphne's application_checker does next
        assert (gone() is None) == (server_class is DrainingServer)
        for details in server.connections.values():
            details["application_instance"].cancel()
    finally:
        if collecting:
            gc.enable()


# daphne 4.2.3's methods a text frame passes through, which notifications.launch.Replies checks in one step.
DAPHNES_REPLY_PATH = {
    "Server.handle_reply": (Server.handle_reply, "9d9dbaea"),
    "WebSocketProtocol.handle_reply": (WebSocketProtocol.handle_reply, "5331423b"),
    "WebSocketProtocol.serverSend": (WebSocketProtocol.serverSend, "345f2133"),
}


@pytest.mark.parametrize("name", DAPHNES_REPLY_PATH)
def test_daphnes_reply_path_is_still_the_one_the_apps_replies_shorten(name: str) -> None:
    method, recorded = DAPHNES_REPLY_PATH[name]
    digest = hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:8]
    assert digest == recorded, (
        f"daphne's {name} changed: bring notifications.launch.Replies in line with it, then record its digest {digest}"
    )


async def wire_after_handshake(server_class: type[Server]) -> bytes:
    """What a server wrote to a WebSocket after its handshake, for an application's replies of every kind."""
    sent, go_on = asyncio.Event(), asyncio.Event()

    async def replies(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "h\u00e9llo \U0001f514"})
        await send({"type": "websocket.send", "bytes": b"\x00\x01"})
        await send({"type": "websocket.send", "text": ""})  # nothing at all, in daphne
        await send({"type": "websocket.send", "text": "x" * 70_000})  # a 64-bit length
        sent.set()
        await go_on.wait()
        await send({"type": "websocket.send", "text": "to a connection gone"})  # dropped, in daphne

    server, _ = upgraded_request(server_class, replies)
    [websocket] = [p for p in server.connections if isinstance(p, WebSocketProtocol)]
    await asyncio.wait_for(sent.wait(), 1)
    server.connections[websocket]["disconnected"] = True  # as daphne marks a connection it lost
    go_on.set()
    await asyncio.wait_for(server.connections[websocket]["application_instance"], 1)
    wire: bytes = websocket.transport.value()
    return wire.split(b"\r\n\r\n", 1)[1]


async def test_the_apps_server_writes_each_reply_as_daphnes_does() -> None:
    ours, daphnes = await wire_after_handshake(DrainingServer), await wire_after_handshake(Server)
    assert ours == daphnes
    assert ours.startswith(b"\x81\x0bh\xc3\xa9llo \xf0\x9f\x94\x94\x82\x02\x00\x01\x81\x7f")
    assert b"gone" not in ours
