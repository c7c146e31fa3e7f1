"""Sending on commit: a notification never announces data that is not committed (or never will be)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test import AsyncClient

from notifications.exceptions import InvalidNotification
from notifications.sending import SendResult, asend, broadcast, send, send_many, send_to_connections
from tests import urls
from tests.communicators import connected

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("in_memory_layer", "view_urls", "async_db"),
]

ARRIVAL = 5.0


@pytest.fixture
def view_urls(settings: pytest.FixtureRequest) -> None:
    settings.ROOT_URLCONF = "tests.urls"


@pytest.fixture
async def owner() -> AsyncIterator[WebsocketCommunicator]:
    async with connected("owner") as communicator:
        yield communicator


def _committed(name: str) -> bool:
    """Whether another database connection (another thread's) sees the user: only once it is committed."""
    try:
        return User.objects.filter(username=name).exists()
    finally:
        connection.close()


async def committed(name: str) -> bool:
    return await sync_to_async(_committed, thread_sensitive=False)(name)


async def post(**form: str) -> int:
    response = await AsyncClient().post("/users/create/", {"owner": "owner", **form})
    return int(response.status_code)


@pytest.mark.parametrize("api", ["sync", "async"])
async def test_a_notification_sent_on_commit_arrives_once_the_row_it_announces_can_be_read(
    owner: WebsocketCommunicator, api: str
) -> None:
    name = f"u{uuid.uuid4().hex[:8]}"
    urls.looked.clear()
    view = asyncio.ensure_future(post(name=name, on_commit="1", hold="1", api=api))
    # The view holds its transaction open after send() until the test has looked: nothing may arrive meanwhile.
    assert await owner.receive_nothing(timeout=0.5)
    assert not await committed(name)
    urls.looked.set()
    assert await owner.receive_from(timeout=ARRIVAL) == f"created {name}"
    assert await committed(name), "the notification arrived before its row could be read"
    assert await asyncio.wait_for(view, ARRIVAL) == 200
    assert await owner.receive_nothing(timeout=0.3)  # once


async def test_without_on_commit_the_page_is_told_before_the_row_exists(owner: WebsocketCommunicator) -> None:
    """The control: the same view sending at once announces a row that nobody else can read yet."""
    name = f"u{uuid.uuid4().hex[:8]}"
    urls.looked.clear()
    view = asyncio.ensure_future(post(name=name, hold="1"))
    assert await owner.receive_from(timeout=ARRIVAL) == f"created {name}"
    assert not await committed(name)
    urls.looked.set()
    assert await asyncio.wait_for(view, ARRIVAL) == 200
    assert await committed(name)


@pytest.mark.parametrize("api", ["sync", "async"])
async def test_a_rolled_back_transaction_sends_nothing(owner: WebsocketCommunicator, api: str) -> None:
    name = f"u{uuid.uuid4().hex[:8]}"
    assert await post(name=name, on_commit="1", rollback="1", api=api) == 200
    assert await owner.receive_nothing(timeout=0.5)
    assert not await committed(name)


def _every_function_in_a_transaction(commit: bool) -> list[object]:
    """Each sending function with on_commit=True inside one transaction: what each returned."""
    returned: list[object] = []
    with transaction.atomic():
        returned.append(send("owner", "one", on_commit=True))
        returned.append(send_many([("owner", "two"), ("owner", "three")], on_commit=True))
        returned.append(broadcast("four", on_commit=True))
        returned.append(send_to_connections([], "five", on_commit=True))
        if not commit:
            transaction.set_rollback(True)
    return returned


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
async def test_every_sending_function_waits_for_the_commit(owner: WebsocketCommunicator, commit: bool) -> None:
    returned = await sync_to_async(_every_function_in_a_transaction)(commit)
    assert returned == [None, None, None, None]  # put off: what became of them is not known yet
    if commit:
        for text in ("one", "two", "three", "four"):
            assert await owner.receive_from(timeout=ARRIVAL) == text
    assert await owner.receive_nothing(timeout=0.5)


async def test_outside_a_transaction_on_commit_sends_at_once_and_says_what_became_of_it(
    owner: WebsocketCommunicator,
) -> None:
    result = await sync_to_async(lambda: send("owner", "now", on_commit=True))()
    assert isinstance(result, SendResult) and result.outcome == "live", result
    assert await owner.receive_from(timeout=ARRIVAL) == "now"
    async_result = await asend("owner", "now too", on_commit=True)
    assert isinstance(async_result, SendResult) and async_result.outcome == "live", async_result
    assert await owner.receive_from(timeout=ARRIVAL) == "now too"


async def test_an_unusable_notification_raises_at_the_call_not_at_the_commit() -> None:
    def in_transaction() -> None:
        with transaction.atomic():
            send("", "to nobody", on_commit=True)

    with pytest.raises(InvalidNotification, match="empty"):
        await sync_to_async(in_transaction)()
