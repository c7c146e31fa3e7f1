"""Several hosts: the deploy/ files on two "hosts" and nginx on a third, built with Linux network namespaces.

Three network namespaces on one bridge play three machines (issue 21):

- host A (10.77.N.2) and host B (10.77.N.3) each run the rendered supervisord
  program (two daphne processes on the shared socket), bound to the host's own
  address, with their own host name and environment file;
- the proxy (10.77.N.4) runs the rendered nginx site, balancing over both hosts;
- the root namespace (10.77.N.1) is the rest of the world: Redis, bound to the
  bridge address, the monitoring host that scrapes ``/metrics``, and the clients.

The database is a SQLite file that every process opens (namespaces share the
filesystem; PostgreSQL here listens on 127.0.0.1 alone). Each host also gets a
mount namespace of its own, so that cutting host B off takes the database away
from it too, as a real host loses a networked database with its network.

Host B is then cut off (its end of the veth pair set down: no FIN, no RST, no
close frame) and the test follows what the operator and the clients see.
Needs root, ``ip`` (iproute2), ``unshare``/``nsenter`` (util-linux), nginx,
supervisord (requirements-dev.txt) and redis-server: skipped without them,
failed under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import getpass
import grp
import itertools
import json
import os
import random
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection

from deploy.render import render_all
from harness.clients import (
    PROBE_PREFIX,
    AdminSession,
    Closed,
    ResumingClient,
    frame,
    is_probe,
    open_client,
    register,
)
from harness.servers import ROOT, child_env, find_program, nginx_conf, redis_server_binary, run_python, stop_process
from harness.servers import wait_for_port as wait_for_port_blocking
from tests.deploy_servers import (
    TEST_SECRET_KEY,
    Supervisor,
    open_file_limit,
    set_env_values,
    write_supervisord_config,
)
from tests.programs import IN_CI

# Keep-alive shortened so that a cut host is noticed in seconds (README, "Configuration"), and nginx's timeouts
# scaled by deploy/nginx/notify.conf's own rule: just above the ping interval plus the ping timeout.
PING_INTERVAL = 2
PING_TIMEOUT = 3
NGINX_READ_TIMEOUT = PING_INTERVAL + PING_TIMEOUT + 2
# The registry: a heartbeat a second, purged after three silent ones (README, "How the registry stays true").
HEARTBEAT_INTERVAL = 1
STALE_AFTER = 3
PROCESSES_PER_HOST = 2
DAPHNE_PORT = 8765
TIMEOUT = 15.0
# A connection that nginx first tries on the cut host waits for its proxy_connect_timeout (3 s), then goes on.
RECONNECT_TIMEOUT = 30.0
SLACK = 4.0  # for a busy two-core machine
ADMIN_PASSWORD = "root-password-for-the-hosts-test"
# Forged by every client: the registry must show the address nginx saw (NOTIFY_TRUSTED_PROXIES names nginx).
FORGED = {"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6", "X-Real-Port": "666"}
# Run inside a host's namespaces: take its host name, then become supervisord.
SET_HOSTNAME_AND_EXEC = "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execv(sys.argv[2], sys.argv[2:])"


# What the test needs, or a skip (a failure under CI=true) that says what to install.


def unavailable(message: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{message} (CI=true: .ci/run must provide it)")
    pytest.skip(message)


def required_program(name: str, hint: str) -> str:
    path = find_program(name)
    if path is None:
        unavailable(f"{name} is not installed: {hint}")
    return path


@dataclass(frozen=True)
class Programs:
    ip: str
    unshare: str
    nsenter: str
    nginx: str
    supervisord: str
    redis_server: str


def required_programs(nginx: str) -> Programs:
    if os.geteuid() != 0:
        unavailable("the hosts test builds network namespaces: it needs root (CI runs it as root)")
    supervisord = Path(sys.executable).parent / "supervisord"
    if not supervisord.exists():
        unavailable("supervisord is not installed: pip install -r requirements-dev.txt")
    redis = redis_server_binary()
    if redis is None:
        unavailable("redis-server is not installed: apt-get install redis-server (Debian/Ubuntu)")
    return Programs(
        ip=required_program("ip", "apt-get install iproute2 (Debian/Ubuntu)"),
        unshare=required_program("unshare", "apt-get install util-linux (Debian/Ubuntu)"),
        nsenter=required_program("nsenter", "apt-get install util-linux (Debian/Ubuntu)"),
        nginx=nginx,
        supervisord=str(supervisord),
        redis_server=redis,
    )


def run(*argv: str) -> str:
    """Run a system command to completion; its output, or an error with what it said."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


# The network: a bridge in the root namespace, one namespace per machine on a veth pair.


@dataclass
class Namespace:
    name: str
    address: str
    outer_link: str  # the root namespace's end of the veth pair, on the bridge
    inner_link: str = "eth0"


