"""The consumer, driven through the project's ASGI application with WebsocketCommunicator."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from harness.clients import frame, is_probe
from harness.servers import wait_until
from notifications import consumers, metrics
from notifications.layers import Kept
from notifications.layers.memory import InMemoryLayer
from notifications.protocol import group_name
from tests.asgi import application
from tests.communicators import connect, connect_registered, connected, register, send

pytestmark = pytest.mark.usefixtures("in_memory_layer")


@pytest.fixture
async def recipient() -> AsyncIterator[WebsocketCommunicator]:
    async with connected("receiver-uuid") as communicator:
        yield communicator


@pytest.fixture
async def sender() -> AsyncIterator[WebsocketCommunicator]:
    async with connected() as communicator:
        yield communicator


async def test_the_greeting_comes_first_on_both_paths() -> None:
    for path in ("/", "/ws/"):
        communicator = await connect(path)
        assert await communicator.receive_nothing()
        await communicator.disconnect()


async def test_registration_answers_nothing(sender: WebsocketCommunicator) -> None:
    await send(sender, "test-uuid", "connected")
    assert await sender.receive_nothing()


async def test_a_notification_reaches_the_registered_connection_as_raw_text(
    recipient: WebsocketCommunicator, sender: WebsocketCommunicator
) -> None:
    await send(sender, "receiver-uuid", '{"status": 200, "url": "https://x/y.mp4"}')
    assert await recipient.receive_from() == '{"status": 200, "url": "https://x/y.mp4"}'
    assert await sender.receive_nothing()


async def test_a_message_that_is_not_a_string_arrives_as_its_json_text(
    recipient: WebsocketCommunicator, sender: WebsocketCommunicator
) -> None:
    await send(sender, "receiver-uuid", {"status": 200})
    assert await recipient.receive_from() == '{"status": 200}'


async def test_every_connection_registered_under_an_id_receives(sender: WebsocketCommunicator) -> None:
    tabs = [await connect() for _ in range(3)]
    for tab in tabs:
        await register(tab, "two-tabs")
        # Earlier tabs also saw this tab's probe.
    for i, tab in enumerate(tabs):
        for _ in range(len(tabs) - i - 1):
            assert is_probe(await tab.receive_from())
    await send(sender, "two-tabs", "image2video")
    for tab in tabs:
        assert await tab.receive_from() == "image2video"
        await tab.disconnect()


async def test_one_connection_may_register_several_ids_and_leaves_them_all(sender: WebsocketCommunicator) -> None:
    multi = await connect()
    await register(multi, "first")
    await register(multi, "second")
    await send(sender, "first", "one")
    await send(sender, "second", "two")
    assert [await multi.receive_from(), await multi.receive_from()] == ["one", "two"]
    await multi.disconnect()
    groups = get_channel_layer().groups
    assert group_name("first") not in groups
    assert group_name("second") not in groups

    later = await connect()
    await register(later, "watcher")
    await send(sender, "first", "after close")
    await send(sender, "watcher", "still here")
    assert await later.receive_from() == "still here"
    await later.disconnect()


async def test_a_registration_survives_the_sender_going_away(recipient: WebsocketCommunicator) -> None:
    short_lived = await connect()
    await send(short_lived, "receiver-uuid", "done")
    await short_lived.disconnect()
    assert await recipient.receive_from() == "done"


async def test_ids_are_exact_strings(sender: WebsocketCommunicator) -> None:
    composed = await connect()
    await register(composed, "caf\u00e9")
    await send(sender, "cafe\u0301", "wrong one")
    await send(sender, "caf\u00e9", "right one")
    assert await composed.receive_from() == "right one"
    await composed.disconnect()


async def test_a_message_to_nobody_reaches_nobody(
    recipient: WebsocketCommunicator, sender: WebsocketCommunicator
) -> None:
    await send(sender, "nobody-has-this-id", "lost in space")
    assert await recipient.receive_nothing()
    assert await sender.receive_nothing()


BAD_FRAMES = {
    "plain text": "hello",
    "plain connected": "connected",
    "invalid JSON": '{"recipient_uuid": "receiver-uuid", "message": ',
    "a JSON array": '["receiver-uuid", "hi"]',
    "a JSON string": '"receiver-uuid"',
    "no recipient_uuid": '{"message": "hi"}',
    "an empty recipient_uuid": '{"recipient_uuid": "", "message": "hi"}',
    "a numeric recipient_uuid": '{"recipient_uuid": 7, "message": "hi"}',
    "an id over 255 characters": frame("r" * 256, "hi"),
    "no message": '{"recipient_uuid": "receiver-uuid"}',
    "a lone surrogate in the message": '{"recipient_uuid": "receiver-uuid", "message": "\\ud800"}',
    "a lone surrogate in the id": '{"recipient_uuid": "\\ud800", "message": "connected"}',
    "a NUL in the message": '{"recipient_uuid": "receiver-uuid", "message": "a\\u0000b"}',
    "a NUL in the id": '{"recipient_uuid": "receiver\\u0000", "message": "connected"}',
    "deep nesting": "[" * 50_000,
}


@pytest.mark.parametrize("text", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
async def test_bad_input_is_logged_and_disturbs_nobody(
    text: str, recipient: WebsocketCommunicator, sender: WebsocketCommunicator, caplog: pytest.LogCaptureFixture
) -> None:
    rejected_before = metrics.counters[metrics.REJECTED_FRAMES]
    with caplog.at_level(logging.WARNING, logger="notifications"):
        await sender.send_to(text_data=text)
        assert await recipient.receive_nothing()
        assert await sender.receive_nothing()
    assert metrics.counters[metrics.REJECTED_FRAMES] == rejected_before + 1
    assert any("ignored" in record.getMessage() for record in caplog.records)
    assert not any(record.exc_info for record in caplog.records)
    # Both connections are still open and working.
    await send(sender, "receiver-uuid", "still works")
    assert await recipient.receive_from() == "still works"


async def test_a_binary_frame_is_ignored(recipient: WebsocketCommunicator, sender: WebsocketCommunicator) -> None:
    await sender.send_to(bytes_data=b'{"recipient_uuid": "receiver-uuid", "message": "hi"}')
    assert await recipient.receive_nothing()
    assert await sender.receive_nothing()
    await send(sender, "receiver-uuid", "after binary")
    assert await recipient.receive_from() == "after binary"


async def test_ids_beyond_the_per_connection_limit_are_refused(
    settings: pytest.FixtureRequest, sender: WebsocketCommunicator, caplog: pytest.LogCaptureFixture
) -> None:
    settings.NOTIFICATIONS_MAX_IDS_PER_CONNECTION = 2
    greedy = await connect()
    await register(greedy, "one")
    await register(greedy, "two")
    with caplog.at_level(logging.WARNING, logger="notifications"):
        await send(greedy, "three", "connected")
        await send(sender, "three", "not for you")
        assert await greedy.receive_nothing()
    assert "already 2 ids registered" in caplog.text
    await greedy.disconnect()


async def test_nothing_the_server_sends_starts_with_error(
    recipient: WebsocketCommunicator, sender: WebsocketCommunicator
) -> None:
    for text in BAD_FRAMES.values():
        await sender.send_to(text_data=text)
    assert await sender.receive_nothing()
    assert await recipient.receive_nothing()


async def test_connections_are_counted_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="notifications"):
        communicator = await connect()
        await communicator.disconnect()
    assert "Connections total:" in caplog.text


class TestOrigins:
    async def test_a_missing_origin_is_accepted_even_with_an_allow_list(self, settings: pytest.FixtureRequest) -> None:
        settings.NOTIFICATIONS_ALLOWED_ORIGINS = ["https://app.example.com"]
        communicator = await connect()
        await communicator.disconnect()

    async def test_an_allowed_origin_is_accepted(self, settings: pytest.FixtureRequest) -> None:
        settings.NOTIFICATIONS_ALLOWED_ORIGINS = ["https://app.example.com"]
        communicator = await connect(headers=[(b"origin", b"https://app.example.com")])
        await communicator.disconnect()

    @pytest.mark.parametrize("origin", [b"https://evil.example.net", b"null", b"http://app.example.com"])
    async def test_other_origins_are_refused(self, settings: pytest.FixtureRequest, origin: bytes) -> None:
        settings.NOTIFICATIONS_ALLOWED_ORIGINS = ["https://app.example.com"]
        communicator = WebsocketCommunicator(application, "/", headers=[(b"origin", origin)])
        connected, _ = await communicator.connect()
        assert not connected

    async def test_null_is_accepted_when_listed(self, settings: pytest.FixtureRequest) -> None:
        settings.NOTIFICATIONS_ALLOWED_ORIGINS = ["null"]
        communicator = await connect(headers=[(b"origin", b"null")])
        await communicator.disconnect()

    async def test_by_default_any_origin_is_accepted(self) -> None:
        for origin in (b"https://anything.example", b"null"):
            communicator = await connect(headers=[(b"origin", origin)])
            await communicator.disconnect()


async def test_a_notification_racing_its_connections_close_reaches_it_or_the_next_registrant(
    in_memory_layer: None,
) -> None:
    # A reload: the notification lands in the connection's queue as it closes. Either the
    # connection sent it before it left, or the id's next registrant receives it: once.
    layer = get_channel_layer()
    outcomes = []
    for n in range(40):
        recipient = f"reload-{n}"
        old = await connect_registered(recipient)
        event = {"type": "notify.message", "text": "done", "recipient": recipient}
        if n % 2:  # the notification first, then the close...
            await layer.send_kept(group_name(recipient), event)
            await old.send_input({"type": "websocket.disconnect", "code": 1001})
        else:  # ...or the close first: the notification lands in the queue of a connection that is leaving
            await old.send_input({"type": "websocket.disconnect", "code": 1001})
            await layer.send_kept(group_name(recipient), event)
        await old.wait(timeout=5)
        sent_to_old = []
        while not await old.receive_nothing(0.01):
            sent_to_old.append((await old.receive_output())["text"])
        new = await connect()
        await send(new, recipient, "connected")
        sent_to_new = [await new.receive_from()] if not await new.receive_nothing(0.3) else []
        await new.disconnect()
        outcomes.append((sent_to_old.count("done"), sent_to_new.count("done")))
    assert all(old + new == 1 for old, new in outcomes), outcomes


async def test_resumes_are_counted_by_whether_they_recovered_and_refused_extra_ids_by_the_limit(
    settings: pytest.FixtureRequest,
) -> None:
    settings.NOTIFICATIONS_MAX_IDS_PER_CONNECTION = 1
    before = metrics.snapshot()
    async with connected() as client:
        await client.send_json_to({"recipient_uuid": "resumer", "message": "connected", "v": 2, "since": "x:1-1"})
        first = await client.receive_json_from()
        assert (first["type"], first["recovered"]) == ("registered", False)
        newest = first["position"]
        # Again on the same connection, from where it is: nothing was missed.
        await client.send_json_to({"recipient_uuid": "resumer", "message": "connected", "v": 2, "since": newest})
        assert (await client.receive_json_from())["recovered"] is True
        await client.send_json_to({"recipient_uuid": "second-id", "message": "connected", "v": 2})
        assert (await client.receive_json_from())["code"] == "limit"
    after = metrics.snapshot()

    def grew(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    assert (grew(metrics.RESUMES_NOT_RECOVERED), grew(metrics.RESUMES_RECOVERED)) == (1, 1)
    assert grew(metrics.IDS_LIMITED) == 1


async def test_a_connection_is_one_task_however_many_sources_it_reads() -> None:
    # The consumer waits on its client and its channel in its own task: no reader task per source.
    before = len(asyncio.all_tasks())
    connections = [await connect_registered(f"one-task-{n}") for n in range(5)]
    try:
        assert len(asyncio.all_tasks()) - before == len(connections)  # each communicator's application task
        async with connected() as sender:
            await send(sender, "one-task-3", "still relayed")
            assert await connections[3].receive_from() == "still relayed"
    finally:
        for connection in connections:
            await connection.disconnect()


async def test_on_channels_own_layer_each_source_has_its_reader_and_relaying_works(settings: Any) -> None:
    # A layer that is not the app's (the system check warns about it): the consumer reads it through receive().
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    async with connected("on-channels-layer") as recipient, connected() as sender:
        await send(sender, "on-channels-layer", "relayed")
        assert await recipient.receive_from() == "relayed"
        await send(sender, "on-channels-layer", "and again")
        assert await recipient.receive_from() == "and again"


async def test_a_v1_connection_that_caught_up_gets_no_late_copy_of_what_it_replayed(in_memory_layer: None) -> None:
    # After a gap (the Redis layer's subscription was dropped and made again), the connection catches up
    # from the history, and the layer also hands over the id's pending notifications, a moment later:
    # maybe after a newer live one. The v1 client receives each notification once, in the order sent.
    layer = get_channel_layer()
    recipient = "caught-up-v1"
    group = group_name(recipient)

    def event(text: str) -> dict[str, str]:
        return {"type": "notify.message", "text": text, "recipient": recipient}

    async with connected(recipient) as client:
        (channel,) = layer.groups[group]
        await layer.group_discard(group, channel)  # the subscription is lost: what is sent now is pending
        for text in ("missed 1", "missed 2"):
            assert (await layer.send_kept(group, event(text))).pending
        await layer.group_add(group, channel)  # subscribed again: the layer reports the gap
        await layer.send(channel, {"type": "notify.gap", "groups": [group]})
        assert [await client.receive_from(), await client.receive_from()] == ["missed 1", "missed 2"]
        assert (await layer.send_kept(group, event("newer"))).live
        assert await client.receive_from() == "newer"
        handed_over = await layer.take_pending(group)  # what the layer's hand-over queues for its members
        assert [kept.text for kept in handed_over] == ["missed 1", "missed 2"]
        for kept in handed_over:
            await layer.send(channel, {**event(kept.text), "position": kept.position})
        await layer.send_kept(group, event("last"))
        assert await client.receive_from() == "last"
        assert await client.receive_nothing(0.1)


class AnswersLater(InMemoryLayer):
    """Takes each notification at once and answers only when the test says so, as Redis does a moment later."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken: list[tuple[str, asyncio.Future[Kept]]] = []

    def send_kept_soon(self, group: str, message: dict[str, Any]) -> asyncio.Future[Kept]:
        answer: asyncio.Future[Kept] = asyncio.get_running_loop().create_future()
        self.taken.append((message["text"], answer))
        return answer


