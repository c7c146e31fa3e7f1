"""The app's WebSocket protocol (notifications/frames.py) reads and writes exactly as autobahn does, only sooner.

Each case feeds the same bytes, cut the same way, to a connection of
daphne's protocol as daphne ships it and to one of the app's, and expects
the same messages, the same bytes written back (pongs, closes with their
codes), the same state and the same traffic counters. Other tests hold the
assumptions the short path rests on, so that a change in autobahn or daphne
fails here rather than silently.
"""

from __future__ import annotations

import itertools
import os
import random
from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from daphne.ws_protocol import WebSocketProtocol as DaphneProtocol

from bench.frames import client_frame, open_connection
from harness.clients import open_client, receive, register_confirmed, send_once
from harness.servers import Daphne
from notifications import frames
from notifications.frames import WebSocketProtocol as AppProtocol
from notifications.masking import unmask

LIMIT = 1000  # maxFramePayloadSize and maxMessagePayloadSize of the connections under test
TEXT = "le café ☕ est prêt 😀".encode()
COUNTERS = (
    "incomingOctetsWireLevel",
    "incomingOctetsWebSocketLevel",
    "incomingOctetsAppLevel",
    "incomingWebSocketFrames",
    "incomingWebSocketMessages",
    "outgoingOctetsWireLevel",
    "outgoingOctetsWebSocketLevel",
    "outgoingOctetsAppLevel",
    "outgoingWebSocketFrames",
    "outgoingWebSocketMessages",
)


def frame(payload: bytes, first: int = 0x81) -> bytes:
    return client_frame(payload, first, mask=b"\x37\xfa\x21\x3d")


def unmasked(payload: bytes) -> bytes:
    return bytes((0x81, len(payload))) + payload


def long_form(payload: bytes) -> bytes:
    """A text frame whose short length is written in the 16-bit form, which RFC 6455 forbids."""
    mask = b"\x01\x02\x03\x04"
    return bytes((0x81, 0x80 | 126)) + len(payload).to_bytes(2, "big") + mask + unmask(mask, payload)


TWO = frame(b"first") + frame(b"second")
CASES: dict[str, list[bytes]] = {
    "one small text frame": [frame(b'{"recipient_uuid": "a", "message": "done"}')],
    "an empty text frame": [frame(b"")],
    "UTF-8 beyond ASCII": [frame(TEXT)],
    "a 16-bit length": [frame(b"x" * 300)],
    "several frames in one read": [TWO + frame(TEXT) + frame(b"x" * 200)],
    "a frame cut between reads": [TWO[:3], TWO[3:9], TWO[9:]],
    "a whole frame, then half of one": [TWO[:-4], TWO[-4:]],
    "a binary frame between text frames": [frame(b"a") + frame(b"\x00\xff", 0x82) + frame(b"b")],
    "a message in two fragments": [frame(b"hel", 0x01) + frame(b"lo", 0x80) + frame(b"after")],
    "a ping between text frames": [frame(b"a") + frame(b"are you there", 0x89) + frame(b"b")],
    "invalid UTF-8 closes with 1007": [frame(b"ok") + frame(b"\xc3\x28") + frame(b"never read")],
    "a surrogate's bytes close with 1007": [frame(b"\xed\xa0\x80")],
    "a code point cut at the end closes with 1007": [frame("€".encode()[:2])],
    "an unmasked frame is a protocol violation": [unmasked(b"plain")],
    "a short length in the long form is a protocol violation": [long_form(b"short")],
    "a frame over the frame limit closes with 1009": [frame(b"a"), frame(b"x" * (LIMIT + 1))],
    "a close frame": [frame(b"last") + frame((1000).to_bytes(2, "big") + b"bye", 0x88) + frame(b"late")],
    "a reserved bit is a protocol violation": [frame(b"rsv", 0xC1)],
}


def run(base: type[Any], chunks: list[bytes]) -> dict[str, Any]:
    connection, transport = open_connection(base, maxFramePayloadSize=LIMIT, maxMessagePayloadSize=LIMIT)
    for chunk in chunks:
        connection.dataReceived(chunk)
    return {
        "messages": connection.messages,
        "written": transport.value(),
        "state": connection.state,
        "counters": {name: getattr(connection.trafficStats, name) for name in COUNTERS},
    }


@pytest.mark.parametrize("chunks", list(CASES.values()), ids=list(CASES))
def test_the_app_reads_each_case_as_autobahn_does(chunks: list[bytes]) -> None:
    assert run(AppProtocol, chunks) == run(DaphneProtocol, chunks)


def test_the_app_reads_random_traffic_cut_at_random_as_autobahn_does() -> None:
    rng = random.Random(19)
    kinds = [0x81, 0x81, 0x81, 0x82, 0x89]
    for _ in range(200):
        stream = b"".join(
            frame(
                os.urandom(rng.choice([0, 1, 5, 60, 125, 126, 400])) if first != 0x81 else TEXT * rng.randrange(8),
                first,
            )
            for first in rng.choices(kinds, k=rng.randrange(1, 6))
        )
        cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randrange(3)))
        bounds = [0, *cuts, len(stream)]
        chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
        assert run(AppProtocol, chunks) == run(DaphneProtocol, chunks), chunks