@dataclass
class Network:
    """A /24 of the test's own: names carry a random tag, so that two runs at once never meet."""

    ip: str
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    subnet: str = ""
    namespaces: list[Namespace] = field(default_factory=list)
    bridge_up: bool = False

    @property
    def bridge(self) -> str:
        return f"nh{self.tag}br"  # interface names: 15 characters at most

    def address(self, last: int) -> str:
        return f"{self.subnet}.{last}"

    def create_bridge(self) -> None:
        try:
            run(self.ip, "link", "add", self.bridge, "type", "bridge")
        except RuntimeError as exc:
            unavailable(f"cannot create network interfaces here: {exc}")
        self.bridge_up = True
        # A subnet no interface uses yet, chosen and taken under a lock: suites may run side by side (.ci/run).
        with (Path(tempfile.gettempdir()) / "notify-hosts-subnets.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = run(self.ip, "-4", "-o", "addr", "show")
            self.subnet = f"10.77.{random.choice([n for n in range(256) if f' 10.77.{n}.' not in used])}"
            run(self.ip, "addr", "add", f"{self.address(1)}/24", "dev", self.bridge)
        run(self.ip, "link", "set", self.bridge, "up")

    def add_namespace(self, suffix: str, last: int) -> Namespace:
        namespace = Namespace(f"notify-hosts-{self.tag}-{suffix}", self.address(last), f"nh{self.tag}{suffix[0]}")
        try:
            run(self.ip, "netns", "add", namespace.name)
        except RuntimeError as exc:
            unavailable(f"cannot create network namespaces here: {exc}")
        self.namespaces.append(namespace)
        inside = (self.ip, "-n", namespace.name)
        run(self.ip, "link", "add", namespace.outer_link, "type", "veth", "peer", "name", namespace.inner_link,
            "netns", namespace.name)  # fmt: skip
        run(self.ip, "link", "set", namespace.outer_link, "master", self.bridge, "up")
        run(*inside, "addr", "add", f"{namespace.address}/24", "dev", namespace.inner_link)
        run(*inside, "link", "set", namespace.inner_link, "up")
        run(*inside, "link", "set", "lo", "up")
        return namespace

    def cut(self, namespace: Namespace) -> None:
        """The namespace's end of its link down: its peers hear nothing more, not even a reset."""
        run(self.ip, "-n", namespace.name, "link", "set", namespace.inner_link, "down")

    def pids(self, namespace: Namespace) -> list[int]:
        return [int(pid) for pid in run(self.ip, "netns", "pids", namespace.name).split()]

    def destroy(self) -> list[str]:
        """Kill whatever still runs in the namespaces (all started by this test), delete them and the bridge."""
        problems: list[str] = []
        for namespace in self.namespaces:
            try:
                for pid in self.pids(namespace):
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                # One end of a veth pair takes the other with it.
                run(self.ip, "link", "del", namespace.outer_link)
            except Exception as exc:
                if "Cannot find device" not in str(exc):  # never made: the test failed before
                    problems.append(f"namespace {namespace.name}: {exc}")
            try:
                run(self.ip, "netns", "del", namespace.name)
            except Exception as exc:
                problems.append(f"namespace {namespace.name}: {exc}")
        if self.bridge_up:
            try:
                run(self.ip, "link", "del", self.bridge)
            except Exception as exc:
                problems.append(f"bridge {self.bridge}: {exc}")
        return problems


# The machines.


@dataclass
class Host:
    """One host: the rendered deploy/ files, supervisord running them inside the host's namespaces."""

    name: str
    namespace: Namespace
    workdir: Path
    supervisor: Supervisor

    def running_pids(self) -> set[int]:
        return set(self.supervisor.running_pids().values())

    def server_logs(self) -> str:
        return "".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted((self.workdir / "log").glob("*.log"))
        )


@dataclass
class Lab:
    """Everything the test builds, torn down in :meth:`teardown` whatever happened."""

    programs: Programs
    workdir: Path
    network: Network
    database: Path
    redis: subprocess.Popen[bytes] | None = None
    redis_url: str = ""
    nginx: subprocess.Popen[bytes] | None = None
    hosts: dict[str, Host] = field(default_factory=dict)

    def teardown(self) -> None:
        problems: list[str] = []
        if self.nginx is not None:
            stop_process(self.nginx, timeout=10)
        for host in self.hosts.values():
            try:
                host.supervisor.stop()
            except Exception as exc:
                problems.append(f"{host.name}: {exc}")
        problems += self.network.destroy()
        if self.redis is not None:
            stop_process(self.redis, timeout=10)
        assert not problems, problems


@pytest.fixture
def lab(tmp_path: Path, nginx_binary: str) -> Iterator[Lab]:
    programs = required_programs(nginx_binary)
    network = Network(programs.ip)
    built = Lab(programs=programs, workdir=tmp_path, network=network, database=tmp_path / "db" / "notify.sqlite3")
    try:
        network.create_bridge()
        yield built
    finally:
        built.teardown()


