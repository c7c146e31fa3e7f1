"""Property-based tests: whatever a client or a caller sends, the documented rules hold and nothing raises.

Hypothesis generates the input: any text (NUL and lone surrogates included),
any JSON shape, frames with any ``recipient_uuid``, ``message``, ``v``,
``since`` and ``token``, HTTP bodies and header values of any kind. Each
property is checked against an oracle written here from docs/PROTOCOL.md and
the README ("From other services"), not against the code under test, so a
parser that refused valid frames, or a consumer that lost or invented
frames, fails.

Each property runs on 150 examples, so that the file takes seconds.
``HYPOTHESIS_PROFILE=long`` runs each on 5,000 (minutes)::

    HYPOTHESIS_PROFILE=long bin/test tests/test_properties.py
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from unittest import mock

import hypothesis
import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client, override_settings
from hypothesis import example, given
from hypothesis import strategies as st

from harness.clients import PROBE_PREFIX
from notifications.layers import Kept
from notifications.protocol import NO_SINCE, REGISTER_MESSAGE, Ignored, Register, Relay, parse_frame
from notifications.sending.delivery import deliver
from tests.communicators import connect, connect_registered

# Profiles: this file's default keeps each property to seconds; "long" is the thorough run. Each test here
# takes the one HYPOTHESIS_PROFILE names (an unknown name fails here, loudly), without loading it for others.
hypothesis.settings.register_profile("notify-default", deadline=None, max_examples=150)
hypothesis.settings.register_profile("long", deadline=None, max_examples=5000)
PROFILE = hypothesis.settings(
    hypothesis.settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE") or "notify-default"), deadline=None
)
# pytest-timeout's 120 s per test (pyproject.toml) fits the default; a long run gets 0.1 s an example.
pytestmark = pytest.mark.timeout(max(120, PROFILE.max_examples // 10))


MAX_RECIPIENT_LENGTH = 255  # PROTOCOL.md, "Default limits"
NEIGHBOUR = "neighbour"
KEY = "Zt3vQ9-pLk2mW8xR4nB7cY1sD6fH0gJ5aE"  # 34 characters: an API key the checks accept
IN_MEMORY = {"default": {"BACKEND": "notifications.layers.memory.InMemoryLayer"}}


# The oracle: what the documents say a frame or a request does, written independently of the code.

_MISSING = object()


def has_lone_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


def is_valid_id(value: object) -> bool:
    """PROTOCOL.md: a JSON string of 1 to MAX_RECIPIENT_LENGTH code points, without NUL or lone surrogates."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_RECIPIENT_LENGTH
        and "\x00" not in value
        and not has_lone_surrogate(value)
    )


def received_text(message: object) -> str | None:
    """The frame a recipient gets for ``message`` (PROTOCOL.md, "Sending"); None if it cannot become text.

    A string as it is; anything else as its JSON text with ``", "`` and ``": "``
    separators and non-ASCII kept; never NaN or Infinity, NUL or a lone surrogate.
    """
    if isinstance(message, str):
        text = message
    else:
        try:
            text = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(", ", ": "))
        except (ValueError, RecursionError):
            return None
    if "\x00" in text or has_lone_surrogate(text):
        return None
    return text


def is_v2(frame: dict[str, Any]) -> bool:
    """PROTOCOL.md: ``"v"`` is the JSON integer 2; ``"2"``, ``2.0`` or ``true`` leave the frame v1."""
    version = frame.get("v")
    return isinstance(version, int) and not isinstance(version, bool) and version == 2


def expected_action(text: str) -> Register | Relay | None:
    """What a text frame asks for, read from PROTOCOL.md; None: it is ignored."""
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        return None  # plain text, not JSON
    if not isinstance(frame, dict):
        return None
    recipient = frame.get("recipient_uuid", _MISSING)
    if not is_valid_id(recipient) or "message" not in frame:
        return None
    assert isinstance(recipient, str)
    v2 = is_v2(frame)
    if frame["message"] == REGISTER_MESSAGE:  # the JSON string "connected", and nothing else
        since = frame.get("since", NO_SINCE) if v2 else NO_SINCE
        return Register(recipient, v2=v2, since=since, token=frame.get("token"))
    relayed = received_text(frame["message"])
    return None if relayed is None else Relay(recipient, relayed, v2=v2)


