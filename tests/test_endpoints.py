"""Who may read /metrics and the dashboard, and what the probes answer, asked of the ASGI application itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.testing import HttpCommunicator
from django.contrib.auth.models import Permission, User
from django.core.asgi import get_asgi_application
from django.core.management import call_command
from django.test import Client

from notifications import health
from notifications.endpoints import OperatorEndpoints

# The project's HTTP side as its ASGI module builds it, without importing that module:
# importing it makes this process a server (start_server()), which the other tests must not find.
application = OperatorEndpoints(get_asgi_application())

KEY = "a-metrics-key-of-forty-characters-0123456"


async def ask(
    path: str, *, headers: list[tuple[bytes, bytes]] | None = None, client: str = "127.0.0.1", method: str = "GET"
) -> dict[str, Any]:
    communicator = HttpCommunicator(application, method, path, headers=headers or [])
    communicator.scope["client"] = (client, 50000)
    try:
        return await communicator.get_response(timeout=10)
    finally:
        await communicator.wait(timeout=10)  # type: ignore[no-untyped-call]


def bearer(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {key}".encode())]


@pytest.fixture(autouse=True)
def fresh_readiness() -> None:
    health.forget()


@pytest.mark.django_db(transaction=True)
async def test_without_a_key_or_addresses_the_metrics_endpoint_does_not_exist(async_db: None, settings: Any) -> None:
    settings.NOTIFICATIONS_METRICS_KEY = ""
    settings.NOTIFICATIONS_METRICS_ALLOWED_ADDRESSES = []
    assert (await ask("/metrics", headers=bearer(KEY)))["status"] == 404


@pytest.mark.django_db(transaction=True)
async def test_with_a_key_only_the_right_bearer_key_reads_the_metrics(async_db: None, settings: Any) -> None:
    settings.NOTIFICATIONS_METRICS_KEY = KEY
    settings.NOTIFICATIONS_METRICS_ALLOWED_ADDRESSES = []
    missing = await ask("/metrics")
    assert missing["status"] == 401
    assert (b"www-authenticate", b'Bearer realm="metrics"') in missing["headers"]
    assert (await ask("/metrics", headers=bearer(KEY[:-1] + "7")))["status"] == 401
    assert (await ask("/metrics", headers=[(b"authorization", f"Basic {KEY}".encode())]))["status"] == 401
    allowed = await ask("/metrics", headers=bearer(KEY), client="203.0.113.9")
    assert allowed["status"] == 200
    assert b"notify_deployment_connections_open" in allowed["body"]
    assert KEY.encode() not in allowed["body"]


@pytest.mark.django_db(transaction=True)
async def test_with_addresses_only_those_addresses_and_networks_read_the_metrics(async_db: None, settings: Any) -> None:
    settings.NOTIFICATIONS_METRICS_KEY = ""
    settings.NOTIFICATIONS_METRICS_ALLOWED_ADDRESSES = ["10.0.0.0/8", "2001:db8::1"]
    assert (await ask("/metrics", client="10.200.3.4"))["status"] == 200
    assert (await ask("/metrics", client="::ffff:10.1.1.1"))["status"] == 200
    assert (await ask("/metrics", client="2001:db8::1"))["status"] == 200
    assert (await ask("/metrics", client="192.168.1.1"))["status"] == 403
    assert (await ask("/metrics", client="2001:db8::2"))["status"] == 403
    assert (await ask("/metrics", client="not an address"))["status"] == 403


@pytest.mark.django_db(transaction=True)
async def test_with_both_a_request_needs_the_key_and_an_allowed_address(async_db: None, settings: Any) -> None:
    settings.NOTIFICATIONS_METRICS_KEY = KEY
    settings.NOTIFICATIONS_METRICS_ALLOWED_ADDRESSES = ["127.0.0.1"]
    assert (await ask("/metrics", headers=bearer(KEY)))["status"] == 200
    assert (await ask("/metrics"))["status"] == 401
    assert (await ask("/metrics", headers=bearer(KEY), client="127.0.0.2"))["status"] == 403


@pytest.mark.django_db(transaction=True)
async def test_the_probes_answer_get_and_head_and_refuse_other_methods(async_db: None) -> None:
    health_answer = await ask("/healthz", headers=[(b"host", b"anything.invalid")])
    assert (health_answer["status"], health_answer["body"]) == (200, b'{"status": "ok"}\n')
    ready = await ask("/readyz")
    assert (ready["status"], ready["body"]) == (200, b'{"status": "ready"}\n')
    head = await ask("/readyz", method="HEAD")
    assert (head["status"], head["body"]) == (200, b"")
    post = await ask("/healthz", method="POST")
    assert post["status"] == 405
    assert (b"allow", b"GET, HEAD") in post["headers"]


@pytest.mark.django_db(transaction=True)
async def test_other_paths_go_to_django_unchanged(async_db: None) -> None:
    # Django still checks the Host header of everything else.
    assert (await ask("/admin/login/", headers=[(b"host", b"anything.invalid")]))["status"] == 400
    assert (await ask("/healthz/", headers=[(b"host", b"localhost")]))["status"] == 404  # only the exact paths


async def test_a_websocket_or_lifespan_scope_is_never_taken_for_a_probe() -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    endpoints = OperatorEndpoints(inner)
    await endpoints({"type": "websocket", "path": "/healthz"}, None, None)  # type: ignore[arg-type]
    await endpoints({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["websocket", "lifespan"]


@pytest.mark.django_db
def test_the_dashboard_is_for_staff_with_the_right_to_view_server_processes(settings: Any) -> None:
    settings.ALLOWED_HOSTS = ["testserver"]
    page = "/admin/notifications/dashboard/"
    data = "/admin/notifications/dashboard/data/"
    anonymous = Client()
    assert anonymous.get(data).status_code == 302  # to the login page

    not_staff = Client()
    not_staff.force_login(User.objects.create_user("visitor"))
    assert not_staff.get(page).status_code == 302
    assert not_staff.get(data).status_code == 302

    staff = User.objects.create_user("helpdesk", is_staff=True)
    staff_client = Client()
    staff_client.force_login(staff)
    assert staff_client.get(page).status_code == 403
    assert staff_client.get(data).status_code == 403
    assert b"notifications/dashboard/" not in staff_client.get("/admin/").content

    staff.user_permissions.add(Permission.objects.get(codename="view_serverprocess"))
    staff_client.force_login(User.objects.get(pk=staff.pk))
    assert staff_client.get(page).status_code == 200
    answer = staff_client.get(data)
    assert answer.status_code == 200
    assert "no-store" in answer["Cache-Control"]
    assert set(answer.json()) >= {"processes", "total", "chart", "most_pending", "recent_undeliverable"}
    assert b"notifications/dashboard/" in staff_client.get("/admin/").content  # linked from the index


@pytest.mark.django_db
def test_the_metrics_settings_are_checked_without_showing_the_key(settings: Any, capsys: Any) -> None:
    settings.NOTIFICATIONS_METRICS_KEY = "short-secret"
    settings.NOTIFICATIONS_METRICS_ALLOWED_ADDRESSES = ["10.0.0.0/8", "ten.zero"]
    with pytest.raises(Exception) as raised:
        call_command("check")
    text = str(raised.value)
    assert "notifications.E030" in text and "short-secret" not in text
    assert "notifications.E031" in text and "'ten.zero' is not an address or a network" in text


@pytest.mark.django_db(transaction=True)
async def test_a_draining_process_is_not_ready_at_once(async_db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await ask("/readyz"))["status"] == 200  # and this answer is reused for half a second...
    monkeypatch.setattr("notifications.drain.is_draining", lambda: True)
    answer = await ask("/readyz")  # ...except once the drain began
    assert answer["status"] == 503
    assert answer["body"] == b'{"status": "unavailable", "reason": "draining: this process is stopping"}\n'
    assert (await ask("/healthz"))["status"] == 200


@pytest.mark.django_db(transaction=True)
async def test_an_unreachable_redis_makes_the_process_unready_naming_the_server_without_its_password(
    async_db: None,
    settings: Any,
) -> None:
    from harness.servers import free_port

    port = free_port()
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "notifications.layers.redis.RedisPubSubLayer",
            "CONFIG": {"hosts": [f"redis://:hunter2-secret@127.0.0.1:{port}/0"]},
        }
    }
    answer = await ask("/readyz")
    assert answer["status"] == 503
    reason = json.loads(answer["body"])["reason"]
    assert reason.startswith(f"Redis 0 (redis://:***@127.0.0.1:{port}/0) does not answer: ")
    assert "hunter2" not in reason


@pytest.mark.django_db
def test_the_dashboard_says_when_the_channel_layer_cannot_say_what_is_pending(settings: Any) -> None:
    from harness.servers import free_port

    settings.ALLOWED_HOSTS = ["testserver"]
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "notifications.layers.redis.RedisPubSubLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},
        }
    }
    client = Client()
    client.force_login(User.objects.create_superuser("ops", password="x"))
    answer = client.get("/admin/notifications/dashboard/data/")
    assert answer.status_code == 200
    data = answer.json()
    assert data["most_pending"] == []
    assert data["most_pending_error"].startswith("the channel layer did not answer (ConnectionError")