@pytest.mark.parametrize("size", [0, 1, 125, 126, 999, 1000, 1001, 65535, 65536, 70000])
@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_the_app_writes_each_message_as_autobahn_does(size: int, binary: bool) -> None:
    payload = os.urandom(size) if binary else b"n" * size
    written: list[dict[str, Any]] = []
    for base in (AppProtocol, DaphneProtocol):
        connection, transport = open_connection(base, maxMessagePayloadSize=LIMIT * 100)
        outcome = "sent"
        try:
            connection.sendMessage(payload, binary)
        except Exception as exc:  # autobahn refuses a message over the limit: the app must too
            outcome = type(exc).__name__
        written.append(
            {
                "outcome": outcome,
                "bytes": transport.value(),
                "counters": {name: getattr(connection.trafficStats, name) for name in COUNTERS},
            }
        )
    assert written[0] == written[1]


def test_the_short_paths_are_taken_for_small_whole_text_frames_and_not_for_others() -> None:
    connection, transport = open_connection(AppProtocol)
    autobahns: list[str] = []
    for name in ("processData", "sendFrame"):
        original = getattr(connection, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            autobahns.append(_name)
            return _original(*args, **kwargs)

        setattr(connection, name, spy)
    connection.dataReceived(frame(b"a") + frame(b"b" * 300))
    connection.sendMessage(b"c" * 300, False)
    assert connection.messages == [(b"a", False), (b"b" * 300, False)]
    assert autobahns == []  # neither autobahn's reader nor its frame writer ran
    connection.dataReceived(frame(b"\x00", 0x82))
    connection.sendMessage(b"d", False, fragmentSize=1)
    assert "processData" in autobahns and "sendFrame" in autobahns


def test_debug_logging_on_leaves_every_frame_to_autobahn() -> None:
    connection, _ = open_connection(AppProtocol)
    connection.log.set_log_level("debug")
    try:
        assert not connection._between_messages()
        connection.dataReceived(frame(b"logged"))
        assert connection.messages == [(b"logged", False)]
    finally:
        connection.log.set_log_level("info")


def test_daphne_overrides_none_of_the_hooks_the_short_path_leaves_out() -> None:
    # The short read calls onMessage() and nothing between; if daphne starts overriding any of these,
    # it expects calls the short path does not make.
    skipped = (
        "processData",
        "onFrameBegin",
        "onFrameData",
        "onFrameEnd",
        "onMessageBegin",
        "onMessageFrameBegin",
        "onMessageFrameData",
        "onMessageFrameEnd",
        "onMessageFrame",
        "onMessageEnd",
        "_onMessageBegin",
        "_onMessageFrameBegin",
        "_onMessageFrameData",
        "_onMessageFrameEnd",
        "_onMessageFrame",
        "_onMessageEnd",
        "_onMessage",
        "sendFrame",
        "sendData",
    )
    for name in skipped:
        assert getattr(DaphneProtocol, name) is getattr(WebSocketServerProtocol, name), name


def test_autobahn_still_has_what_the_short_path_reads_and_logs_through_txaio() -> None:
    connection, _ = open_connection(DaphneProtocol)
    for name in (
        "current_frame",
        "inside_message",
        "data",
        "failedByMe",
        "applyMask",
        "utf8validateIncoming",
        "maxFramePayloadSize",
        "maxMessagePayloadSize",
        "autoPingTimeoutCall",
        "autoPingRestartOnAnyTraffic",
        "send_queue",
        "maskServerFrames",
        "autoFragmentSize",
        "_perMessageCompress",
        "logFrames",
        "logOctets",
        "trackedTimings",
        "_listeners",
    ):
        assert hasattr(connection, name), name
    assert callable(connection._cancelAutoPingTimeoutCall)
    # With debug logging off, txaio binds debug() to its no-op: that is how the short path knows it is off.
    assert connection.log.debug is frames._no_op
    # And autobahn still reads, logs and writes through the methods the app's protocol replaces.
    assert "_dataReceived" in WebSocketServerProtocol.dataReceived.__code__.co_names
    assert "sendFrame" in autobahn_protocol.WebSocketProtocol.sendMessage.__code__.co_names


def test_daphnes_factory_in_the_apps_server_builds_the_apps_protocol() -> None:
    from daphne.ws_protocol import WebSocketFactory

    from notifications.launch import DrainingServer

    server = DrainingServer.__new__(DrainingServer)  # what run() does with the factory, without running
    server.ws_factory = WebSocketFactory(server, server="test")
    assert server.ws_factory.protocol is AppProtocol
    assert WebSocketFactory.protocol is DaphneProtocol  # daphne's own class is left as it was


async def test_a_server_started_by_bin_daphne_relays_through_the_apps_protocol(daphne: Daphne) -> None:
    ws = await open_client(daphne.url)
    await register_confirmed(ws, "frames")
    for text in ("short", "é" * 100, "x" * 5000):
        await send_once(daphne.url, "frames", text)
        assert await receive(ws) == text
    await ws.close()
