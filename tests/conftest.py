from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections
from playwright.async_api import Browser, async_playwright

from harness.servers import (
    ROOT,
    Daphne,
    Nginx,
    Python,
    RedisServer,
    free_port,
    start_daphne,
    start_nginx,
    stop_process,
    url_of_database,
    wait_for_port,
)
from harness.servers import run_python as run_python_process
from notifications.models import Connection, Registration, ServerProcess
from tests.kinds import kind_of
from tests.programs import CHROMIUM_ARGS, NGINX_HINT, SYSTEMD_HINT, require_program


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its kind; tests that start daphne get the test database.

    pytest-django creates the database only when a collected test is marked
    ``django_db``; transactional, so the test process holds no lock that the
    servers would wait on.
    """
    for item in items:
        fixturenames = getattr(item, "fixturenames", ())
        item.add_marker(kind_of(fixturenames))
        if "daphne_factory" in fixturenames and item.get_closest_marker("django_db") is None:
            item.add_marker(pytest.mark.django_db(transaction=True))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: REDIS_URL when set, else a redis-server the suite starts and stops."""
    url = os.environ.get("REDIS_URL", "").strip()
    if url:
        yield url
        return
    server = RedisServer.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def in_memory_layer(settings: pytest.FixtureRequest) -> None:
    """Consumer tests run on the embedded default layer, whatever the environment says."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "notifications.layers.memory.InMemoryLayer"}}


@pytest.fixture
def redis_prefix() -> str:
    """A channel-layer prefix of the test's own, so tests sharing a Redis never see each other."""
    return f"test{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def database_url(django_db_setup: None) -> str:
    """The address of the test database (set up by pytest-django), for the processes the tests start.

    daphne processes write their live connections there, and tests marked
    ``django_db(transaction=True)`` read what they wrote.
    """
    return url_of_database(connection.settings_dict)


@pytest.fixture
async def async_db() -> AsyncIterator[None]:
    """For async tests that query the database: close the worker thread's connection afterwards.

    Django's async ORM and ``sync_to_async`` run queries in a worker thread
    whose connection nothing else closes, which would keep PostgreSQL from
    dropping the test database at the end.
    """
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def daphne_factory(tmp_path: Path, database_url: str) -> Iterator[Callable[..., Daphne]]:
    """Start real daphne processes on the test database; all are stopped when the test ends.

    ``port`` starts one where a stopped one listened (a restart, as clients see it).
    """
    started: list[Daphne] = []

    def start(
        env: dict[str, str | None] | None = None, extra_args: tuple[str, ...] = (), *, port: int | None = None
    ) -> Daphne:
        base: dict[str, str | None] = {
            "DJANGO_DEBUG": "1",
            # One key for every process, as in production (sessions work across them).
            "DJANGO_SECRET_KEY": "test-only-secret-key-not-for-production-0123456789",
            "DATABASE_URL": database_url,
            "REDIS_URL": None,
            "LOG_LEVEL": "INFO",
        }
        base.update(env or {})
        server = start_daphne(env=base, log_dir=tmp_path, extra_args=extra_args, port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def daphne(daphne_factory: Callable[..., Daphne]) -> Daphne:
    """One daphne on the embedded default (in-memory layer)."""
    return daphne_factory()


@pytest.fixture
def redis_daphne_pair(
    daphne_factory: Callable[..., Daphne], redis_url: str, redis_prefix: str
) -> tuple[Daphne, Daphne]:
    """Two daphne processes sharing one real Redis through channels-redis."""
    env = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
    return daphne_factory(env), daphne_factory(env)


@pytest.fixture
def live_connections(db: None) -> Callable[..., list[Connection]]:
    """Write connection rows as a server process would (for admin and command tests without a server)."""
    counter = iter(range(1_000_000))

    def make(
        count: int = 1,
        *,
        process: ServerProcess | None = None,
        ids: tuple[str, ...] = (),
        heartbeat_age: float = 0.0,
        **fields: Any,
    ) -> list[Connection]:
        now = datetime.now(tz=UTC)
        if process is None:
            n = next(counter)
            process = ServerProcess.objects.create(
                id=uuid.uuid4().hex,
                host=f"host-{n}",
                pid=1000 + n,
                started_at=now - timedelta(hours=1),
                heartbeat_at=now - timedelta(seconds=heartbeat_age),
            )
        connections = [
            Connection(
                temp_id=uuid.uuid4().hex,
                process=process,
                channel_name=f"specific.test!{uuid.uuid4().hex}",
                connected_at=now - timedelta(minutes=i + 1),
                registered_at=now if ids else None,
                last_activity_at=now,
                client_address=fields.get("client_address", "192.0.2.10"),
                user_agent=fields.get("user_agent", "field-client/1.0"),
                origin=fields.get("origin", ""),
            )
            for i in range(count)
        ]
        Connection.objects.bulk_create(connections)
        Registration.objects.bulk_create([Registration(connection=c, recipient=r) for c in connections for r in ids])
        return connections

    return make


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own (never the shared one), which it may stop and start again."""
    server = RedisServer.start()
    yield server
    server.stop()


@pytest.fixture
def run_python() -> Python:
    """Run this Python in the project folder (``"-c", code`` or ``"manage.py", ...``), as harness.servers says."""
    return run_python_process


@pytest.fixture
def manage(run_python: Python) -> Python:
    """Run ``python manage.py ARGS`` as an operator does: ``env`` over ours, output captured."""
    return functools.partial(run_python, "manage.py")


@pytest.fixture(scope="session")
def collected_static(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The static files as ``collectstatic`` gathers them for nginx to serve, as in production."""
    root = tmp_path_factory.mktemp("static")
    done = run_python_process(
        "manage.py",
        "collectstatic",
        "--noinput",
        "-v0",
        env={"DJANGO_DEBUG": "1", "DJANGO_STATIC_ROOT": str(root)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def nginx_binary() -> str:
    """nginx, which the deployment tests run (skip without it, fail under CI)."""
    return require_program("nginx", install_hint=NGINX_HINT)


@pytest.fixture
def systemd_analyze() -> str:
    return require_program("systemd-analyze", install_hint=SYSTEMD_HINT)


@pytest.fixture
def socket_activate() -> str:
    """systemd-socket-activate, which plays notify.socket where no systemd runs as PID 1."""
    return require_program("systemd-socket-activate", install_hint=SYSTEMD_HINT)


@pytest.fixture
def nginx_factory(tmp_path: Path, collected_static: Path, nginx_binary: str) -> Iterator[Callable[[Daphne], Nginx]]:
    """Start a real nginx with deploy/nginx/notify.conf in front of a daphne process."""
    started: list[Nginx] = []

    def start(upstream: Daphne) -> Nginx:
        prefix = tmp_path / f"nginx-{len(started)}"
        server = start_nginx(nginx_binary, upstream=upstream.port, prefix=prefix, static_root=collected_static)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium driven by Playwright (skip without it, fail under CI)."""
    chromium = require_program("chromium", install_hint="install Debian's chromium package (apt install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: NOTIFY_ARTIFACTS when set (CI keeps them), else the test's temporary directory."""
    configured = os.environ.get("NOTIFY_ARTIFACTS", "").strip()
    if not configured:
        return tmp_path
    path = Path(configured)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def old_server() -> Iterator[str]:
    """The old protocol-v1-only server (the benchmark's baseline: greets, relays, never replies); its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.baseline", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, process=process)
        yield f"ws://127.0.0.1:{port}/"
    finally:
        stop_process(process, signal.SIGTERM)
