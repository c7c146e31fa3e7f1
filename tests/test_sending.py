"""The Python sending API, called from Django views as projects call it."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import Request

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connections
from django.test import AsyncClient

from harness.clients import AdminSession, open_client, receive, register_confirmed
from harness.servers import ROOT, Daphne, free_port
from notifications import views
from notifications.exceptions import DeliveryFailed, InvalidNotification
from notifications.sending import SendResult, abroadcast, asend, send
from tests.communicators import connected
from tests.presence import registry_counts


@pytest.fixture
async def owner() -> AsyncIterator[WebsocketCommunicator]:
    async with connected("owner-1") as communicator:
        yield communicator


@pytest.fixture
def view_urls(settings: pytest.FixtureRequest) -> None:
    settings.ROOT_URLCONF = "tests.urls"


@pytest.mark.usefixtures("view_urls", "in_memory_layer")
async def test_a_sync_view_notifies_a_connected_client(owner: WebsocketCommunicator) -> None:
    response = await AsyncClient().post("/tasks/finish/", {"owner": "owner-1", "task": "t-42"})
    assert response.status_code == 200
    assert json.loads(await owner.receive_from()) == {"status": 200, "task": "t-42"}


@pytest.mark.usefixtures("view_urls", "in_memory_layer")
async def test_an_async_view_notifies_a_connected_client(owner: WebsocketCommunicator) -> None:
    response = await AsyncClient().post("/tasks/finish-async/", {"owner": "owner-1"})
    assert response.status_code == 200
    assert await owner.receive_from() == "image2video"


@pytest.mark.parametrize(
    ("recipient", "message", "error"),
    [
        ("", "hi", "recipient_uuid is empty"),
        (42, "hi", "must be a string"),
        ("x" * 256, "hi", "over the limit of 255"),
        ("ok", "\ud800", "lone surrogate"),
        ("ok", "nul\x00", "NUL"),
    ],
)
async def test_unusable_ids_and_messages_raise_a_clear_error(recipient: object, message: object, error: str) -> None:
    with pytest.raises(InvalidNotification, match=error):
        await asend(recipient, message)  # type: ignore[arg-type]


# Against real daphne processes, as projects run them.


@pytest.fixture
def registry_readable(settings: Any) -> None:
    """Count live connections from the registry rows the daphne processes write."""
    settings.NOTIFICATIONS_REGISTRY_ENABLED = True


@pytest.fixture
async def redis_layer(settings: Any, redis_url: str, redis_prefix: str) -> AsyncIterator[dict[str, str | None]]:
    """This process on the same Redis as the daphne processes; the environment to start them with."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "notifications.layers.redis.RedisPubSubLayer",
            "CONFIG": {"hosts": [redis_url], "prefix": redis_prefix},
        }
    }
    yield {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
    await get_channel_layer().flush()


def send_from_sync_code(recipient: str, message: Any) -> SendResult:
    """``send()`` as sync code (a Celery task, the shell) calls it, in a worker thread that then closes
    its database connections (one left open keeps PostgreSQL from dropping the test database)."""
    try:
        return send(recipient, message)
    finally:
        connections.close_all()


async def log_in_as_editor(session: AdminSession) -> None:
    """Log in through the site's login form as a user who is not staff."""
    await sync_to_async(User.objects.create_user)("editor", password="editor-password")
    await asyncio.to_thread(
        session.log_in,
        "editor",
        "editor-password",
        login="/accounts/login/",
        then="/send/",
        shows="Send a notification",
    )


@pytest.mark.usefixtures("registry_readable", "async_db")
async def test_a_view_in_the_server_sends_from_a_request_handler(daphne: Daphne) -> None:
    """The example view /send/: login required, CSRF-protected form, the sync API inside daphne."""
    ws = await open_client(daphne.url)
    await register_confirmed(ws, "reader <b>1</b>")
    await registry_counts("reader <b>1</b>", 1)
    session = AdminSession(daphne.http_url)

    status, page = await asyncio.to_thread(session.get, "/send/")
    assert status == 200 and "Sign in" in page  # anonymous: sent to the login form first

    await log_in_as_editor(session)
    form = [("recipient_uuid", "reader <b>1</b>"), ("message", "your export is ready")]
    status, page = await asyncio.to_thread(session.post, "/send/", form)

    assert status == 200
    assert "Sent to &#x27;reader &lt;b&gt;1&lt;/b&gt;&#x27;: 1 live connection(s)." in page
    assert await receive(ws) == "your export is ready"


@pytest.mark.usefixtures("async_db")
async def test_the_send_view_refuses_a_post_without_csrf_token(daphne: Daphne) -> None:
    session = AdminSession(daphne.http_url)
    await log_in_as_editor(session)
    body = urlencode({"recipient_uuid": "x", "message": "y"}).encode()
    request = Request(daphne.http_url + "/send/", data=body, method="POST")
    with pytest.raises(HTTPError) as refused:
        await asyncio.to_thread(session.opener.open, request, timeout=10)
    assert refused.value.code == 403


@pytest.mark.usefixtures("registry_readable", "async_db")
async def test_code_in_another_process_reaches_clients_through_redis(
    daphne_factory: Callable[..., Daphne], redis_layer: dict[str, str | None]
) -> None:
    server = daphne_factory(redis_layer)
    ws, other = await open_client(server.url), await open_client(server.url)
    await register_confirmed(ws, "worker-result")
    await register_confirmed(other, "someone-else")
    await registry_counts("worker-result", 1)
    await registry_counts("someone-else", 1)

    first = await asend("worker-result", {"status": 200})
    assert (first.recipient, first.live_connections, first.outcome, first.pending_until) == (
        "worker-result",
        1,
        "live",
        None,
    )
    assert await receive(ws) == '{"status": 200}'
    # Sync code (a Celery task, the shell) in a thread of its own.
    second = await asyncio.to_thread(send_from_sync_code, "worker-result", "from sync code")
    assert (second.live_connections, second.outcome) == (1, "live")
    assert first.position is not None and second.position is not None and first.position != second.position
    assert await receive(ws) == "from sync code"
    assert await abroadcast("to everyone") == SendResult(None, 2)  # broadcasts are never kept: no outcome
    assert await receive(ws) == "to everyone"
    assert await receive(other) == "to everyone"
    nobody = await asend("nobody", "x")
    assert (nobody.live_connections, nobody.outcome) == (0, "pending")
    assert nobody.pending_until is not None


@pytest.mark.usefixtures("registry_readable", "in_memory_layer", "async_db")
async def test_code_outside_the_server_on_the_embedded_default_goes_through_the_server(
    daphne: Daphne, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process never called start_server(): a shell or a worker, not the server.
    settings.NOTIFICATIONS_SEND_THROUGH = "auto"
    settings.NOTIFICATIONS_SERVER_URL = daphne.url
    ws = await open_client(daphne.url)
    await register_confirmed(ws, "shell-user")
    await registry_counts("shell-user", 1)

    sent = await asyncio.to_thread(send_from_sync_code, "shell-user", {"done": True})
    # The server's "sent" reply tells the outcome; the position stays the server's.
    assert (sent.live_connections, sent.outcome, sent.position) == (1, "live", None)
    assert await receive(ws) == '{"done": true}'
    assert await abroadcast("to everyone") == SendResult(None, 1)
    assert await receive(ws) == "to everyone"


@pytest.mark.usefixtures("in_memory_layer")
async def test_code_outside_the_server_says_when_no_server_runs(
    settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings.NOTIFICATIONS_SEND_THROUGH = "auto"
    settings.NOTIFICATIONS_SERVER_URL = url = f"ws://127.0.0.1:{free_port()}/"
    with caplog.at_level(logging.WARNING, logger="notifications"), pytest.raises(DeliveryFailed, match=url):
        await asend("someone", "lost?")
    (record,) = [r for r in caplog.records if r.name == "notifications.sending.through_server"]
    assert record.getMessage().startswith("Undeliverable: 1 notification(s) not handed to the server: cannot reach")


def test_the_readme_shows_the_example_view_as_it_is() -> None:
    readme = (ROOT / "README.md").read_text()
    assert inspect.getsource(views.send_view) in readme
