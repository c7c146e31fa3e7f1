"""The HTTP push endpoint ``POST /api/notify/`` for services that are not Django."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client

from harness.clients import assert_receives_nothing, open_client, post_json, receive, register_confirmed
from harness.servers import Daphne, free_port
from notifications.layers import Kept
from notifications.layers.memory import InMemoryLayer
from notifications.models import Connection
from tests.presence import registry_counts

KEY = "k" * 40
OTHER_KEY = "another-key-for-the-queue-manager-0123456789"
URL = "/api/notify/"


@pytest.fixture(autouse=True)
def api_settings(settings: Any, in_memory_layer: None) -> None:
    settings.NOTIFICATIONS_API_KEYS = [KEY, OTHER_KEY]
    settings.NOTIFICATIONS_REGISTRY_ENABLED = True  # the counts come from the registry's rows


@pytest.fixture
def api() -> Client:
    return Client(enforce_csrf_checks=True)  # the endpoint must not need a CSRF token


def post(api: Client, body: object, key: str | None = KEY, **headers: str) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    if key is not None:
        headers.setdefault("Authorization", f"Bearer {key}")
    response = api.post(URL, data, content_type="application/json", headers=headers)
    return response.status_code, json.loads(response.content) if response.content.startswith(b"{") else None


@pytest.mark.django_db(transaction=True)
def test_a_batch_answers_each_ids_live_connections_in_order(
    api: Client, live_connections: Callable[..., list[Connection]]
) -> None:
    live_connections(2, ids=("alice",))
    live_connections(1, ids=("bob",))
    live_connections(3, ids=("gone",), heartbeat_age=3600)  # a dead process's rows never count
    batch = [
        {"recipient_uuid": "alice", "message": "done"},
        {"recipient_uuid": "bob", "message": {"status": 200}},
        {"recipient_uuid": "gone", "message": "done"},
        {"recipient_uuid": "alice", "message": "again"},
    ]
    status, answer = post(api, batch, key=OTHER_KEY)
    assert status == 200
    assert [(r["recipient_uuid"], r["live_connections"]) for r in answer["results"]] == [
        ("alice", 2),
        ("bob", 1),
        ("gone", 0),
        ("alice", 2),
    ]
    # The registry's rows are written by this test; no connection of this process holds
    # the ids, so the layer kept each one for the id's next registration.
    assert {r["outcome"] for r in answer["results"]} == {"pending"}
    assert len({r["position"] for r in answer["results"]}) == 4
    assert all(r["pending_until"] for r in answer["results"])


@pytest.mark.django_db(transaction=True)
def test_one_notification_as_an_object(api: Client) -> None:
    status, answer = post(api, {"recipient_uuid": "nobody", "message": "hi"})
    assert status == 200
    (result,) = answer["results"]
    assert (result["recipient_uuid"], result["live_connections"], result["outcome"]) == ("nobody", 0, "pending")
    assert datetime.fromisoformat(result["pending_until"]) > datetime.now(tz=UTC)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", f"Basic {KEY}", f"Bearer {KEY[:-1]}", f"Bearer {KEY}x", "Bearer wrong"],
)
def test_a_missing_or_wrong_key_gets_401(api: Client, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    status, answer = post(api, {"recipient_uuid": "a", "message": "b"}, key=None, **headers)
    assert status == 401
    assert answer == {"error": "missing or wrong API key (Authorization: Bearer <key>)"}


def test_the_401_names_the_scheme(api: Client) -> None:
    response = api.post(URL, b"{}", content_type="application/json")
    assert response["WWW-Authenticate"] == "Bearer"


def test_without_keys_configured_the_endpoint_does_not_exist(api: Client, settings: Any) -> None:
    settings.NOTIFICATIONS_API_KEYS = []
    status, _ = post(api, {"recipient_uuid": "a", "message": "b"}, key="")
    assert status == 404


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_other_methods_get_405(api: Client, method: str) -> None:
    response = getattr(api, method)(URL, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 405
    assert response["Allow"] == "POST"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "the body is not JSON: Expecting property name enclosed in double quotes: line 1 column 2"),
        (b"\xff\xfe", "the body is not JSON: "),
        (b"", "the body is not JSON: Expecting value: line 1 column 1 (char 0)"),
        ({"message": "hi"}, "no recipient_uuid"),
        ({"recipient_uuid": "a"}, "no message"),
        ([], "the list holds no notification"),
        ("just a string", 'expected an object {"recipient_uuid": ..., "message": ...}'),
        ([{"recipient_uuid": "a", "message": "ok"}, {"message": "x"}], "item 1: no recipient_uuid"),
        ([{"recipient_uuid": "a", "message": "ok"}, 7], 'item 1: expected an object {"recipient_uuid"'),
        ({"recipient_uuid": "", "message": "hi"}, "recipient_uuid is empty"),
        ({"recipient_uuid": 42, "message": "hi"}, "recipient_uuid must be a string, not int"),
        ({"recipient_uuid": "x" * 256, "message": "hi"}, "recipient_uuid is 256 characters long, over the limit"),
        ({"recipient_uuid": "a", "message": "nul\u0000"}, "message holds a NUL character"),
        ([{"recipient_uuid": "a", "message": "x"}] * 1001, "1001 notifications in one request; at most 1000"),
    ],
)
def test_bad_input_gets_400_with_one_line(api: Client, body: object, error: str) -> None:
    status, answer = post(api, body)
    assert status == 400
    assert set(answer) == {"error"}
    assert answer["error"].startswith(error)
    assert "\n" not in answer["error"]


@pytest.mark.django_db(transaction=True)
def test_redis_down_gets_503_with_one_line(api: Client, settings: Any) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "notifications.layers.redis.RedisPubSubLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},
        }
    }
    status, answer = post(api, [{"recipient_uuid": "a", "message": "x"}, {"recipient_uuid": "b", "message": "y"}])
    assert status == 503
    assert answer["results"] == []  # nothing was handed over
    assert answer["error"].startswith("the channel layer refused the notification: ")
    assert "\n" not in answer["error"]


class RedisGoesDownAfterTwo(InMemoryLayer):
    """Takes two notifications, then refuses every one, as a layer whose Redis went down mid-batch."""

    taken = 0

    async def send_kept(self, group: str, message: dict[str, Any]) -> Kept:
        if self.taken == 2:
            raise ConnectionError("Redis went away")
        self.taken += 1
        return await super().send_kept(group, message)


@pytest.mark.django_db(transaction=True)
def test_a_failure_mid_batch_answers_what_was_handed_over_before(api: Client, settings: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": f"{__name__}.RedisGoesDownAfterTwo"}}
    batch = [{"recipient_uuid": r, "message": "x"} for r in ("first", "second", "third", "fourth")]
    status, answer = post(api, batch)
    assert status == 503
    assert answer["error"] == "the channel layer refused the notification: Redis went away"
    assert [(r["recipient_uuid"], r["outcome"]) for r in answer["results"]] == [
        ("first", "pending"),
        ("second", "pending"),
    ]


def test_a_body_over_one_mebibyte_gets_413(api: Client) -> None:
    body = json.dumps({"recipient_uuid": "a", "message": "x" * (1024 * 1024)}).encode()
    status, answer = post(api, body)
    assert (status, answer) == (413, {"error": "the body is over 1048576 bytes"})


@pytest.mark.django_db(transaction=True)
def test_a_batch_of_exactly_one_thousand_is_accepted(api: Client) -> None:
    status, answer = post(api, [{"recipient_uuid": f"id-{i}", "message": "x"} for i in range(1000)])
    assert status == 200
    assert len(answer["results"]) == 1000


@pytest.mark.usefixtures("async_db")
async def test_a_service_reaches_the_clients_of_a_real_server(
    daphne_factory: Callable[..., Daphne],
) -> None:
    """End to end on the embedded default: the endpoint's async code runs in the daphne process."""
    server = daphne_factory({"NOTIFY_API_KEYS": KEY})
    alice_phone, alice_laptop, bob = [await open_client(server.url) for _ in range(3)]
    for ws, recipient in ((alice_phone, "alice"), (alice_laptop, "alice"), (bob, "bob")):
        await register_confirmed(ws, recipient)
    await registry_counts("alice", 2)
    await registry_counts("bob", 1)
    endpoint, auth = server.http_url + URL, {"Authorization": f"Bearer {KEY}"}

    batch = [{"recipient_uuid": r, "message": f"for {r}"} for r in ("alice", "bob", "carol")]
    status, answer = await asyncio.to_thread(post_json, endpoint, json.dumps(batch).encode(), auth)

    assert status == 200
    assert [(r["recipient_uuid"], r["live_connections"]) for r in answer["results"]] == [
        ("alice", 2),
        ("bob", 1),
        ("carol", 0),
    ]
    assert await receive(alice_phone) == "for alice"
    assert await receive(alice_laptop) == "for alice"
    assert await receive(bob) == "for bob"

    # A batch with one bad item sends nothing at all.
    bad = [{"recipient_uuid": "bob", "message": "never"}, {"recipient_uuid": "", "message": "x"}]
    status, answer = await asyncio.to_thread(post_json, endpoint, json.dumps(bad).encode(), auth)
    assert (status, answer) == (400, {"error": "item 1: recipient_uuid is empty"})
    status, _ = await asyncio.to_thread(post_json, endpoint, b"x" * (1024 * 1024 + 1), auth)
    assert status == 413
    status, _ = await asyncio.to_thread(post_json, endpoint, json.dumps(batch).encode(), {"Authorization": "Bearer x"})
    assert status == 401
    await assert_receives_nothing(bob)