@pytest.fixture
def answers_later(in_memory_layer: None, settings: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": f"{__name__}.AnswersLater"}}


@pytest.mark.usefixtures("answers_later")
async def test_a_v1_senders_notifications_go_to_the_layer_without_waiting_and_are_counted_as_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layer = get_channel_layer()
    before = {name: metrics.counters[name] for name in (metrics.RELAYED, metrics.PENDING, metrics.LAYER_SEND_ERRORS)}
    async with connected() as sender:
        for recipient in ("live", "refused", "pending"):
            await send(sender, recipient, f"for {recipient}")
        await wait_until(lambda: len(layer.taken) == 3, seconds=5, interval=0.01)  # none answered yet
        assert [text for text, _ in layer.taken] == ["for live", "for refused", "for pending"]
        with caplog.at_level(logging.WARNING, logger="notifications"):
            (_, live), (_, refused), (_, pending) = layer.taken
            live.set_result(Kept(live=True, pending=False, position="1"))
            refused.set_exception(ConnectionError("Redis went away"))
            pending.set_result(Kept(live=False, pending=True, position="2"))
            await wait_until(
                lambda: metrics.counters[metrics.LAYER_SEND_ERRORS] > before[metrics.LAYER_SEND_ERRORS], seconds=5
            )
        assert metrics.counters[metrics.RELAYED] - before[metrics.RELAYED] == 2
        assert metrics.counters[metrics.PENDING] - before[metrics.PENDING] == 1
        assert metrics.counters[metrics.LAYER_SEND_ERRORS] - before[metrics.LAYER_SEND_ERRORS] == 1
        assert any("Undeliverable notification for 'refused'" in r.getMessage() for r in caplog.records)
        assert await sender.receive_nothing(0.1)  # a v1 sender is told nothing, and stays connected
        await send(sender, "after", "still relaying")
        await wait_until(lambda: len(layer.taken) == 4, seconds=5, interval=0.01)


@pytest.mark.usefixtures("answers_later")
async def test_a_v1_sender_waits_once_too_many_of_its_notifications_are_unanswered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumers, "IN_FLIGHT_LIMIT", 2)
    layer = get_channel_layer()
    async with connected() as sender:
        for i in range(5):
            await send(sender, "slow-redis", f"n{i}")
        await wait_until(lambda: len(layer.taken) == 3, seconds=5, interval=0.01)
        assert await sender.receive_nothing(0.2)
        assert len(layer.taken) == 3  # the third is over the limit: the sender waits for the oldest
        layer.taken[0][1].set_result(Kept(live=True, pending=False, position="1"))
        await wait_until(lambda: len(layer.taken) == 4, seconds=5, interval=0.01)
        assert [text for text, _ in layer.taken] == ["n0", "n1", "n2", "n3"]
        for _, answer in layer.taken:
            if not answer.done():
                answer.set_result(Kept(live=True, pending=False, position="2"))
        await wait_until(lambda: len(layer.taken) == 5, seconds=5, interval=0.01)
        layer.taken[4][1].set_result(Kept(live=True, pending=False, position="3"))


async def test_a_v2_sender_is_answered_after_its_earlier_v1_notifications(in_memory_layer: None) -> None:
    # v1 and v2 frames of one connection reach the layer, and so each id, in the order sent.
    async with connected("mixed-order") as recipient, connected() as sender:
        await send(sender, "mixed-order", "v1 first")
        await sender.send_to(text_data=json.dumps({"recipient_uuid": "mixed-order", "message": "v2 next", "v": 2}))
        await send(sender, "mixed-order", "v1 last")
        assert [await recipient.receive_from() for _ in range(3)] == ["v1 first", "v2 next", "v1 last"]
