"""Forwarding headers are believed from the trusted proxies alone (NOTIFY_TRUSTED_PROXIES)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from harness.clients import open_client, register_confirmed
from harness.servers import Daphne, eventually
from notifications.models import Connection
from notifications.networks import networks
from notifications.proxies import TrustedProxyHeaders

FORWARDED = [
    (b"x-real-ip", b"203.0.113.7"),
    (b"x-real-port", b"40000"),
    (b"x-forwarded-for", b"203.0.113.7"),
    (b"x-forwarded-proto", b"https"),
    (b"user-agent", b"test"),
]


def scope_from(peer: str) -> dict[str, Any]:
    return {"type": "websocket", "client": (peer, 51000), "headers": list(FORWARDED)}


def test_from_a_trusted_proxy_the_client_is_the_one_it_names() -> None:
    seen = TrustedProxyHeaders.rewrite(scope_from("10.0.0.2"), networks(["10.0.0.0/24"]))
    assert seen["client"] == ("203.0.113.7", 40000)
    assert (b"x-forwarded-proto", b"https") in seen["headers"]  # Django's SECURE_PROXY_SSL_HEADER reads it


def test_from_anyone_else_the_forwarding_headers_are_removed() -> None:
    seen = TrustedProxyHeaders.rewrite(scope_from("10.0.1.9"), networks(["10.0.0.0/24"]))
    assert seen["client"] == ("10.0.1.9", 51000)
    assert seen["headers"] == [(b"user-agent", b"test")]


@pytest.mark.parametrize("claimed", [b"", b"not-an-address", b"203.0.113.7, 10.0.0.1", b"999.1.1.1"])
def test_a_trusted_proxy_that_names_no_address_leaves_its_own(claimed: bytes) -> None:
    scope = {"type": "http", "client": ("10.0.0.2", 1), "headers": [(b"x-real-ip", claimed)]}
    assert TrustedProxyHeaders.rewrite(scope, networks(["10.0.0.2"]))["client"] == ("10.0.0.2", 1)


async def test_with_no_trusted_proxies_nothing_changes(settings: Any) -> None:
    settings.NOTIFICATIONS_TRUSTED_PROXIES = []
    seen: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    scope = scope_from("10.0.1.9")
    await TrustedProxyHeaders(inner)(scope, None, None)
    assert seen == [scope]


async def test_daphne_believes_x_real_ip_from_the_trusted_proxy_and_not_from_another_host(
    daphne_factory: Callable[..., Daphne], async_db: None
) -> None:
    # daphne listens where two "hosts" reach it: 127.0.0.2 is the proxy, 127.0.0.1 is not.
    server = daphne_factory({"NOTIFY_BEHIND_PROXY": "1", "NOTIFY_TRUSTED_PROXIES": "127.0.0.2"})
    claim = {"additional_headers": {"X-Real-IP": "203.0.113.7", "X-Real-Port": "4242"}}
    through_proxy = await open_client(server.url, local_addr=("127.0.0.2", 0), **claim)
    await register_confirmed(through_proxy, "via-the-proxy")
    forger = await open_client(server.url, local_addr=("127.0.0.1", 0), **claim)
    await register_confirmed(forger, "forged")

    async def addresses() -> dict[str, str]:
        rows = Connection.objects.filter(registrations__recipient__in=["via-the-proxy", "forged"]).values_list(
            "registrations__recipient", "client_address"
        )
        return dict(await sync_to_async(list)(rows))

    async def both_written() -> bool:
        return len(await addresses()) == 2

    await eventually(both_written, seconds=10, interval=0.1)
    assert await addresses() == {"via-the-proxy": "203.0.113.7", "forged": "127.0.0.1"}
    for ws in (through_proxy, forger):
        await ws.close()
    assert "Traceback" not in server.log()
