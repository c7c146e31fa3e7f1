"""Property-based tests: whatever a client or a caller sends, the rules hold and nothing raises.

Hypothesis generates the input: any text, any JSON shape, frames with any
``recipient_uuid``, ``message``, ``v``, ``since`` and ``token``, HTTP bodies
and headers of any kind. The runs are bounded so that the suite stays fast;
``HYPOTHESIS_PROFILE=long bin/test tests/test_properties.py`` runs each
property on many more examples (see the README, Tests).
"""

from __future__ import annotations

import json
import os
from typing import Any

import hypothesis
import pytest
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from harness.clients import PROBE_PREFIX
from notifications import metrics
from notifications.conf import conf
from notifications.protocol import REGISTER_MESSAGE, Ignored, Register, Relay, parse_frame
from tests.communicators import connect, connect_registered

hypothesis.settings.register_profile("default", max_examples=150, deadline=None)
hypothesis.settings.register_profile("long", max_examples=5000, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

NEIGHBOUR = "neighbour"
KEY = "Zt3vQ9-pLk2mW8xR4nB7cY1sD6fH0gJ5aE"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
ids = st.sampled_from([NEIGHBOUR, "other", "", "x" * 300, "nul\x00id"]) | st.text(max_size=12) | json_values
messages = st.sampled_from([REGISTER_MESSAGE, "error: forged", "hello"]) | st.text(max_size=30) | json_values
versions = st.sampled_from([2, "2", 2.0, True, 1, None, [2]])


@st.composite
def frames(draw: Any) -> str:
    """A frame shaped like the protocol's, with any value in any field (and fields left out)."""
    frame: dict[str, Any] = {}
    if draw(st.integers(0, 9)):  # mostly present
        frame["recipient_uuid"] = draw(ids)
    if draw(st.integers(0, 9)):
        frame["message"] = draw(messages)
    for key, values in (("v", versions), ("since", json_values), ("token", json_values)):
        if draw(st.booleans()):
            frame[key] = draw(values)
    return json.dumps(frame, allow_nan=True)


texts = frames() | st.text(max_size=60) | json_values.map(lambda v: json.dumps(v, allow_nan=True))


# The parser.


@given(texts)
def test_the_parser_never_raises_and_acts_only_on_valid_frames(text: str) -> None:
    action = parse_frame(text)
    assert isinstance(action, Register | Relay | Ignored)
    if isinstance(action, Ignored):
        assert action.reason  # a reason for the log, always
        return
    recipient = action.recipient
    assert isinstance(recipient, str) and 0 < len(recipient) <= conf.MAX_RECIPIENT_LENGTH
    assert "\x00" not in recipient
    recipient.encode("utf-8")  # no lone surrogate
    data = json.loads(text)
    assert data["recipient_uuid"] == recipient
    # v2 exactly when the frame's v is the JSON integer 2 (not 2.0, "2" or true).
    assert action.v2 == (type(data.get("v")) is int and data.get("v") == 2)
    if isinstance(action, Relay):
        assert action.text != REGISTER_MESSAGE and data["message"] != REGISTER_MESSAGE
        assert "\x00" not in action.text
        # A string exactly; anything else as its JSON text (never NaN or Infinity: those are ignored).
        received = action.text if isinstance(data["message"], str) else json.loads(action.text)
        assert received == data["message"]
    else:
        assert data["message"] == REGISTER_MESSAGE


# The consumer.


def expected_for_neighbour(sent: list[str | bytes]) -> list[str]:
    """What the protocol says a connection registered as NEIGHBOUR receives from these frames, in order."""
    received = []
    for frame in sent:
        action = parse_frame(frame) if isinstance(frame, str) else None
        if isinstance(action, Relay) and action.recipient == NEIGHBOUR:
            received.append(action.text)
    return received


@pytest.mark.usefixtures("in_memory_layer")
@hypothesis.settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
# Non-empty: Channels' test communicator cannot send an empty frame (a real client can: the parser test has it).
@given(st.lists((texts | st.binary(max_size=20)).filter(len), max_size=12))
async def test_whatever_a_client_sends_a_neighbour_gets_exactly_what_the_rules_say(
    sent: list[str | bytes],
) -> None:
    channel_layers.backends.clear()  # each example runs on an event loop of its own: a fresh layer for it
    neighbour = await connect_registered(NEIGHBOUR)
    client = await connect()
    try:
        await relay_and_check(neighbour, client, sent)
    finally:
        await client.disconnect()  # raises the consumer's exception, if it had one
        await neighbour.disconnect()


async def relay_and_check(
    neighbour: WebsocketCommunicator, client: WebsocketCommunicator, sent: list[str | bytes]
) -> None:
    for frame in sent:
        if isinstance(frame, str):
            await client.send_to(text_data=frame)
        else:
            await client.send_to(bytes_data=frame)
    # The client's frames are handled in order: once its probe arrives, every frame before it was handled.
    probe = f"{PROBE_PREFIX}end"
    await client.send_to(text_data=json.dumps({"recipient_uuid": NEIGHBOUR, "message": probe}))
    received = []
    while (text := await neighbour.receive_from(timeout=5)) != probe:
        received.append(text)
    # Exactly the valid relays to it, in order: nothing else, in particular no "error:" frame of the server's.
    assert received == expected_for_neighbour(sent)
    # The connection is still open (no close from the server) and the consumer raised nothing.
    await client.send_to(text_data=json.dumps({"recipient_uuid": NEIGHBOUR, "message": probe}))
    assert await neighbour.receive_from(timeout=5) == probe


# The HTTP endpoint.

headers = st.dictionaries(
    st.sampled_from(["Authorization", "Content-Type", "Content-Length", "X-Forwarded-For"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
    | st.sampled_from([f"Bearer {KEY}", f"bearer {KEY}", f"Bearer {KEY} ", "Bearer ", f"Basic {KEY}"]),
)
bodies = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode())
    | st.lists(st.fixed_dictionaries({"recipient_uuid": ids, "message": messages}), max_size=3).map(
        lambda v: json.dumps(v, allow_nan=True).encode()
    )
)


@pytest.fixture
def api_key(settings: Any) -> None:
    """Once per test, not per example: each change of ``settings`` stacks another layer of overrides."""
    settings.NOTIFICATIONS_API_KEYS = [KEY]


@pytest.mark.django_db
@pytest.mark.usefixtures("in_memory_layer", "api_key")
@hypothesis.settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, sent_headers=headers)
def test_the_http_endpoint_answers_every_request_with_a_documented_status_and_json(
    body: bytes, sent_headers: dict[str, str]
) -> None:
    relayed = metrics.counters[metrics.RELAYED]
    content_type = sent_headers.pop("Content-Type", "application/json")
    sent_headers.pop("Content-Length", None)  # the test client sets the real one
    response = Client().post("/api/notify/", body, content_type=content_type, headers=sent_headers)
    assert response.status_code in {200, 400, 401, 413, 503}
    answer = json.loads(response.content)
    scheme, _, presented = sent_headers.get("Authorization", "").partition(" ")
    authorized = scheme.lower() == "bearer" and presented.strip() == KEY
    if response.status_code == 200:
        assert authorized
        assert isinstance(answer["results"], list)
    else:
        assert isinstance(answer["error"], str) and answer["error"]
    if not authorized:
        assert response.status_code == 401
        assert metrics.counters[metrics.RELAYED] == relayed  # nothing sent without the key
