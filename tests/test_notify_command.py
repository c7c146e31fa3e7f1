"""`python manage.py notify <uuid> "<message>"`, run as operators run it: a separate process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from tests.clients import open_client, receive, register_confirmed
from tests.servers import ROOT, Daphne, child_env, free_port


def manage(*args: str, env: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=child_env({"DJANGO_DEBUG": "1", "NOTIFY_SERVER_URL": None, **env}),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_notify_reaches_a_client_through_redis(
    daphne_factory: Callable[..., Daphne], redis_url: str, redis_prefix: str
) -> None:
    env = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
    server = daphne_factory(env)
    ws = await open_client(server.url)
    await register_confirmed(ws, "task-owner")
    result = manage("notify", "task-owner", '{"status": 200}', env=env)
    assert result.returncode == 0, result.stderr
    assert "through the channel layer" in result.stdout
    assert await receive(ws) == '{"status": 200}'
    await ws.close()


async def test_notify_goes_through_the_servers_websocket_on_the_embedded_default(daphne: Daphne) -> None:
    ws = await open_client(daphne.url)
    await register_confirmed(ws, "embedded")
    result = manage("notify", "embedded", "done", "--url", daphne.url, env={"REDIS_URL": None})
    assert result.returncode == 0, result.stderr
    assert await receive(ws) == "done"
    await ws.close()


async def test_notify_finds_the_server_from_the_environment_without_debug_or_key(daphne: Daphne) -> None:
    # A second terminal beside bin/serve: no DJANGO_DEBUG, no secret key, no --url.
    ws = await open_client(daphne.url)
    await register_confirmed(ws, "second-terminal")
    env = {"REDIS_URL": None, "DJANGO_DEBUG": None, "DJANGO_SECRET_KEY": None, "NOTIFY_SERVER_URL": daphne.url}
    result = manage("notify", "second-terminal", "image2video", env=env)
    assert result.returncode == 0, result.stderr
    assert await receive(ws) == "image2video"
    await ws.close()


def test_notify_refuses_to_send_connected_through_the_websocket(daphne: Daphne) -> None:
    result = manage("notify", "someone", "connected", "--url", daphne.url, env={"REDIS_URL": None})
    assert result.returncode == 1
    assert result.stderr.startswith("CommandError: Cannot send the text 'connected' through the server's WebSocket")


def test_notify_refuses_a_bad_id_with_one_line() -> None:
    result = manage("notify", "x" * 300, "hi", env={"REDIS_URL": None})
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "CommandError: Cannot send: recipient_uuid is 300 characters long, over the limit of 255."
    )


def test_notify_says_when_the_server_is_unreachable() -> None:
    url = f"ws://127.0.0.1:{free_port()}/"
    result = manage("notify", "someone", "hi", "--url", url, env={"REDIS_URL": None})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"CommandError: Cannot reach the server at {url}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_notify_says_when_redis_is_unreachable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = manage("notify", "someone", "hi", env={"REDIS_URL": url})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    *logged, last = result.stderr.strip().splitlines()
    assert last.startswith("CommandError: Cannot send: the channel layer refused the notification")
    assert last.endswith(").")
    assert logged and "WARNING" in logged[0] and "'someone'" in logged[0]
