"""The deploy/ files, rendered with this machine's paths and ports only, run for real.

supervisord (from PyPI) runs the rendered fcgi-program, two daphne processes
serving one socket, on Redis and the test database; the rendered nginx site
sits in front; clients connect through nginx as clients in the field do.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.urls import reverse
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from deploy.render import DEFAULTS, PLACEHOLDER, TEMPLATES, render, render_all
from harness.clients import AdminSession, frame, open_client, receive, register_confirmed
from harness.servers import ROOT, Python, RedisServer, eventually, free_port, nginx_conf, wait_until
from notifications.models import Connection, Registration, ServerProcess
from tests.deploy_servers import (
    TEST_SECRET_KEY,
    Deployment,
    SocketActivated,
    render_deploy,
    set_env_values,
    start_deployment,
    start_systemd_service,
)

DEPLOY = ROOT / "deploy"
DOC = ROOT / "docs" / "DEPLOY.md"
NGINX_HINT = "apt-get install nginx (Debian/Ubuntu)"
# Clients connect from another loopback address than nginx's (127.0.0.1) and
# forge the forwarding headers: the registry must show the address nginx saw.
CLIENT_ADDRESS = "127.0.0.3"
FORGED = {"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6", "X-Real-Port": "666"}
TIMEOUT = 15.0
WITH_ENV = str(ROOT / "bin" / "with-env")


# The files themselves.


def test_every_template_variable_has_a_default_and_a_line_in_the_deployment_doc() -> None:
    used = {name for template in TEMPLATES for name in PLACEHOLDER.findall((DEPLOY / template).read_text())}
    assert used == set(DEFAULTS), f"without a default: {used - set(DEFAULTS)}; unused: {set(DEFAULTS) - used}"
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", DOC.read_text(), flags=re.MULTILINE))
    assert documented == set(DEFAULTS)


def test_the_environment_file_names_every_setting_of_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration (environment variables)", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\| ([^|]+) \|", section, flags=re.MULTILINE)
    settings = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}
    assert len(settings) > 15
    env = render("notify.env")
    # Every NOTIFY_ variable the file names is one the project reads: its own, or one of the app's settings.
    from notifyproject.environment import APP_SETTINGS

    known = settings | {f"NOTIFY_{name}" for name in APP_SETTINGS}
    assert set(re.findall(r"\bNOTIFY_[A-Z_]+\b", env)) <= known
    missing = {name for name in settings if not re.search(rf"\b{name}\b", env)}
    assert not missing, f"deploy/notify.env does not mention {sorted(missing)}"
    assert re.search(r"^DJANGO_SECRET_KEY=$", env, flags=re.MULTILINE), "a template must not ship a key"


def test_every_daphne_launch_in_deploy_goes_through_bin_daphne_with_the_environment_file() -> None:
    supervisor = render("supervisor/notify.conf")
    command = re.search(r"^command=(.*)$", supervisor, flags=re.MULTILINE)
    assert command is not None
    assert command.group(1).endswith("/srv/notify/bin/daphne --fd 0 --access-log -")
    assert re.search(r"^minfds=65536$", supervisor, flags=re.MULTILINE)
    assert re.search(r"^socket=tcp://127\.0\.0\.1:8765$", supervisor, flags=re.MULTILINE)
    service = render("systemd/notify@.service")
    assert re.search(r"^ExecStart=/srv/notify/bin/daphne --fd 3 --access-log -$", service, flags=re.MULTILINE)
    assert re.search(r"^LimitNOFILE=65536$", service, flags=re.MULTILINE)
    assert "ListenStream=127.0.0.1:8765" in render("systemd/notify.socket")
    # Proxy mode is a setting like the others: in the environment file alone, which every launch reads.
    assert re.search(r"^NOTIFY_BEHIND_PROXY=1$", render("notify.env"), flags=re.MULTILINE)
    assert "NOTIFY_BEHIND_PROXY" not in supervisor + service


def test_the_renderer_refuses_an_unknown_variable_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        ["python3", str(DEPLOY / "render.py"), str(tmp_path), "PORTT=9000"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith("deploy/render.py: unknown variable PORTT; known: PROJECT_DIR")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("assignment", "error"),
    [
        ("PROJECT_DIR=/srv/my notify", "PROJECT_DIR='/srv/my notify' is not an absolute path"),
        ("LOG_DIR=/var/log/100%", "LOG_DIR='/var/log/100%' is not an absolute path"),
        ("STATIC_ROOT=static", "STATIC_ROOT='static' is not an absolute path"),
        ("SERVER_NAME=a.example; return 301 x; }", "SERVER_NAME='a.example; return 301 x; }' is not one host name"),
        ("PORT=80a", "PORT='80a' is not a port number"),
        ("PORT=70000", "PORT='70000' is not a port number"),
        ("LISTEN=0", "LISTEN='0' is not a port"),
        ("PROCESSES=two", "PROCESSES='two' is not a positive whole number"),
        ("USER=no body", "USER='no body' is not a user or group name"),
        ("GROUP=", "GROUP='' is not a user or group name"),
    ],
)
def test_the_renderer_refuses_a_value_that_would_break_a_file_in_one_line(
    tmp_path: Path, assignment: str, error: str
) -> None:
    result = subprocess.run(
        ["python3", str(DEPLOY / "render.py"), str(tmp_path / "out"), assignment], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"deploy/render.py: {error}")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_renderer_takes_addresses_as_nginx_does() -> None:
    for listen in ("80", "127.0.0.1:8080", "[::1]:8080", "localhost:80"):
        assert render("nginx/notify.conf", {"LISTEN": listen}).count(f"listen {listen};") == 1


def test_the_environment_file_is_a_valid_configuration_that_needs_only_a_key(tmp_path: Path, manage: Python) -> None:
    values = render_deploy(tmp_path, port=8765, listen_port=80)
    env_file = Path(values["ENV_FILE"])
    env_file.parent.mkdir()
    template = (tmp_path / "deploy" / "notify.env").read_text()

    def deploy_check() -> subprocess.CompletedProcess[str]:
        # Every value goes through the project's settings and its deployment checks, as a server's would.
        return manage(
            "check",
            "--deploy",
            env={"DJANGO_SECRET_KEY": None, "DJANGO_DEBUG": None},
            launcher=(WITH_ENV, str(env_file)),
        )

    env_file.write_text(template)
    as_shipped = deploy_check()
    assert as_shipped.returncode == 1 and "notifyproject.E001" in as_shipped.stderr
    env_file.write_text(set_env_values(template, {"DJANGO_SECRET_KEY": "k" * 50}))
    completed = deploy_check()
    assert completed.returncode == 0, completed.stderr
    assert "ERROR" not in completed.stderr
    assert "(security.W008)" in completed.stderr  # no https redirect before TLS
    # Once TLS is on (docs/DEPLOY.md, "TLS"): no warning left about https (redirect, cookies, HSTS), and the
    # redirect needs proxy mode, which the file sets: X-Forwarded-Proto says what the client used.
    env_file.write_text(set_env_values(template, {"DJANGO_SECRET_KEY": TEST_SECRET_KEY, "DJANGO_HTTPS": "1"}))
    with_tls = deploy_check()
    assert with_tls.returncode == 0, with_tls.stderr
    warned = set(re.findall(r"\((security\.W\d+)\)", with_tls.stderr))
    assert not warned & {"security.W004", "security.W008", "security.W012", "security.W016"}, with_tls.stderr


def test_with_env_passes_values_as_written_without_running_them_as_shell(tmp_path: Path) -> None:
    env_file = tmp_path / "notify.env"
    witness = tmp_path / "ran"
    tricky = f"pa$word; touch {witness} & `touch {witness}` $(touch {witness}) ${{HOME}} spaced  out"
    env_file.write_text(f"# a comment\n  ; another\n\nNOTIFY_A={tricky}\nNOTIFY_B=x\"y'z=w\nNOTIFY_C=last, no newline")
    result = subprocess.run(
        [WITH_ENV, str(env_file), sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    received = json.loads(result.stdout)
    assert received["NOTIFY_A"] == tricky
    assert received["NOTIFY_B"] == "x\"y'z=w"
    assert received["NOTIFY_C"] == "last, no newline"
    assert not witness.exists()


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("DATABASE_URL = postgres://notify:secret@db/notify", "line 3 is not KEY=value"),
        ("export NOTIFY_A=1", "line 3 is not KEY=value"),
        ('DJANGO_SECRET_KEY="secret"', "line 3: the value of DJANGO_SECRET_KEY starts with a quote"),
        ("DJANGO_SECRET_KEY=sec\\ret", "line 3: the value of DJANGO_SECRET_KEY starts with a quote"),
    ],
)
def test_with_env_refuses_a_malformed_line_in_one_line_naming_it(tmp_path: Path, line: str, error: str) -> None:
    env_file = tmp_path / "notify.env"
    env_file.write_text(f"# settings\nNOTIFY_A=1\n{line}\nNOTIFY_B=2\n")
    witness = tmp_path / "ran"
    result = subprocess.run([WITH_ENV, str(env_file), "touch", str(witness)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith(f"Configuration error: {env_file} {error}")
    assert result.stderr.count("\n") == 1 and "secret" not in result.stderr
    assert not witness.exists()


def test_the_nginx_site_passes_nginx_t_with_and_without_rate_limiting(tmp_path: Path, nginx_binary: str) -> None:
    render_deploy(tmp_path, port=8765, listen_port=8080)
    site = tmp_path / "deploy" / "nginx" / "notify.conf"
    limited = tmp_path / "limited.conf"
    limited.write_text(re.sub(r"^(\s*)# (limit_\w+ )", r"\1\2", site.read_text(), flags=re.MULTILINE))
    assert limited.read_text().count("\nlimit_") == 2 and limited.read_text().count("    limit_") == 2
    for name, path in (("plain", site), ("limited", limited)):
        prefix = tmp_path / name
        conf = nginx_conf(prefix, path)
        result = subprocess.run(
            [nginx_binary, "-t", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert "test is successful" in result.stderr


def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path: Path, systemd_analyze: str) -> None:
    values = render_deploy(tmp_path, port=8765, listen_port=80)
    Path(values["ENV_FILE"]).parent.mkdir()
    Path(values["ENV_FILE"]).write_text("")
    units = tmp_path / "deploy" / "systemd"
    # verify reports bad lines as warnings with exit code 0: no output at all is the pass.
    result = subprocess.run(
        [systemd_analyze, "verify", str(units / "notify.socket"), str(units / "notify@.service")],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_renderer_writes_every_template_with_the_defaults(tmp_path: Path) -> None:
    written = render_all(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(TEMPLATES)
    for path in written:
        assert not PLACEHOLDER.search(path.read_text()), path
    assert "alias /var/www/notify/static/;" in (tmp_path / "nginx" / "notify.conf").read_text()


# The deployment running.


def deployment_settings(database_url: str, redis_url: str, redis_prefix: str) -> dict[str, str]:
    return {
        "DJANGO_SECRET_KEY": TEST_SECRET_KEY,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": redis_prefix,
    }


@sync_to_async
def process_of(recipient: str) -> int | None:
    """The pid of the daphne process that holds the connection registered as ``recipient``."""
    row = Registration.objects.filter(recipient=recipient).select_related("connection__process").first()
    return row.connection.process.pid if row else None


@sync_to_async
def announced_pids() -> set[int]:
    return set(ServerProcess.objects.values_list("pid", flat=True))


@sync_to_async
def addresses_on(pids: set[int]) -> set[str]:
    return set(Connection.objects.filter(process__pid__in=pids).values_list("client_address", flat=True))


async def deployment_ready(deployment: Deployment, *, gone: int | None = None, processes: int = 2) -> dict[str, int]:
    """Wait until supervisord runs ``processes`` daphne processes (none of them ``gone``) and each announced itself."""

    async def ready() -> bool:
        pids = await asyncio.to_thread(deployment.supervisor.running_pids)
        return len(pids) == processes and gone not in pids.values() and set(pids.values()) <= await announced_pids()

    try:
        await eventually(ready, seconds=30, interval=0.2)
    except TimeoutError:
        raise AssertionError(f"not ready: {deployment.supervisor.processes()}\n{deployment.server_logs()}") from None
    return await asyncio.to_thread(deployment.supervisor.running_pids)


class Client:
    def __init__(self, ws: ClientConnection, recipient: str) -> None:
        self.ws = ws
        self.recipient = recipient
        self.pid: int | None = None


async def connect_client(url: str, recipient: str) -> Client:
    ws = await open_client(url, additional_headers=FORGED, local_addr=(CLIENT_ADDRESS, 0))
    await register_confirmed(ws, recipient, seconds=TIMEOUT)
    client = Client(ws, recipient)

    async def recorded() -> bool:
        client.pid = await process_of(recipient)
        return client.pid is not None

    await eventually(recorded, seconds=TIMEOUT)
    return client


async def clients_on_every_process(url: str, pids: set[int], *, prefix: str, at_least: int = 4) -> list[Client]:
    """Connect clients through nginx (in small bursts) until every daphne process holds at least one."""
    numbers = itertools.count()
    clients: list[Client] = []
    while len(clients) < 40:
        burst = [connect_client(url, f"{prefix}-{next(numbers)}") for _ in range(4)]
        clients += await asyncio.gather(*burst)
        if len(clients) >= at_least and {c.pid for c in clients} >= pids:
            return clients
    raise AssertionError(f"40 clients through nginx, all on {sorted({c.pid for c in clients})}, none on the others")


async def probe_until_received(sender: ClientConnection, receiver: Client, text: str) -> None:
    """Send ``text`` to the receiver's id until it arrives (each attempt bounded); fail after TIMEOUT."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    for attempt in itertools.count():
        token = f"{text}#{attempt}"
        await sender.send(frame(receiver.recipient, token))
        try:
            async with asyncio.timeout(0.5):
                while not (await receive(receiver.ws)).startswith(f"{text}#"):
                    pass
            return
        except TimeoutError:
            if loop.time() > deadline:
                raise AssertionError(f"{text!r} never reached {receiver.recipient}") from None


