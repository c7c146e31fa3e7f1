"""`python manage.py notify <uuid> "<message>"`, run as operators run it: a separate process."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from harness.clients import assert_receives_nothing, open_client, receive, register, register_confirmed
from harness.servers import Daphne, Python, free_port
from tests.presence import registry_counts

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("async_db")]


@pytest.fixture
def manage(manage: Python, database_url: str) -> Python:
    """``manage.py`` as an operator runs it on the server's machine: same database, no DEBUG needed."""

    def run(*args: str, env: dict[str, str | None], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        base = {"DJANGO_DEBUG": "1", "NOTIFY_SERVER_URL": None, "DATABASE_URL": database_url}
        return manage(*args, env={**base, **env}, stdin=stdin)

    return run


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def redis_env(redis_url: str, redis_prefix: str) -> dict[str, str | None]:
    return {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}


async def test_notify_reaches_a_client_through_redis_and_counts_its_connections(
    daphne_factory: Callable[..., Daphne],
    redis_env: dict[str, str | None],
    manage: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    server = daphne_factory(redis_env)
    first, second = await open_client(server.url), await open_client(server.url)
    await register_confirmed(first, "task-owner")
    await register_confirmed(second, "task-owner")
    await registry_counts("task-owner", 2)

    result = manage("notify", "task-owner", '{"status": 200}', env=redis_env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "Sent to 'task-owner': 2 live connections.\n"
    assert await receive(first) == '{"status": 200}'
    assert await receive(second) == '{"status": 200}'


async def test_notify_reaches_a_client_through_the_servers_websocket_on_the_embedded_default(
    daphne: Daphne, manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    # A second terminal beside bin/serve: no DEBUG, no secret key, the server found from the environment.
    ws = await open_client(daphne.url)
    await register_confirmed(ws, "second-terminal")
    await registry_counts("second-terminal", 1)
    env = {"REDIS_URL": None, "DJANGO_DEBUG": None, "DJANGO_SECRET_KEY": None, "NOTIFY_SERVER_URL": daphne.url}

    result = manage("notify", "second-terminal", "image2video", env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "Sent to 'second-terminal': 1 live connection.\n"
    assert await receive(ws) == "image2video"


async def test_notify_says_when_nobody_is_listening_and_the_next_registration_receives_it(
    daphne: Daphne, manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    result = manage("notify", "nobody-home", "hello", "--url", daphne.url, env={"REDIS_URL": None})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Kept for 600 s for the next registration of 'nobody-home': nobody is registered now.\n"
    ws = await open_client(daphne.url)
    await register(ws, "nobody-home")
    assert await receive(ws) == "hello"


async def test_notify_says_when_nobody_is_listening_and_pending_is_off(
    daphne_factory: Callable[..., Daphne], manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    daphne = daphne_factory({"NOTIFY_PENDING": "off"})
    result = manage("notify", "nobody-home", "hello", "--url", daphne.url, env={"REDIS_URL": None})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Not delivered: nobody is registered as 'nobody-home', and pending notifications are off.\n"


async def test_notify_reads_the_message_from_stdin_and_checks_json(
    daphne: Daphne, manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    ws = await open_client(daphne.url)
    await register_confirmed(ws, "piped")
    env = {"REDIS_URL": None, "NOTIFY_SERVER_URL": daphne.url}

    piped = manage("notify", "piped", "-", "--quiet", env=env, stdin="line one\nline two\n")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == ""  # --quiet
    assert await receive(ws) == "line one\nline two"  # the final newline is dropped

    document = '{"status": 200, "url": "https://example.com/v.mp4"}'
    as_json = manage("notify", "piped", "-", "--json", env=env, stdin=document)
    assert as_json.returncode == 0, as_json.stderr
    assert await receive(ws) == document  # exactly as given

    broken = manage("notify", "piped", "{status: 200", "--json", env=env)
    assert broken.returncode == 2
    assert one_error_line(broken).startswith("CommandError: Cannot send: --json: the message is not valid JSON (")
    await assert_receives_nothing(ws)


async def test_notify_all_reaches_every_registered_connection_once_through_redis(
    daphne_factory: Callable[..., Daphne],
    redis_env: dict[str, str | None],
    manage: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    one, two = daphne_factory(redis_env), daphne_factory(redis_env)
    alice, bob, unregistered = await open_client(one.url), await open_client(two.url), await open_client(two.url)
    await register_confirmed(alice, "alice")
    await register_confirmed(alice, "alice-2")  # two ids, one connection: one copy
    await register_confirmed(bob, "bob")
    await registry_counts("bob", 1)
    await registry_counts("alice-2", 1)

    result = manage("notify", "--all", "maintenance at noon", env=redis_env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "Sent to every registered connection: 2 live connections.\n"
    assert await receive(alice) == "maintenance at noon"
    assert await receive(bob) == "maintenance at noon"
    await assert_receives_nothing(alice)  # not once per id
    await assert_receives_nothing(unregistered)


async def test_notify_all_goes_through_the_server_on_the_embedded_default(
    daphne: Daphne, manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    alice, bob, unregistered = [await open_client(daphne.url) for _ in range(3)]
    await register_confirmed(alice, "alice")
    await register_confirmed(alice, "alice-2")
    await register_confirmed(bob, "bob")
    await registry_counts("bob", 1)
    await registry_counts("alice-2", 1)

    result = manage("notify", "--all", "maintenance at noon", "--url", daphne.url, env={"REDIS_URL": None})

    assert result.returncode == 0, result.stderr
    assert result.stdout == "Sent to every registered connection: 2 live connections.\n"  # connections, not ids
    # Protocol v1 has no broadcast: one frame per registered id, so alice's connection gets one per id.
    assert [await receive(alice), await receive(alice)] == ["maintenance at noon"] * 2
    assert await receive(bob) == "maintenance at noon"
    await assert_receives_nothing(unregistered)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("only-an-id",), "CommandError: Usage: notify RECIPIENT MESSAGE (got 1 argument)."),
        (("id", "message", "extra"), "CommandError: Usage: notify RECIPIENT MESSAGE (got 3 arguments)."),
        (("--all", "id", "message"), "CommandError: Usage: notify --all MESSAGE (got 2 arguments)."),
        (("x" * 300, "hi"), "CommandError: Cannot send: recipient_uuid is 300 characters long, over the limit of 255."),
        (("", "hi"), "CommandError: Cannot send: recipient_uuid is empty."),
    ],
)
def test_notify_refuses_a_bad_command_line_with_one_line_and_exit_2(
    args: tuple[str, ...], error: str, manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    result = manage("notify", *args, env={"REDIS_URL": None})
    assert result.returncode == 2
    assert one_error_line(result) == error


def test_notify_refuses_to_send_connected_through_the_websocket(
    daphne: Daphne, manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    result = manage("notify", "someone", "connected", "--url", daphne.url, env={"REDIS_URL": None})
    assert result.returncode == 2
    assert one_error_line(result).startswith(
        "CommandError: Cannot send: the text 'connected' cannot go through the server's WebSocket"
    )


def test_notify_says_when_the_server_is_unreachable(manage: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    url = f"ws://127.0.0.1:{free_port()}/"
    result = manage("notify", "someone", "hi", env={"REDIS_URL": None, "NOTIFY_SERVER_URL": url})
    assert result.returncode == 1
    assert one_error_line(result).startswith(f"CommandError: Cannot send: cannot reach the server at {url} (")


def test_notify_refuses_a_url_that_is_not_a_websocket_address(
    manage: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = manage("notify", "someone", "hi", "--url", "http://localhost:8765/", env={"REDIS_URL": None})
    assert result.returncode == 2
    assert one_error_line(result) == (
        "CommandError: Cannot send: --url 'http://localhost:8765/' is not a WebSocket address (ws://host:port/)."
    )


def test_notify_says_when_the_url_cannot_be_used(manage: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    result = manage("notify", "someone", "hi", "--url", "ws://127.0.0.1:99999/", env={"REDIS_URL": None})
    assert result.returncode == 1
    assert one_error_line(result) == (
        "CommandError: Cannot send: 'ws://127.0.0.1:99999/' is not a WebSocket address (ws://host:port/)."
    )


async def test_notify_fails_when_the_server_drops_a_message_over_its_size_limit(
    daphne: Daphne, manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    ws = await open_client(daphne.url)
    await register_confirmed(ws, "big")
    result = manage("notify", "big", "-", "--url", daphne.url, env={"REDIS_URL": None}, stdin="x" * (2 * 1024 * 1024))
    assert result.returncode == 1
    assert one_error_line(result).startswith(
        f"CommandError: Cannot send: the server at {daphne.url} dropped the connection"
    )
    await assert_receives_nothing(ws)


def test_notify_json_refuses_what_browsers_cannot_parse(
    manage: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = manage("notify", "someone", '{"ratio": NaN}', "--json", env={"REDIS_URL": None})
    assert result.returncode == 2
    assert one_error_line(result).startswith("CommandError: Cannot send: --json: the message is not valid JSON (NaN")


def test_notify_all_says_when_the_registry_is_unreadable(
    daphne: Daphne, manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    env = {"REDIS_URL": None, "DATABASE_URL": f"postgres://nobody@127.0.0.1:{free_port()}/none"}
    result = manage("notify", "--all", "hello", "--url", daphne.url, env=env)
    assert result.returncode == 1
    assert one_error_line(result) == (
        "CommandError: Cannot send: cannot broadcast through the server's WebSocket: the registry of ids is unreadable."
    )


def test_notify_says_when_redis_is_unreachable(manage: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = manage("notify", "someone", "hi", env={"REDIS_URL": url})
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("CommandError: Cannot send: the channel layer refused the notification")
    assert line.endswith(").")


async def test_notify_quiet_prints_nothing_but_errors(
    daphne: Daphne, manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    ws = await open_client(daphne.url)
    await register_confirmed(ws, "quiet")
    ok = manage("notify", "quiet", "shh", "-q", "--url", daphne.url, env={"REDIS_URL": None})
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    assert await receive(ws) == "shh"