def start_redis(lab: Lab) -> None:
    """redis-server in the root namespace, bound to the bridge: every host reaches it over the network."""
    address = lab.network.address(1)
    with socket.socket() as probe:
        probe.bind((address, 0))
        port = probe.getsockname()[1]
    workdir = lab.workdir / "redis"
    workdir.mkdir()
    lab.redis = subprocess.Popen(
        [lab.programs.redis_server, "--port", str(port), "--bind", address, "--protected-mode", "no",
         "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_port_blocking(port, host=address, process=lab.redis)
    lab.redis_url = f"redis://{address}:{port}/0"


HOST_NUMBERS = {"host-a": 2, "host-b": 3}  # each host's address on the bridge: 10.77.N.<number>


def render_machine(lab: Lab, name: str) -> dict[str, str]:
    """deploy/render.py's templates for one machine, with its folders and nginx's address as the server name."""
    workdir = lab.workdir / name
    proxy = lab.network.address(4)
    values = {
        "PROJECT_DIR": str(ROOT),
        "USER": getpass.getuser(),
        "GROUP": grp.getgrgid(os.getgid()).gr_name,
        "ENV_FILE": str(workdir / "etc" / "notify.env"),
        "LOG_DIR": str(workdir / "log"),
        "STATIC_ROOT": str(lab.workdir / "static"),
        "PORT": str(DAPHNE_PORT),
        "PROCESSES": str(PROCESSES_PER_HOST),
        "NOFILE": open_file_limit(),
        "SERVER_NAME": proxy,
        "LISTEN": f"{proxy}:80",
        # Each host's socket on its own address; nginx's upstream lists both.
        "BIND": lab.network.address(HOST_NUMBERS[name]) if name in HOST_NUMBERS else "127.0.0.1",
        "UPSTREAMS": ",".join(f"{lab.network.address(n)}:{DAPHNE_PORT}" for n in HOST_NUMBERS.values()),
    }
    render_all(workdir / "deploy", values)
    return values


def replace_once(text: str, pattern: str, replacement: str, what: str) -> str:
    text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count == 1, f"the rendered file has no single {what}"
    return text


def host_settings(lab: Lab) -> dict[str, str]:
    """The environment file's settings, the same on both hosts (docs/DEPLOY.md, "processes on more hosts")."""
    return {
        "DJANGO_SECRET_KEY": TEST_SECRET_KEY,
        "DATABASE_URL": f"sqlite:///{lab.database}",
        "REDIS_URL": lab.redis_url,
        "REDIS_PREFIX": f"hosts{lab.network.tag}",
        # nginx's address: its X-Real-IP alone is believed (daphne listens where other hosts reach it).
        "NOTIFY_TRUSTED_PROXIES": lab.network.address(4),
        "NOTIFY_PING_INTERVAL": str(PING_INTERVAL),
        "NOTIFY_PING_TIMEOUT": str(PING_TIMEOUT),
        "NOTIFY_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
        "NOTIFY_STALE_AFTER": str(STALE_AFTER),
        # The monitoring host: the root namespace.
        "NOTIFY_METRICS_ALLOWED_ADDRESSES": lab.network.address(1),
        "NOTIFY_DRAIN_SECONDS": "1",  # the teardown's SIGTERM
    }


def write_environment_file(lab: Lab, values: dict[str, str]) -> Path:
    env_file = Path(values["ENV_FILE"])
    env_file.parent.mkdir(parents=True)
    template = (env_file.parent.parent / "deploy" / "notify.env").read_text()
    env_file.write_text(set_env_values(template, host_settings(lab)))
    return env_file


def prepare_database(lab: Lab, env_file: Path) -> None:
    """Tables and an admin user in the shared SQLite file, through the environment file as an operator would."""
    lab.database.parent.mkdir()
    code = (
        "import django; django.setup()\n"
        "from django.core.management import call_command\n"
        "from django.contrib.auth.models import User\n"
        "call_command('migrate', verbosity=0)\n"
        f"User.objects.create_superuser('root', password={ADMIN_PASSWORD!r})\n"
    )
    done = run_python(
        "-c",
        code,
        env={"REDIS_URL": None, "DATABASE_URL": None, "DJANGO_SECRET_KEY": None},
        timeout=120,
        launcher=(str(ROOT / "bin" / "with-env"), str(env_file)),
    )
    assert done.returncode == 0, done.stderr


def start_host(lab: Lab, name: str, namespace: Namespace, values: dict[str, str]) -> Host:
    """supervisord with the rendered program, inside the host's network namespace, host name and mounts.

    The program's shared socket is bound to the host's own address (rendered with
    BIND, docs/DEPLOY.md, "processes on more hosts"), so that nginx on the proxy reaches it.
    """
    workdir = lab.workdir / name
    Path(values["LOG_DIR"]).mkdir()
    program = workdir / "deploy" / "supervisor" / "notify.conf"
    assert f"socket=tcp://{namespace.address}:{DAPHNE_PORT}\n" in program.read_text()
    # Its control socket is a pathname socket: those cross network namespaces.
    config = write_supervisord_config(workdir, program)
    programs = lab.programs
    with (workdir / "launch.log").open("wb") as launch_log:
        process = subprocess.Popen(
            # ip netns exec, unshare and the Python line each exec the next: the process is supervisord in the end.
            [programs.ip, "netns", "exec", namespace.name, programs.unshare, "--uts", "--mount", "--",
             sys.executable, "-c", SET_HOSTNAME_AND_EXEC, name, programs.supervisord, "-c", str(config.conf)],
            cwd=workdir,
            env=child_env({"REDIS_URL": None, "DATABASE_URL": None, "DJANGO_SECRET_KEY": None}),
            stdout=launch_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    supervisor = Supervisor(process=process, rpc_socket=config.rpc_socket, log=config.log, _rundir=config.rundir)
    host = Host(name, namespace, workdir, supervisor)
    lab.hosts[name] = host
    return host


def start_nginx(lab: Lab, namespace: Namespace, values: dict[str, str]) -> str:
    """The rendered nginx site in the proxy's namespace, its upstream both hosts' sockets; its WebSocket URL.

    Its read and send timeouts are scaled to the shortened keep-alive by the
    site's own rule (just above the ping interval plus the ping timeout).
    """
    prefix = lab.workdir / "proxy" / "nginx"
    site_path = lab.workdir / "proxy" / "deploy" / "nginx" / "notify.conf"
    site = site_path.read_text()
    for host in lab.hosts.values():
        assert f"    server {host.namespace.address}:{DAPHNE_PORT};\n" in site
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        site = replace_once(site, rf"^(\s*{directive}) 100s;$", rf"\1 {NGINX_READ_TIMEOUT}s;", f"{directive} 100s")
    site_path.write_text(site)
    Path(values["STATIC_ROOT"]).mkdir(exist_ok=True)
    conf = nginx_conf(prefix, site_path)
    lab.nginx = subprocess.Popen(
        [lab.programs.ip, "netns", "exec", namespace.name, lab.programs.nginx, "-p", str(prefix),
         "-e", str(prefix / "error.log"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_for_port_blocking(80, host=namespace.address, process=lab.nginx, timeout=15)
    return f"ws://{namespace.address}/"


def cut_off(lab: Lab, host: Host) -> None:
    """The host's link down, and the database (a file here, a server on the network in production) out of reach."""
    lab.network.cut(host.namespace)
    # In the host's own mount namespace only: an empty read-only folder over the database's.
    run(lab.programs.nsenter, "--target", str(host.supervisor.process.pid), "--mount", "--",
        "mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(lab.database.parent))  # fmt: skip


# The registry, read from the shared database file.


def query(database: Path, sql: str, *parameters: object) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(database, timeout=10)) as db:
        return db.execute(sql, parameters).fetchall()


async def registered_processes(lab: Lab) -> set[tuple[str, int]]:
    rows = await asyncio.to_thread(query, lab.database, "SELECT host, pid FROM notifications_serverprocess")
    return {(str(host), int(str(pid))) for host, pid in rows}


async def hosts_of(lab: Lab, recipient: str) -> set[str]:
    rows = await asyncio.to_thread(
        query,
        lab.database,
        "SELECT p.host FROM notifications_registration r"
        " JOIN notifications_connection c ON c.temp_id = r.connection_id"
        " JOIN notifications_serverprocess p ON p.id = c.process_id WHERE r.recipient = ?",
        recipient,
    )
    return {str(host) for (host,) in rows}


async def connections_by_host(lab: Lab) -> dict[str, int]:
    rows = await asyncio.to_thread(
        query,
        lab.database,
        "SELECT p.host, count(c.temp_id) FROM notifications_serverprocess p"
        " LEFT JOIN notifications_connection c ON c.process_id = p.id GROUP BY p.host",
    )
    return {str(host): int(str(count)) for host, count in rows}


async def client_addresses(lab: Lab) -> set[str]:
    rows = await asyncio.to_thread(query, lab.database, "SELECT DISTINCT client_address FROM notifications_connection")
    return {str(address) for (address,) in rows}


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, seconds: float, what: str, interval: float = 0.1
) -> None:
    """Poll ``condition`` (a query of another process's state) until true; fail naming ``what`` after ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while not await condition():  # noqa: ASYNC110 (the event is in other processes: nothing to await)
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"not within {seconds} s: {what}") from None


async def hosts_ready(lab: Lab) -> dict[str, set[int]]:
    """Wait until supervisord runs every daphne process on every host and each announced itself in the registry."""

    async def ready() -> bool:
        for host in lab.hosts.values():
            if len(await asyncio.to_thread(host.running_pids)) != PROCESSES_PER_HOST:
                return False
        expected = {(h.name, pid) for h in lab.hosts.values() for pid in await asyncio.to_thread(h.running_pids)}
        return expected <= await registered_processes(lab)

    try:
        await wait_for(ready, seconds=45, what="every daphne process of every host running and announced")
    except AssertionError as exc:
        logs = "\n".join(f"== {h.name}\n{h.server_logs()}" for h in lab.hosts.values())
        raise AssertionError(f"{exc}\n{logs}") from None
    return {name: await asyncio.to_thread(host.running_pids) for name, host in lab.hosts.items()}


def admin_cell(page: str, column: str, text: str, *, link: bool = False) -> bool:
    """Whether an admin changelist ``page`` has a cell of ``column`` showing exactly ``text`` (in a link)."""
    shown = rf'<a href="[^"]*">{re.escape(text)}</a>' if link else re.escape(text)
    return re.search(rf'<t[dh] class="field-{column}[^"]*">{shown}</t[dh]>', page) is not None


# /metrics, scraped from one host by the monitoring host.


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The samples of a /metrics answer: name -> labels -> value."""
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def open_connections_by_process(samples: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> dict[str, float]:
    return {dict(labels)["process"]: value for labels, value in samples["notify_connections_open"].items()}


# The clients: v1 clients of the field through nginx, v2 clients that resume, and a back-end that sends.


@dataclass
class FieldClient:
    """One connection of a v1 client through nginx: what it received, and the host its registration landed on."""

    ws: ClientConnection
    recipient: str
    host: str = ""
    received: list[str] = field(default_factory=list)

    async def read_until(self, texts: list[str], seconds: float = TIMEOUT) -> None:
        """Read (registration probes aside) until every one of ``texts`` has arrived, or fail after ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                while not set(texts) <= set(self.received):
                    data = await self.ws.recv()
                    if not is_probe(data):
                        self.received.append(str(data))
        except TimeoutError:
            missing = sorted(set(texts) - set(self.received))
            raise AssertionError(f"{self.recipient} on {self.host}: missing {missing}") from None


async def register_keeping(client: FieldClient, seconds: float = TIMEOUT) -> None:
    """Register v1 and prove it with probes to itself (as harness.clients.register_confirmed does), keeping
    what arrives meanwhile: the id's pending notifications come first."""
    await register(client.ws, client.recipient)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    for attempt in itertools.count():
        token = f"{PROBE_PREFIX}{client.recipient}:{attempt}"
        await client.ws.send(frame(client.recipient, token))
        try:
            async with asyncio.timeout(0.5):
                while (data := await client.ws.recv()) != token:
                    if not is_probe(data):
                        client.received.append(str(data))
            return
        except TimeoutError:
            if loop.time() > deadline:
                raise AssertionError(f"{client.recipient!r} not registered after {seconds} s") from None


async def landed_on(lab: Lab, recipient: str, *, seconds: float = TIMEOUT) -> str:
    """The one host whose registry rows hold ``recipient`` (the registry writes within a fraction of a second)."""
    found: set[str] = set()

    async def recorded() -> bool:
        nonlocal found
        found = await hosts_of(lab, recipient)
        return len(found) == 1

    await wait_for(recorded, seconds=seconds, what=f"the registry shows {recipient!r} on one host")
    return found.pop()


async def connect_field_client(lab: Lab, url: str, recipient: str, *, seconds: float = TIMEOUT) -> FieldClient:
    # No client pings, as in a browser: nginx and daphne alone decide that a connection is dead.
    ws = await open_client(url, seconds=seconds, additional_headers=FORGED, ping_interval=None)
    client = FieldClient(ws, recipient)
    await register_keeping(client)
    client.host = await landed_on(lab, recipient)
    return client


async def field_clients_on_every_host(lab: Lab, url: str, *, at_least: int = 2) -> list[FieldClient]:
    """Connect clients through nginx, a few at a time, until every host holds ``at_least`` of them."""
    numbers = itertools.count()
    clients: list[FieldClient] = []
    while len(clients) < 16:
        burst = [connect_field_client(lab, url, f"field-{lab.network.tag}-{next(numbers)}") for _ in range(4)]
        clients += await asyncio.gather(*burst)
        if all(sum(c.host == name for c in clients) >= at_least for name in lab.hosts):
            return clients
    raise AssertionError(f"16 clients through nginx, on {sorted(c.host for c in clients)}")


async def every_client_reaches_every_other(clients: list[FieldClient]) -> None:
    """Each sends a v1 frame to each other; each receives every one of them once."""
    expected: dict[str, list[str]] = {c.recipient: [] for c in clients}
    for sender, receiver in itertools.permutations(clients, 2):
        text = f"from {sender.recipient} on {sender.host}"
        expected[receiver.recipient].append(text)
        await sender.ws.send(frame(receiver.recipient, text))
    for receiver in clients:
        await receiver.read_until(expected[receiver.recipient])
        # Each once; in order per sender only (different senders, different processes).
        assert sorted(receiver.received) == sorted(expected[receiver.recipient]), receiver.recipient


# What the back-end sends starts with one of these: "<phase> for <id>".
PHASES = ("before for ", "cut for ", "away for ", "after for ")


@dataclass
class Sent:
    recipient: str
    text: str
    phase: str  # "before" the cut, "cut" (host B cut off, its clients not yet dropped), "away", "after"
    outcome: str | None  # the v2 send reply's: live, pending, ...


class Sender:
    """A back-end's connection through nginx to host A: v2 send frames, each answered with its outcome."""

    def __init__(self, client: FieldClient) -> None:
        self.ws = client.ws
        self.ledger: list[Sent] = []

    async def send(self, recipient: str, phase: str) -> None:
        text = f"{phase} for {recipient}"
        await self.ws.send(json.dumps({"recipient_uuid": recipient, "message": text, "v": 2}))
        async with asyncio.timeout(TIMEOUT):
            while True:
                data = await self.ws.recv()
                reply = None if is_probe(data) else json.loads(data)
                if isinstance(reply, dict) and reply.get("type") == "sent" and reply["recipient_uuid"] == recipient:
                    break
        self.ledger.append(Sent(recipient, text, phase, reply.get("outcome")))

    async def send_to_each(self, phase: str, recipients: list[str]) -> None:
        for recipient in recipients:
            await self.send(recipient, phase)

    def texts(self, recipient: str, *phases: str) -> list[str]:
        return [s.text for s in self.ledger if s.recipient == recipient and (not phases or s.phase in phases)]


async def sender_on(lab: Lab, url: str, host: str) -> Sender:
    for attempt in range(8):
        client = await connect_field_client(lab, url, f"sender-{lab.network.tag}-{attempt}")
        if client.host == host:
            return Sender(client)
        await client.ws.close()
    raise AssertionError(f"8 connections through nginx, none on {host}")


@dataclass
class Resuming:
    client: ResumingClient
    recipient: str
    host: str


async def resuming_clients_on_every_host(lab: Lab, url: str, started: list[ResumingClient]) -> list[Resuming]:
    """v2 clients (harness.clients.ResumingClient) through nginx, started one by one until every host holds one."""
    found: list[Resuming] = []
    for number in range(8):
        recipient = f"resuming-{lab.network.tag}-{number}"
        # It reconnects through nginx by itself; a connect may first wait out nginx's 10 s on the cut host.
        client = ResumingClient([url], [recipient], seconds=RECONNECT_TIMEOUT)
        started.append(client)
        client.start()
        await asyncio.wait_for(client.registered.wait(), TIMEOUT)
        found.append(Resuming(client, recipient, await landed_on(lab, recipient)))
        if {r.host for r in found} == set(lab.hosts):
            return found
    raise AssertionError(f"8 v2 clients through nginx, on {sorted(r.host for r in found)}")


async def resuming_received(resuming: Resuming, texts: list[str], seconds: float = TIMEOUT) -> None:
    async def arrived() -> bool:
        return set(texts) <= set(resuming.client.texts(resuming.recipient))

    await wait_for(arrived, seconds=seconds, what=f"{resuming.recipient} received {texts}")


async def resumed_on_host_a(lab: Lab, resuming: Resuming) -> bool:
    return (
        bool(resuming.client.resumes(resuming.recipient))
        and resuming.client.registered.is_set()
        and await hosts_of(lab, resuming.recipient) == {"host-a"}
    )


def fate(sent: Sent, fields: list[FieldClient], resuming: list[Resuming], dropped: list[FieldClient]) -> str:
    """What became of one notification, as its recipient saw it."""
    for r in resuming:
        if r.recipient == sent.recipient:
            got = [n for n in r.client.notifications(r.recipient) if n.text == sent.text]
            if len(got) == 1:
                return "replayed on resume" if got[0].replayed else "delivered"
            return f"received {len(got)} times" if got else "MISSING"
    received = sum(c.received.count(sent.text) for c in fields if c.recipient == sent.recipient)
    if received == 1:
        return "delivered"
    if received:
        return f"received {received} times"
    if sent.phase == "cut" and any(c.recipient == sent.recipient for c in dropped):
        # docs/PROTOCOL.md, "What is promised": sent while its connection is silently dead (a cut not yet
        # noticed by the keep-alive), it went live to that connection and is lost to a v1 client.
        return "lost as documented"
    return "MISSING"


ACCOUNTED = ("delivered", "replayed on resume", "lost as documented")


def subscribers_from(redis_url: str, address: str) -> list[str]:
    """The pub/sub connections Redis holds from ``address`` (a host's processes' subscriptions)."""
    import redis

    with closing(redis.Redis.from_url(redis_url)) as server:
        return [c["addr"] for c in server.client_list(_type="pubsub") if c["addr"].rpartition(":")[0] == address]


@pytest.mark.timeout(150)
async def test_two_hosts_behind_nginx_share_redis_and_the_registry_and_survive_one_host_cut_off(lab: Lab) -> None:
    """docs/DEPLOY.md's "processes on more hosts", run: two hosts behind nginx on one Redis and one database.

    1. Clients through nginx land on both hosts and reach each other across them.
    2. The registry's rows, the admin and /metrics (scraped from host A) show both hosts' processes.
    3. v2 clients on both hosts; a back-end on host A sends to every id and learns each outcome.
    4. Host B cut off: nginx drops its clients after its read timeout, host A's processes purge its rows
       within STALE_AFTER and a heartbeat, its clients reconnect through nginx to host A, and the v2 one
       resumes, recovered.
    5. Every notification accounted for: delivered, replayed on resume, or lost as docs/PROTOCOL.md says.

    What is sent to an id registered on the cut host alone, once the registry purged it, waits pending for
    the id's next registration: the purging process closes the cut host's subscriptions in Redis, which
    would otherwise count as listeners until their TCP connections time out, minutes later.
    """
    network = lab.network
    ns_a = network.add_namespace("a", 2)
    ns_b = network.add_namespace("b", 3)
    ns_proxy = network.add_namespace("proxy", 4)
    start_redis(lab)
    values = {name: render_machine(lab, name) for name in ("host-a", "host-b", "proxy")}
    env_file = write_environment_file(lab, values["host-a"])
    write_environment_file(lab, values["host-b"])
    await asyncio.to_thread(prepare_database, lab, env_file)
    start_host(lab, "host-a", ns_a, values["host-a"])
    host_b = start_host(lab, "host-b", ns_b, values["host-b"])
    url = start_nginx(lab, ns_proxy, values["proxy"])
    pids = await hosts_ready(lab)
    every_process = {f"{name}:{pid}" for name, host_pids in pids.items() for pid in host_pids}
    metrics_url = f"http://{ns_a.address}:{DAPHNE_PORT}/metrics"  # the monitoring host scrapes host A alone

    clients: list[FieldClient] = []
    moved: list[FieldClient] = []
    resuming_started: list[ResumingClient] = []
    sender: Sender | None = None
    purged: asyncio.Task[float] | None = None
    try:
        # 1. Clients through nginx land on both hosts and reach each other across them. nginx is the one
        # trusted proxy: the registry shows the address nginx saw, never the one the clients forged.
        clients = await field_clients_on_every_host(lab, url)
        await every_client_reaches_every_other(clients)
        assert await client_addresses(lab) == {network.address(1)}

        # 2. The registry holds both hosts' processes: its rows, the admin through nginx, /metrics of host A.
        assert await registered_processes(lab) == {(name, pid) for name, ps in pids.items() for pid in ps}
        session = AdminSession(f"http://{ns_proxy.address}")
        await asyncio.to_thread(session.log_in, "root", ADMIN_PASSWORD)
        status, page = await asyncio.to_thread(session.get, "/admin/notifications/serverprocess/")
        assert status == 200
        for name, host_pids in pids.items():
            for pid in host_pids:
                assert admin_cell(page, "pid", str(pid)) and admin_cell(page, "host", name, link=True), (name, pid)
        status, page = await asyncio.to_thread(session.get, "/admin/notifications/connection/")
        assert status == 200 and "6.6.6.6" not in page
        for name, host_pids in pids.items():
            assert any(admin_cell(page, "process", f"{name} pid {pid}") for pid in host_pids), name

        async def every_process_scraped_and_both_hosts_hold_connections() -> bool:
            by_process = open_connections_by_process(await asyncio.to_thread(scrape, metrics_url))
            holding = {label.partition(":")[0] for label, value in by_process.items() if value > 0}
            return set(by_process) == every_process and holding == set(pids)

        await wait_for(every_process_scraped_and_both_hosts_hold_connections, seconds=TIMEOUT, what="/metrics")
        samples = await asyncio.to_thread(scrape, metrics_url)
        assert samples["notify_deployment_processes"][()] == len(every_process)

        # 3. v2 clients on both hosts, and a back-end on host A that sends to every id and learns each outcome.
        resuming = await resuming_clients_on_every_host(lab, url, resuming_started)
        sender = await sender_on(lab, url, "host-a")
        everyone = [c.recipient for c in clients] + [r.recipient for r in resuming]
        await sender.send_to_each("before", everyone)
        assert {s.outcome for s in sender.ledger} == {"live"}, sender.ledger
        for client in clients:
            await client.read_until(sender.texts(client.recipient))
        for r in resuming:
            await resuming_received(r, sender.texts(r.recipient))

        # 4. Host B cut off: no clean stop, no FIN, no close frame; its peers just hear nothing more.
        loop = asyncio.get_running_loop()
        cut_at = loop.time()
        await asyncio.to_thread(cut_off, lab, host_b)

        async def host_b_purged() -> bool:
            return all(name != "host-b" for name, _ in await registered_processes(lab))

        async def purge_time() -> float:
            # README, "How the registry stays true": a lost host's rows go within STALE_AFTER + one heartbeat.
            await wait_for(host_b_purged, seconds=STALE_AFTER + HEARTBEAT_INTERVAL + SLACK, what="host B purged")
            return loop.time() - cut_at

        purged = asyncio.create_task(purge_time())
        on_a = [c for c in clients if c.host == "host-a"]
        on_b = [c for c in clients if c.host == "host-b"]
        await sender.send_to_each("cut", everyone)
        # nginx gives up host B's silent connections after its read timeout, and closes their clients'.
        try:
            async with asyncio.timeout(NGINX_READ_TIMEOUT + SLACK):
                await asyncio.gather(*(client.ws.wait_closed() for client in on_b))
        except TimeoutError:
            still = [c.recipient for c in on_b if c.ws.state.name == "OPEN"]
            raise AssertionError(f"still open {NGINX_READ_TIMEOUT + SLACK} s after the cut: {still}") from None
        dropped_after = loop.time() - cut_at
        # Host B's rows leave the registry (host A's processes purge them), and /metrics of host A follows.
        purged_after = await purged
        assert "host-b" not in await connections_by_host(lab)
        samples = await asyncio.to_thread(scrape, metrics_url)
        assert set(open_connections_by_process(samples)) == {f"host-a:{pid}" for pid in pids["host-a"]}
        assert samples["notify_deployment_processes"][()] == PROCESSES_PER_HOST

        # Host A's processes close host B's subscriptions in Redis once B stayed away STALE_AFTER after its
        # purge: until then Redis counts them as listeners (until TCP gives up, minutes later, if nobody did).
        async def b_unsubscribed() -> bool:
            return not await asyncio.to_thread(subscribers_from, lab.redis_url, ns_b.address)

        await wait_for(b_unsubscribed, seconds=STALE_AFTER + 2 * HEARTBEAT_INTERVAL + SLACK, what="B unsubscribed")
        closed_after = loop.time() - cut_at

        # While host B's clients are away (dropped, and purged from the registry), what is sent to them waits,
        # pending, for their next registration. They reconnect through nginx and land on host A.
        await sender.send_to_each("away", [c.recipient for c in on_b] + [r.recipient for r in resuming])
        reconnecting = [connect_field_client(lab, url, c.recipient, seconds=RECONNECT_TIMEOUT) for c in on_b]
        moved = list(await asyncio.gather(*reconnecting))
        back_after = loop.time() - cut_at
        assert {c.host for c in moved} == {"host-a"}
        for r in resuming:
            if r.host == "host-b":  # it reconnects and resumes by itself
                resumed = functools.partial(resumed_on_host_a, lab, r)
                await wait_for(resumed, seconds=RECONNECT_TIMEOUT, what=f"{r.recipient} resumed on host A")
        await sender.send_to_each("after", [c.recipient for c in on_a + moved] + [r.recipient for r in resuming])

        # 5. Every notification accounted for: delivered, replayed on resume, or lost as docs/PROTOCOL.md says.
        # Each id's notifications arrive in the order they were sent, kept ones first: once the last one is
        # in, one before it that is not will never come.
        waits = [c.read_until(sender.texts(c.recipient)[-1:]) for c in on_a + moved]
        waits += [resuming_received(r, sender.texts(r.recipient)[-1:]) for r in resuming]
        await asyncio.gather(*waits)
        table = [(s, fate(s, clients + moved, resuming, on_b)) for s in sender.ledger]
        report = "\n".join(f"  {s.phase:6} {s.recipient:22} {s.outcome!s:8} {what}" for s, what in table)
        timings = (
            f"rows purged after {purged_after:.1f} s, clients dropped after {dropped_after:.1f} s, "
            f"its subscriptions closed after {closed_after:.1f} s"
        )
        print(f"\nhost B cut off: {timings}, back on host A after {back_after:.1f} s; every notification:\n{report}")
        unaccounted = [s for s, what in table if what not in ACCOUNTED]
        assert not unaccounted, report
        for client in on_a:  # never noticed the cut: every notification, in order, on the same connection
            assert client.ws.state.name == "OPEN", client.recipient
            assert [t for t in client.received if t.startswith(PHASES)] == sender.texts(client.recipient)
        for client in moved:  # what waited for it first, then the newer ones
            assert client.received == sender.texts(client.recipient, "away", "after")
        for r in resuming:
            assert r.client.problems == [], r.client.problems
            assert r.client.texts(r.recipient) == sender.texts(r.recipient), r.recipient  # once each, in order
            if r.host == "host-a":
                assert r.client.closes() == [], r.client.closes()
            else:
                assert r.client.closes()[0] == Closed(1, None, by_client=False)  # no close frame: a cut
                resumes = r.client.resumes(r.recipient)
                assert resumes and all(x.recovered is True for x in resumes), resumes
                replayed = [n.text for n in r.client.notifications(r.recipient) if n.replayed]
                assert f"cut for {r.recipient}" in replayed, replayed
    finally:
        if purged is not None:
            purged.cancel()
        for resuming_client in resuming_started:
            await resuming_client.stop()
        for client in clients + moved:
            await client.ws.close()
        if sender is not None:
            await sender.ws.close()