async def every_client_reaches_every_other(clients: list[Client]) -> None:
    for sender, receiver in itertools.permutations(clients, 2):
        await sender.ws.send(frame(receiver.recipient, f"from {sender.recipient}"))
    for receiver in clients:
        expected = {f"from {c.recipient}" for c in clients if c is not receiver}
        got = {await receive(receiver.ws, TIMEOUT) for _ in expected}
        assert got == expected, receiver.recipient


async def notify_reaches(deployment: Deployment, client: Client, text: str) -> None:
    result = await asyncio.to_thread(deployment.manage, "notify", client.recipient, text)
    assert result.returncode == 0, result.stderr
    assert await receive(client.ws, TIMEOUT) == text


def static_response(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """The status and headers of a GET of ``url``."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def is_open(client: Client) -> bool:
    return client.ws.state is State.OPEN


def open_file_soft_limit(pid: int) -> int:
    limits = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"^Max open files\s+(\d+)", limits, flags=re.MULTILINE)
    assert match is not None
    return int(match.group(1))


@pytest.fixture
def deployments() -> Iterator[list[Deployment]]:
    started: list[Deployment] = []
    yield started
    for deployment in started:
        deployment.stop()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("async_db")
async def test_supervisord_runs_two_daphne_processes_on_one_socket_behind_nginx_and_restarts_a_killed_one(
    tmp_path: Path,
    nginx_binary: str,
    deployments: list[Deployment],
    database_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    settings = deployment_settings(database_url, redis_url, redis_prefix)
    deployment = start_deployment(tmp_path, settings=settings, nginx_binary=nginx_binary)
    deployments.append(deployment)
    collected = await asyncio.to_thread(deployment.manage, "collectstatic", "--noinput")
    assert collected.returncode == 0, collected.stderr
    pids = await deployment_ready(deployment)
    nginx = deployment.nginx
    assert nginx is not None
    # supervisord's minfds reached the daphne processes.
    for pid in pids.values():
        assert open_file_soft_limit(pid) == int(deployment.values["NOFILE"])

    # Clients through nginx land on both processes; each registry row shows the client's own address.
    clients = await clients_on_every_process(nginx.url, set(pids.values()), prefix="field")
    assert await addresses_on(set(pids.values())) == {CLIENT_ADDRESS}
    assert CLIENT_ADDRESS in deployment.access_logs() and "6.6.6.6" not in deployment.access_logs()
    await every_client_reaches_every_other(clients)
    await notify_reaches(deployment, clients[0], "image2video")
    await notify_reaches(deployment, clients[-1], "sent by manage.py notify")

    # The admin through nginx shows the real address; its static files come from nginx, not daphne.
    await sync_to_async(User.objects.create_superuser)("root", password="root-password")
    session = AdminSession(nginx.http_url)
    await asyncio.to_thread(session.log_in, "root", "root-password")
    status, page = await asyncio.to_thread(session.get, reverse("admin:notifications_connection_changelist"))
    assert status == 200 and f'<td class="field-client_address">{CLIENT_ADDRESS}</td>' in page
    assert "6.6.6.6" not in page
    status, css = await asyncio.to_thread(session.get, "/static/admin/css/base.css")
    assert status == 200 and css == (Path(deployment.values["STATIC_ROOT"]) / "admin/css/base.css").read_text()
    # No long expiry on names without a hash: revalidated each time, a 304 while unchanged.
    css_url = f"{nginx.http_url}/static/admin/css/base.css"
    status, headers = await asyncio.to_thread(static_response, css_url, {})
    assert status == 200 and headers["Cache-Control"] == "no-cache" and "Expires" not in headers, headers
    status, _ = await asyncio.to_thread(static_response, css_url, {"If-None-Match": headers["ETag"]})
    assert status == 304
    assert "/admin/login/" in deployment.access_logs() and "/static/" not in deployment.access_logs()

    # SIGKILL one process: supervisord starts another; the other process's clients notice nothing.
    killed_name, killed_pid = next((name, pid) for name, pid in pids.items())
    victims = [c for c in clients if c.pid == killed_pid]
    survivors = [c for c in clients if c.pid != killed_pid]
    os.kill(killed_pid, signal.SIGKILL)
    assert victims and survivors
    for client in victims:
        await asyncio.wait_for(client.ws.wait_closed(), TIMEOUT)
    new_pids = await deployment_ready(deployment, gone=killed_pid)
    assert new_pids[killed_name] != killed_pid
    assert {name: pid for name, pid in new_pids.items() if name != killed_name} == {
        name: pid for name, pid in pids.items() if name != killed_name
    }
    assert all(is_open(c) for c in survivors)
    for client in survivors:
        await notify_reaches(deployment, client, f"still here, {client.recipient}")

    # The killed process's rows are gone (the new one purged them on start); its clients reconnect and receive.
    async def killed_rows_gone() -> bool:
        return killed_pid not in await announced_pids()

    await eventually(killed_rows_gone, seconds=TIMEOUT)
    reconnected = [await connect_client(nginx.url, victim.recipient) for victim in victims]
    await every_client_reaches_every_other(reconnected + survivors)
    for client in reconnected + survivors:
        await client.ws.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("async_db")
async def test_after_redis_comes_back_registered_clients_receive_again_without_reconnecting(
    tmp_path: Path,
    nginx_binary: str,
    deployments: list[Deployment],
    database_url: str,
    own_redis: RedisServer,
    redis_prefix: str,
) -> None:
    redis = own_redis
    settings = deployment_settings(database_url, redis.url, redis_prefix)
    deployment = start_deployment(tmp_path, settings=settings, nginx_binary=nginx_binary)
    deployments.append(deployment)
    pids = await deployment_ready(deployment)
    nginx = deployment.nginx
    assert nginx is not None
    clients = await clients_on_every_process(nginx.url, set(pids.values()), prefix="before", at_least=2)
    await every_client_reaches_every_other(clients)

    redis.stop()
    # Each process notices; a notification meanwhile is lost, counted and logged with its id.
    await wait_until(
        lambda: all("Reading from Redis failed" in log for log in deployment.server_logs().values()), seconds=TIMEOUT
    )
    await clients[0].ws.send(frame(clients[1].recipient, "lost while Redis is down"))
    await wait_until(
        lambda: any(
            f"Undeliverable notification for '{clients[1].recipient}'" in log
            for log in deployment.server_logs().values()
        ),
        seconds=TIMEOUT,
    )
    redis.start_again()

    for sender, receiver in itertools.permutations(clients, 2):
        await probe_until_received(sender.ws, receiver, f"after the outage {sender.recipient}")
    await notify_reaches(deployment, clients[0], "sent by manage.py notify after the outage")
    assert all(is_open(c) for c in clients)
    assert await asyncio.to_thread(deployment.supervisor.running_pids) == pids
    for name, log in deployment.server_logs().items():
        assert "Traceback" not in log, name
    for client in clients:
        await client.ws.close()


def render_with_settings(workdir: Path, settings: dict[str, str]) -> dict[str, str]:
    """Render deploy/ into ``workdir`` and install its environment file with ``settings``; the variables."""
    values = render_deploy(workdir, port=free_port(), listen_port=free_port())
    env_file = Path(values["ENV_FILE"])
    env_file.parent.mkdir()
    env_file.write_text(set_env_values((workdir / "deploy" / "notify.env").read_text(), settings))
    Path(values["STATIC_ROOT"]).mkdir()  # collectstatic's (whitenoise warns while it is missing)
    return values


@pytest.fixture
def systemd_services() -> Iterator[list[SocketActivated]]:
    started: list[SocketActivated] = []
    yield started
    for service in started:
        service.stop()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("async_db")
async def test_the_systemd_units_exec_start_serves_the_socket_units_address_with_the_environment_file(
    tmp_path: Path,
    systemd_services: list[SocketActivated],
    socket_activate: str,
    manage: Python,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
) -> None:
    values = render_with_settings(tmp_path, deployment_settings(database_url, redis_url, redis_prefix))
    env_file = Path(values["ENV_FILE"])
    service = start_systemd_service(socket_activate, tmp_path, values)
    systemd_services.append(service)
    assert service.url == f"ws://127.0.0.1:{values['PORT']}/"

    # As notify.socket does, systemd-socket-activate listens first and starts the service on the first connection.
    await wait_until(lambda: f"Listening on 127.0.0.1:{values['PORT']} " in service.log.read_text(), seconds=TIMEOUT)
    try:
        receiver = await open_client(service.url)
        await register_confirmed(receiver, "systemd-receiver", seconds=TIMEOUT)
        sender = await open_client(service.url)
        await sender.send(frame("systemd-receiver", "through the systemd unit"))
        assert await receive(receiver, TIMEOUT) == "through the systemd unit"
    except Exception as exc:  # a service that fails to start: show its log
        raise AssertionError(f"{exc!r}\n{service.log.read_text(errors='replace')}") from exc
    # The registry row (written in batches) is the unit's daphne's, in the environment file's database.
    pid = service.process.pid

    async def recorded() -> bool:
        return await process_of("systemd-receiver") == pid

    await eventually(recorded, seconds=TIMEOUT)
    # manage.py reaches the unit's process through Redis (the environment file's REDIS_URL and prefix).
    sent = await asyncio.to_thread(
        manage,
        "notify",
        "systemd-receiver",
        "by manage.py notify",
        env={"REDIS_URL": None, "DATABASE_URL": None, "DJANGO_SECRET_KEY": None},
        launcher=(WITH_ENV, str(env_file)),
    )
    assert sent.returncode == 0, sent.stderr
    assert await receive(receiver, TIMEOUT) == "by manage.py notify"

    # SIGTERM, as systemctl stop sends: the process leaves and removes its rows from the registry.
    await asyncio.to_thread(service.stop)
    await asyncio.wait_for(receiver.wait_closed(), TIMEOUT)
    assert pid not in await announced_pids()
    log = service.log.read_text(errors="replace")
    assert '"WSCONNECT /"' in log and "Traceback" not in log, log  # the access log (stdout) and the server's log


def test_nginx_gives_up_a_silent_upstream_just_after_the_ping_interval_and_timeout() -> None:
    """daphne pings at least every NOTIFY_PING_INTERVAL, so a live upstream is never silent longer than
    interval + timeout; nginx's timeouts sit just above that, so a vanished host is noticed in minutes."""
    env = render("notify.env")
    interval = int(re.search(r"^NOTIFY_PING_INTERVAL=(\d+)$", env, flags=re.MULTILINE).group(1))  # type: ignore[union-attr]
    timeout = int(re.search(r"^NOTIFY_PING_TIMEOUT=(\d+)$", env, flags=re.MULTILINE).group(1))  # type: ignore[union-attr]
    site = render("nginx/notify.conf")
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        seconds = int(re.search(rf"^\s*{directive} (\d+)s;$", site, flags=re.MULTILINE).group(1))  # type: ignore[union-attr]
        assert interval + timeout < seconds <= interval + timeout + 30, directive
