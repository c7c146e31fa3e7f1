"""The Python sending API, called from Django views as projects call it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from notifications.protocol import GREETING, InvalidNotification
from notifications.sending import asend
from notifyproject.asgi import application

pytestmark = pytest.mark.usefixtures("in_memory_layer")


@pytest.fixture
async def owner() -> AsyncIterator[WebsocketCommunicator]:
    communicator = WebsocketCommunicator(application, "/")
    assert (await communicator.connect())[0]
    assert await communicator.receive_from() == GREETING
    await communicator.send_to(text_data=json.dumps({"recipient_uuid": "owner-1", "message": "connected"}))
    await communicator.send_to(text_data=json.dumps({"recipient_uuid": "owner-1", "message": "ready?"}))
    assert await communicator.receive_from() == "ready?"
    yield communicator
    await communicator.disconnect()


@pytest.fixture
def view_urls(settings: pytest.FixtureRequest) -> None:
    settings.ROOT_URLCONF = "tests.urls"


@pytest.mark.usefixtures("view_urls")
async def test_a_sync_view_notifies_a_connected_client(owner: WebsocketCommunicator) -> None:
    response = await AsyncClient().post("/tasks/finish/", {"owner": "owner-1", "task": "t-42"})
    assert response.status_code == 200
    assert json.loads(await owner.receive_from()) == {"status": 200, "task": "t-42"}


@pytest.mark.usefixtures("view_urls")
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
