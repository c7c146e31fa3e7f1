from __future__ import annotations

import os
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

from harness.servers import ROOT, Daphne, Nginx, RedisServer, child_env, start_daphne, start_nginx, url_of_database
from notifications.models import Connection, Registration, ServerProcess
from tests.programs import require_program


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start daphne need the test database, which the daphne processes write to.

    pytest-django creates it only when a collected test is marked ``django_db``;
    transactional, so the test process holds no lock that the servers would wait on.
    """
    for item in items:
        if "daphne_factory" in getattr(item, "fixturenames", ()) and item.get_closest_marker("django_db") is None:
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
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "notifications.layers.InMemoryLayer"}}


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


@pytest.fixture(scope="session")
def collected_static(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The static files as ``collectstatic`` gathers them for nginx to serve, as in production."""
    root = tmp_path_factory.mktemp("static")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=ROOT,
        env=child_env({"DJANGO_DEBUG": "1", "DJANGO_STATIC_ROOT": str(root)}),
        check=True,
        timeout=120,
    )
    return root


@pytest.fixture
def nginx_factory(tmp_path: Path, collected_static: Path) -> Iterator[Callable[[Daphne], Nginx]]:
    """Start a real nginx with deploy/nginx/notify.conf in front of a daphne process."""
    binary = require_program("nginx", install_hint="apt-get install nginx (Debian/Ubuntu)")
    started: list[Nginx] = []

    def start(upstream: Daphne) -> Nginx:
        prefix = tmp_path / f"nginx-{len(started)}"
        server = start_nginx(binary, upstream=upstream.port, prefix=prefix, static_root=collected_static)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