def same_json(a: object, b: object) -> bool:
    """Equal as JSON values (NaN equal to NaN: two parses of one text give two NaN objects)."""
    if a is NO_SINCE or b is NO_SINCE:
        return a is b
    return json.dumps(a, allow_nan=True) == json.dumps(b, allow_nan=True)


def bearer_key(authorization: str | None) -> str | None:
    """The key of ``Authorization: Bearer <key>`` (the scheme in any case, blanks around the key)."""
    if authorization is None:
        return None
    scheme, _, key = authorization.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else None


# Strategies.

# Any code point, with the ones that matter here drawn often: NUL, lone surrogates, JSON's syntax.
SPECIAL_CHARS = ["\x00", "\ud800", "\udbff", "\udc00", "\udfff", '"', "\\", "{", "}", "[", "]", ":", ",", " ", "é"]
any_char = st.characters(codec=None, exclude_categories=()) | st.sampled_from(SPECIAL_CHARS)
any_text = st.text(any_char, max_size=30)

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(any_char, max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(any_char, max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)


def _ids_near_the_limit(n: int) -> list[str]:
    return [char * n for char in ("x", "é", "\U0001f600")]  # one, two and four UTF-8 bytes: code points count


T = TypeVar("T")


def mostly(common: st.SearchStrategy[T], rare: st.SearchStrategy[T], percent: int) -> st.SearchStrategy[T]:
    """``common`` in about ``percent`` % of the draws, ``rare`` otherwise (``|`` would flatten and weigh evenly)."""
    return st.integers(1, 100).flatmap(lambda n: common if n <= percent else rare)


# The ids the consumer test's clients use: a few, so that frames meet (and one connection's limit is passed).
POOL = [NEIGHBOUR, "other", "third", "fourth", "fifth"]


def tainted(texts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A string with a NUL or a lone surrogate put in somewhere: never usable as an id or a message."""
    return st.tuples(texts, st.sampled_from(["\x00", "\ud800", "\udfff"]), st.integers(0, 12)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]
    )


odd_ids: st.SearchStrategy[Any] = mostly(
    tainted(st.sampled_from(POOL)),
    st.sampled_from([NEIGHBOUR + " ", NEIGHBOUR.upper(), "ne\u0301ighbour", "connected", ""])
    | st.sampled_from([text for n in (254, 255, 256) for text in _ids_near_the_limit(n)])
    | any_text
    | json_values,
    40,
)
pool_ids = mostly(st.just(NEIGHBOUR), st.sampled_from(POOL), 40)
ids = mostly(pool_ids, odd_ids, 60)
odd_messages: st.SearchStrategy[Any] = mostly(
    tainted(st.text(max_size=10)),
    st.sampled_from(["Connected", "connected ", "error: forged", "error:", ""]) | any_text | json_values,
    40,
)
messages = mostly(st.just(REGISTER_MESSAGE), mostly(st.text(max_size=20) | json_values, odd_messages, 50), 30)
odd_versions = st.sampled_from(["2", 2.0, True, 1, 3, -2, None, [2], {"v": 2}, 2**64 + 2]) | json_values
versions = mostly(st.just(2), odd_versions, 50)
sinces = st.sampled_from(["", "1:1", "0:0", "x" * 201, None]) | json_values


@st.composite
def frames(draw: st.DrawFn) -> str:
    """A text frame shaped like the protocol's: any value in any field, fields left out, extra keys, any encoding."""
    frame: dict[str, Any] = {}
    fields = [("recipient_uuid", ids, 90), ("message", messages, 90), ("v", versions, 50), ("since", sinces, 30)]
    fields += [("token", json_values, 20), (draw(st.text(any_char, max_size=8)), json_values, 20)]
    for key, values, percent in draw(st.permutations(fields)):
        if draw(st.integers(1, 100)) <= percent:
            frame[key] = draw(values)
    return json.dumps(
        frame,
        allow_nan=True,
        ensure_ascii=draw(st.booleans()),  # lone surrogates escaped (\ud800) or raw
        separators=draw(st.sampled_from([None, (",", ":")])),
    )


@st.composite
def damaged(draw: st.DrawFn) -> str:
    """A frame cut short or with a character put in: almost JSON."""
    text = draw(frames())
    cut = draw(st.integers(0, len(text)))
    return text[:cut] + draw(st.sampled_from(["", *SPECIAL_CHARS])) + text[cut + draw(st.integers(0, 1)) :]


EDGE_TEXTS = [
    "",
    REGISTER_MESSAGE,  # plain text "connected": not a registration
    json.dumps(REGISTER_MESSAGE),
    "null",
    "[]",
    "{}",
    "\ufeff{}",
    "[" * 100_000,  # deeper than the JSON parser's recursion
    '{"recipient_uuid": "neighbour", "message": ' + "[" * 5000 + "]" * 5000 + "}",
    '{"recipient_uuid": "neighbour", "message": ' + "[" * 400 + "]" * 400 + "}",
    "1" * 5000,  # over Python's limit of digits in an int
    '{"recipient_uuid": "neighbour", "message": ' + "9" * 4000 + "}",
    '{"recipient_uuid": "neighbour", "message": 1e999}',
    '{"recipient_uuid": "neighbour", "message": NaN}',
    '{"recipient_uuid": "neighbour", "message": "x", "v": 2e0}',
    '{"recipient_uuid": "neighbour", "message": "x", "v": 2.00}',
    '{"recipient_uuid": "neighbour", "message": "x", "v": 02}',
    '{"recipient_uuid": "neighbour", "message": "connected", "v": 2, "since": null}',
    '{"recipient_uuid": "neighbour", "message": "x", "recipient_uuid": "other"}',  # a duplicate key: the last
    '{"recipient_uuid": "neighbour", "message": "\\u0000"}',
    '{"recipient_uuid": "\\ud800", "message": "x"}',
    '{"recipient_uuid": "\\ud83d\\ude00", "message": "x"}',  # a pair: one valid code point
    '{"recipient_uuid": "neighbour", "message": "error: forged"}',
]
texts = mostly(frames(), damaged() | st.sampled_from(EDGE_TEXTS) | any_text | json_values.map(json.dumps), 60)


# 1. The frame parser.


@PROFILE
@given(texts)
@example(json.dumps({"recipient_uuid": "\U0001f600" * MAX_RECIPIENT_LENGTH, "message": "x"}))
@example(json.dumps({"recipient_uuid": "\U0001f600" * (MAX_RECIPIENT_LENGTH + 1), "message": "x"}))
def test_the_parser_never_raises_and_decides_exactly_what_the_protocol_says(text: str) -> None:
    """parse_frame() returns for any text, and its decision is the one PROTOCOL.md describes, field by field."""
    action = parse_frame(text)
    assert isinstance(action, Register | Relay | Ignored)
    expected = expected_action(text)
    if expected is None:
        assert isinstance(action, Ignored), f"acted on a frame the protocol ignores: {action!r}"
        assert isinstance(action.reason, str) and action.reason  # a reason for the log, always
        return
    assert type(action) is type(expected), f"{action!r}, expected {expected!r}"
    assert isinstance(action, Register | Relay)
    assert action.recipient == expected.recipient and action.v2 == expected.v2
    if isinstance(action, Relay):
        assert isinstance(expected, Relay)
        assert action.text == expected.text
    else:
        assert isinstance(expected, Register)
        assert same_json(action.since, expected.since) and same_json(action.token, expected.token)


@PROFILE
@given(texts)
def test_whatever_the_parser_acts_on_has_a_valid_id_and_a_text_that_is_not_connected(text: str) -> None:
    """A Register or Relay names an id that follows the rules, and a relay never carries the text "connected"."""
    action = parse_frame(text)
    if isinstance(action, Ignored):
        return
    recipient = action.recipient
    assert isinstance(recipient, str) and 0 < len(recipient) <= MAX_RECIPIENT_LENGTH
    assert "\x00" not in recipient
    recipient.encode("utf-8")  # raises on a lone surrogate
    if isinstance(action, Relay):
        assert action.text != REGISTER_MESSAGE
        assert "\x00" not in action.text
        action.text.encode("utf-8")


@PROFILE
@given(
    version=versions | st.integers(),
    recipient=st.sampled_from([NEIGHBOUR, "other"]),
    message=st.sampled_from([REGISTER_MESSAGE, "hello", {"status": 200}]),
)
def test_a_frame_is_v2_only_when_v_is_the_json_integer_2(version: Any, recipient: str, message: object) -> None:
    """``"v": 2`` opts in; ``true``, ``2.0``, ``"2"`` and every other value leave the frame v1."""
    action = parse_frame(json.dumps({"recipient_uuid": recipient, "message": message, "v": version}))
    assert isinstance(action, Register | Relay)
    assert action.v2 == (type(version) is int and version == 2)


# 2. The consumer: a v1 neighbour beside a client that sends anything.


@dataclass
class Expected:
    """What the protocol says the fuzzing client's frames cause."""

    neighbour: list[str]  # the neighbour's frames, in order
    # The client's v2 replies in order: ("sent", id, outcome), ("refused", id, code), or
    # ("registered", id, "null") without "since" and ("registered", id, "true or false") with one.
    replies: list[tuple[str, str, str]]
    texts_to_client: Counter[str]  # what may reach the client (its ids' notifications), each at most once
    relayed_to: dict[str, set[str]]  # the texts relayed to each id


def expected_from(sent: list[str | bytes], id_limit: int) -> Expected:
    """Simulate PROTOCOL.md over the frames: the neighbour holds NEIGHBOUR (v1), the client starts with no id."""
    held: set[str] = set()  # the ids the client holds, at most ``id_limit``
    expected = Expected([], [], Counter(), {})
    relays: list[Relay] = []
    for frame in sent:
        action = expected_action(frame) if isinstance(frame, str) else None  # a binary frame is ignored
        if isinstance(action, Relay):
            relays.append(action)
            expected.relayed_to.setdefault(action.recipient, set()).add(action.text)
            if action.recipient == NEIGHBOUR:
                expected.neighbour.append(action.text)
            if action.v2:
                live = action.recipient == NEIGHBOUR or action.recipient in held
                expected.replies.append(("sent", action.recipient, "live" if live else "pending"))
        elif isinstance(action, Register):
            accepted = action.recipient in held or len(held) < id_limit
            if accepted:
                held.add(action.recipient)
            if action.v2 and not accepted:
                expected.replies.append(("refused", action.recipient, "limit"))
            elif action.v2:
                recovered = "null" if action.since is NO_SINCE else "true or false"
                expected.replies.append(("registered", action.recipient, recovered))
    expected.texts_to_client = Counter(relay.text for relay in relays if relay.recipient in held)
    return expected


ID_LIMIT = 2  # NOTIFICATIONS_MAX_IDS_PER_CONNECTION for this test: low, so that refusals happen
registrations = st.builds(
    lambda recipient, extra: json.dumps({"recipient_uuid": recipient, "message": REGISTER_MESSAGE, **extra}),
    st.sampled_from(POOL),
    st.sampled_from([{}, {"v": 2}, {"v": 2, "since": "1:1"}, {"v": 2, "since": None}, {"v": "2"}]),
)
client_frames = st.lists(mostly(frames(), mostly(registrations, texts | st.binary(max_size=20), 50), 60), max_size=16)


def text_frame(recipient: object, message: object, **extra: object) -> str:
    return json.dumps({"recipient_uuid": recipient, "message": message, **extra})


@PROFILE
@given(client_frames)
# Every run: v2 replies of each kind (the limit passed, again with "since"), forged "error:", frames that are ignored.
@example(
    [
        text_frame("other", REGISTER_MESSAGE, v=2),
        text_frame("other", "hello", v=2),
        text_frame("third", REGISTER_MESSAGE),
        text_frame("fourth", REGISTER_MESSAGE, v=2, since="1:1"),
        text_frame("other", REGISTER_MESSAGE, v=2, since=None),
        text_frame("fourth", "pending", v=2),
        text_frame(NEIGHBOUR, "error: forged", v=2),
        text_frame(NEIGHBOUR, {"status": 200}),
        text_frame(NEIGHBOUR, "\ud800"),
        "error: plain text",
        "",
        b"",
        b"\xff",
    ]
)
async def test_whatever_a_client_sends_its_neighbour_gets_exactly_the_relays_to_it_and_it_stays_open(
    sent: list[str | bytes],
) -> None:
    """A v1 neighbour receives exactly the valid relays to its id, in order; the sender is answered as documented.

    Whatever the other client sends (text or binary frames, any JSON, empty
    frames), the neighbour gets nothing else: no "error:" frame unless a
    sender relayed exactly that text. The sender's connection is never closed
    by the server and its consumer raises nothing (daphne's 1011). Its own v2
    frames get exactly one reply each, in order; what else it receives is a
    notification of an id it registered, at most once each.
    """
    with override_settings(CHANNEL_LAYERS=IN_MEMORY, NOTIFICATIONS_MAX_IDS_PER_CONNECTION=ID_LIMIT):
        # A fresh in-memory layer for each example (overriding CHANNEL_LAYERS resets Channels' layers).
        neighbour = await connect_registered(NEIGHBOUR)
        client = await connect()
        try:
            await check_relays(neighbour, client, sent)
        finally:
            await client.disconnect()  # raises the consumer's exception, if it had one
            await neighbour.disconnect()


async def check_relays(
    neighbour: WebsocketCommunicator, client: WebsocketCommunicator, sent: list[str | bytes]
) -> None:
    # Last, a relay to the neighbour that no strategy makes: a client's frames are handled in order,
    # so once it reaches the neighbour, every frame before it was handled.
    probe = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    sent = [*sent, json.dumps({"recipient_uuid": NEIGHBOUR, "message": probe})]
    expected = expected_from(sent, ID_LIMIT)
    for data in sent:
        # As daphne hands frames over: one key, "text" or "bytes" (empty ones too, which send_to() refuses).
        message: dict[str, str | bytes] = {"type": "websocket.receive"}
        message["text" if isinstance(data, str) else "bytes"] = data
        await client.send_input(message)
    received = []
    while probe not in received:
        received.append(await receive_while_open(neighbour, client))
    assert received == expected.neighbour, f"the neighbour got {received!r}, the rules say {expected.neighbour!r}"
    forged = [text for text in received if text.startswith("error:")]
    assert all(text in expected.neighbour for text in forged)  # an "error:" frame only as a sender's own text
    assert await neighbour.receive_nothing(timeout=0.001)

    # What the client was sent: its replies were sent as its frames were handled, so all of them are here.
    outputs = []
    while not client.output_queue.empty():
        outputs.append(client.output_queue.get_nowait())
    assert all(o["type"] == "websocket.send" for o in outputs), f"the server closed the client: {outputs!r}"
    check_what_the_client_got([o.get("text") for o in outputs], expected)
    assert not client.future.done()  # the consumer is still running: it raised nothing


async def receive_while_open(neighbour: WebsocketCommunicator, client: WebsocketCommunicator) -> str:
    """The neighbour's next frame; fails at once if the client's consumer stopped first (it raised)."""
    receiving = asyncio.ensure_future(neighbour.receive_from(timeout=5))
    await asyncio.wait([receiving, client.future], return_when=asyncio.FIRST_COMPLETED)
    if not receiving.done():
        receiving.cancel()
        client.future.result()  # raises the consumer's exception
        raise AssertionError("the client's consumer stopped")
    text = receiving.result()
    assert isinstance(text, str), "the server sent the neighbour a binary frame"
    return text


def check_what_the_client_got(frames_out: list[str | None], expected: Expected) -> None:
    replies: list[tuple[str, str, str]] = []
    notifications: Counter[str] = Counter()
    answered: set[str] = set()  # ids whose v2 registration was answered "registered" so far
    for text in frames_out:
        assert isinstance(text, str), "the server sent a binary frame"
        if expected.texts_to_client[text] > notifications[text]:  # a notification as raw text (v1)
            notifications[text] += 1
            continue
        try:
            frame = json.loads(text)  # anything else is one of v2's JSON frames
        except ValueError:
            raise AssertionError(f"neither a notification of its ids nor a v2 frame: {text!r}") from None
        assert isinstance(frame, dict) and isinstance(frame.get("recipient_uuid"), str), text
        recipient = frame["recipient_uuid"]
        if frame["type"] == "message":
            assert recipient in answered, "a v2 notification before its registration's answer"
            assert set(frame) <= {"type", "recipient_uuid", "message", "position", "replayed"}
            assert isinstance(frame["position"], str) and frame.get("replayed", True) is True
            assert frame["message"] in expected.relayed_to.get(recipient, set()), "not a notification of its id"
            notifications[frame["message"]] += 1
        elif frame["type"] == "sent":
            assert set(frame) == {"type", "recipient_uuid", "outcome", "code"} and frame["code"] is None
            replies.append(("sent", recipient, frame["outcome"]))
        elif frame["type"] == "registered":
            assert set(frame) == {"type", "recipient_uuid", "position", "recovered"}
            assert isinstance(frame["position"], str)  # history is on: never null
            # recovered: null exactly when the registration sent no "since"; else true or false.
            recovered = frame["recovered"]
            assert recovered is None or isinstance(recovered, bool)
            answered.add(recipient)
            replies.append(("registered", recipient, "null" if recovered is None else "true or false"))
        else:
            assert frame["type"] == "refused", f"a frame the protocol does not have: {text!r}"
            assert set(frame) == {"type", "recipient_uuid", "code", "reason"} and frame["reason"]
            replies.append(("refused", recipient, frame["code"]))
    assert replies == expected.replies
    # Each notification of the client's ids at most once, and no other text (an "error:" frame included).
    assert not notifications - expected.texts_to_client, f"not sent to the client's ids: {notifications!r}"


# 3. The HTTP endpoint POST /api/notify/.

MAX_BODY = 400  # NOTIFICATIONS_API_MAX_BODY for this test: low, so that 413 happens
MAX_BATCH = 3  # NOTIFICATIONS_API_MAX_BATCH for this test
RESULT_KEYS = {"recipient_uuid", "live_connections", "outcome", "position", "pending_until"}


def expected_answer(method: str, body: bytes, authorization: str | None) -> tuple[int, list[tuple[str, str]]]:
    """The README's table: the status, and the (id, text) pairs that a 200 sends, in order."""
    if method != "POST":
        return 405, []
    if bearer_key(authorization) != KEY:
        return 401, []
    if len(body) > MAX_BODY:
        return 413, []
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return 400, []
    items = payload if isinstance(payload, list) else [payload]
    if not 1 <= len(items) <= MAX_BATCH:
        return 400, []
    pairs = []
    for item in items:
        if not isinstance(item, dict) or "recipient_uuid" not in item or "message" not in item:
            return 400, []
        text = received_text(item["message"])
        if not is_valid_id(item["recipient_uuid"]) or text is None:
            return 400, []  # nothing of the request is sent
        pairs.append((item["recipient_uuid"], text))
    return 200, pairs


# Header values as a server hands them to Django: any Latin-1 character but CR, LF and NUL.
header_text = st.text(st.characters(max_codepoint=255, exclude_characters="\r\n\x00"), max_size=60)
right_keys = st.sampled_from([f"Bearer {KEY}", f"bearer {KEY}", f"BEARER  {KEY} ", f"Bearer {KEY}\t"])
wrong_keys = (
    st.none()
    | st.sampled_from(
        [
            f"Bearer\t{KEY}",  # a tab is no separator after the scheme
            f"Bearer {KEY[:-1]}",
            f"Bearer {KEY}x",
            f"Bearer {KEY.lower()}",
            f"Basic {KEY}",
            f"Bearer{KEY}",
            KEY,
            "Bearer",
            "Bearer ",
            "",
        ]
    )
    | header_text
    | header_text.map(lambda text: f"Bearer {text}")
    | header_text.map(lambda text: f"{text} {KEY}")
)
authorizations = mostly(right_keys, wrong_keys, 50)
content_types = (
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-16",
            "application/json; charset=bogus",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
        ]
    )
    | header_text
)
usable_ids = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)
api_ids = mostly(usable_ids, odd_ids, 60)
api_messages = mostly(st.text(max_size=20) | json_values, odd_messages, 70)
items = mostly(
    st.fixed_dictionaries({"recipient_uuid": api_ids, "message": api_messages}),
    st.dictionaries(st.sampled_from(["recipient_uuid", "message", "v"]), json_values),
    80,
)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    """A JSON document (one notification, a list of them, or anything) in one of the encodings JSON allows."""
    value = draw(items | st.lists(items, max_size=MAX_BATCH + 1) | json_values)
    text = json.dumps(value, allow_nan=True, ensure_ascii=draw(st.booleans()))
    encoding = draw(st.sampled_from(["utf-8", "utf-16", "utf-16-le", "utf-32"]))
    return text.encode(encoding, "surrogatepass")  # a lone surrogate stays one (the parser reads it so)


