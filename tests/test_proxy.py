"""Behind nginx: the registry and the admin show the client's real address, never one it forged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.urls import reverse

from harness.clients import AdminSession, open_client, register
from harness.servers import Daphne, Nginx, eventually
from notifications.models import Connection

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("async_db")]

FORGED = {"X-Forwarded-For": "6.6.6.6, 7.7.7.7", "X-Real-IP": "6.6.6.6", "X-Real-Port": "666"}
# The client connects from another loopback address than nginx connects to
# daphne from (127.0.0.1), so the test tells which one daphne recorded.
CLIENT_ADDRESS = "127.0.0.3"
BEHIND_NGINX = {"NOTIFY_BEHIND_PROXY": "1"}


@sync_to_async
def recorded_address(server: Daphne, recipient: str) -> str | None:
    row = Connection.objects.filter(process__pid=server.process.pid, registrations__recipient=recipient).first()
    return row.client_address if row else None


async def address_of_forging_client(server: Daphne, url: str, recipient: str) -> str:
    ws = await open_client(url, additional_headers=FORGED, local_addr=(CLIENT_ADDRESS, 0))
    await register(ws, recipient)

    async def recorded() -> bool:
        return await recorded_address(server, recipient) is not None

    await eventually(recorded, seconds=5)
    await ws.close()
    address = await recorded_address(server, recipient)
    assert address is not None
    return address


async def test_behind_nginx_the_admin_shows_the_real_client_address_and_not_a_forged_one(
    daphne_factory: Callable[..., Daphne], nginx_factory: Callable[[Daphne], Nginx]
) -> None:
    daphne = daphne_factory(BEHIND_NGINX)
    nginx = nginx_factory(daphne)
    await sync_to_async(User.objects.create_superuser)("root", password="root-password")
    ws = await open_client(nginx.url, additional_headers=FORGED, local_addr=(CLIENT_ADDRESS, 0))
    await register(ws, "behind-nginx")

    async def recorded() -> bool:
        return await recorded_address(daphne, "behind-nginx") is not None

    await eventually(recorded, seconds=5)
    assert await recorded_address(daphne, "behind-nginx") == CLIENT_ADDRESS

    session = AdminSession(nginx.http_url)
    await asyncio.to_thread(session.log_in, "root", "root-password")
    status, page = await asyncio.to_thread(session.get, reverse("admin:notifications_connection_changelist"))
    assert status == 200
    assert "behind-nginx" in page
    assert f'<td class="field-client_address">{CLIENT_ADDRESS}</td>' in page
    assert "6.6.6.6" not in page and "7.7.7.7" not in page
    await ws.close()


async def test_without_proxy_mode_daphne_records_nginx_not_the_client(
    daphne_factory: Callable[..., Daphne], nginx_factory: Callable[[Daphne], Nginx]
) -> None:
    daphne = daphne_factory()
    nginx = nginx_factory(daphne)
    assert await address_of_forging_client(daphne, nginx.url, "plain") == "127.0.0.1"


async def test_without_a_proxy_forwarding_headers_are_ignored(daphne: Daphne) -> None:
    assert await address_of_forging_client(daphne, daphne.url, "direct") == CLIENT_ADDRESS


def test_a_bad_proxy_mode_stops_start_up_with_one_line(daphne_factory: Callable[..., Daphne]) -> None:
    with pytest.raises(RuntimeError) as failed:
        daphne_factory({"NOTIFY_BEHIND_PROXY": "maybe"})
    assert "Configuration error: NOTIFY_BEHIND_PROXY=maybe is not a boolean; use 1 or 0." in str(failed.value)
    assert "Traceback" not in str(failed.value)