bodies = mostly(json_bodies(), st.binary(max_size=MAX_BODY + 100), 80)
methods = mostly(st.just("POST"), st.sampled_from(["GET", "PUT", "PATCH", "DELETE", "OPTIONS"]), 80)


@contextmanager
def recording_deliveries() -> Iterator[list[tuple[str, str]]]:
    """Every notification the sending API hands to the channel layer (its one way out here), as (id, text)."""
    handed: list[tuple[str, str]] = []

    async def recorded(recipient: str, text: str) -> Kept | None:
        handed.append((recipient, text))
        return await deliver(recipient, text)

    with mock.patch("notifications.sending.deliver", recorded):
        yield handed


def notification_body(*recipients: str, size: int | None = None) -> bytes:
    """A JSON list of one notification per id, padded with blanks to ``size`` bytes."""
    body = json.dumps([{"recipient_uuid": recipient, "message": "done"} for recipient in recipients]).encode()
    return body if size is None else body.ljust(size)


@pytest.mark.django_db
@PROFILE
@given(method=methods, body=bodies, authorization=authorizations, content_type=content_types)
# The edges, every run: the batch limit, the body limit, a bad id after a good one, a lone surrogate, a tab.
@example("POST", notification_body(*POOL[:MAX_BATCH]), f"Bearer {KEY}", "application/json")
@example("POST", notification_body(*POOL[: MAX_BATCH + 1]), f"Bearer {KEY}", "application/json")
@example("POST", notification_body("a", size=MAX_BODY), f"Bearer {KEY}", "application/json")
@example("POST", notification_body("a", size=MAX_BODY + 1), f"Bearer {KEY}", "application/json")
@example("POST", notification_body("a", "x" * 256), f"Bearer {KEY}", "application/json")
@example("POST", b'{"recipient_uuid": "\\ud800", "message": "done"}', f"Bearer {KEY}", "application/json")
@example("POST", b'{"recipient_uuid": "a", "message": "\\u0000"}', f"Bearer {KEY}", "application/json")
@example("POST", notification_body("a"), f"Bearer\t{KEY}", "application/json")
@example("GET", notification_body("a"), f"Bearer {KEY}", "application/json")
def test_the_http_endpoint_answers_every_request_as_documented_and_sends_nothing_without_the_key(
    method: str, body: bytes, authorization: str | None, content_type: str
) -> None:
    """Any body, Authorization and Content-Type: the README's status (never 500), JSON with its keys.

    Only a request with the right key and a valid body sends anything, and
    then exactly its notifications in order; a 400 sends nothing of the request.
    """
    headers = {} if authorization is None else {"Authorization": authorization}
    with (
        override_settings(
            CHANNEL_LAYERS=IN_MEMORY,
            NOTIFICATIONS_API_KEYS=[KEY],
            NOTIFICATIONS_API_MAX_BODY=MAX_BODY,
            NOTIFICATIONS_API_MAX_BATCH=MAX_BATCH,
        ),
        recording_deliveries() as handed,
    ):
        # generic(): the body goes as it is (post() would re-encode it for a charset in the Content-Type).
        response = Client().generic(method, "/api/notify/", body, content_type=content_type, headers=headers)
    status, pairs = expected_answer(method, body, authorization)
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    answer = json.loads(response.content)
    assert handed == pairs  # nothing without the key, nothing of a refused request; all of a valid one, in order
    if status == 200:
        assert set(answer) == {"results"} and len(answer["results"]) == len(pairs)
        for result, (recipient, _) in zip(answer["results"], pairs, strict=True):
            assert set(result) == RESULT_KEYS and result["recipient_uuid"] == recipient
            # Nobody is registered: each one waits for its id's next registration.
            assert result["outcome"] == "pending" and isinstance(result["pending_until"], str)
            assert isinstance(result["position"], str) and result["live_connections"] is None  # registry off here
        return
    assert set(answer) == {"error"}
    assert isinstance(answer["error"], str) and answer["error"] and "\n" not in answer["error"]  # one line
    if status == 401:
        assert response["WWW-Authenticate"] == "Bearer"
    if status == 405:
        assert response["Allow"] == "POST"


@pytest.mark.django_db
@PROFILE
@given(method=methods, body=bodies, authorization=authorizations)
def test_without_api_keys_the_http_endpoint_is_off(method: str, body: bytes, authorization: str | None) -> None:
    """With no key configured every request is answered 404 and sends nothing, whatever it carries."""
    headers = {} if authorization is None else {"Authorization": authorization}
    with override_settings(CHANNEL_LAYERS=IN_MEMORY, NOTIFICATIONS_API_KEYS=[]), recording_deliveries() as handed:
        response = Client().generic(method, "/api/notify/", body, content_type="application/json", headers=headers)
    assert response.status_code == 404
    assert handed == []
