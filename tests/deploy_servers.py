"""The project's deploy/ files, rendered and run for real: supervisord with daphne processes, nginx in front."""

from __future__ import annotations

import getpass
import grp
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.render import DEFAULTS, render_all
from harness.servers import ROOT, Nginx, child_env, free_port, run_nginx, run_python

TEST_SECRET_KEY = "test-only-secret-key-not-for-production-0123456789"


def open_file_limit() -> str:
    """The deploy files' open-file limit, or the hard limit of this machine where that is lower.

    supervisord refuses to start when it cannot raise its limit to ``minfds``,
    and a container may cap even root below the production value.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = int(DEFAULTS["NOFILE"])
    return str(wanted if hard == resource.RLIM_INFINITY or hard >= wanted else hard)


def render_deploy(workdir: Path, *, port: int, listen_port: int) -> dict[str, str]:
    """Render every deploy/ template into ``workdir`` with this machine's paths, user and loopback ports."""
    values = {
        "PROJECT_DIR": str(ROOT),
        "USER": getpass.getuser(),
        "GROUP": grp.getgrgid(os.getgid()).gr_name,
        "ENV_FILE": str(workdir / "etc" / "notify.env"),
        "LOG_DIR": str(workdir / "log"),
        "STATIC_ROOT": str(workdir / "static"),
        "PORT": str(port),
        "NOFILE": open_file_limit(),
        "SERVER_NAME": "127.0.0.1",
        "LISTEN": f"127.0.0.1:{listen_port}",
    }
    render_all(workdir / "deploy", values)
    return values


def set_env_values(text: str, values: dict[str, str]) -> str:
    """The environment file ``text`` with the given settings' values replaced (each must be in the file)."""
    for name, value in values.items():
        text, count = re.subn(rf"^{name}=.*$", f"{name}={value}", text, count=1, flags=re.MULTILINE)
        assert count == 1, f"the environment file template has no {name}= line"
    return text


def put_env_values(text: str, values: dict[str, str]) -> str:
    """The environment file ``text`` with the given settings: replaced where it names them, appended where not."""
    for name, value in values.items():
        if re.search(rf"^#? ?{name}=", text, flags=re.MULTILINE):
            text = re.sub(rf"^#? ?{name}=.*$", f"{name}={value}", text, count=1, flags=re.MULTILINE)
        else:
            text = f"{text.rstrip(chr(10))}\n{name}={value}\n"
    return text


@dataclass
class Supervisor:
    """supervisord from PyPI, run as the current user in a folder of its own, with the rendered program."""

    process: subprocess.Popen
    rpc_socket: Path
    log: Path
    _rundir: tempfile.TemporaryDirectory = field(repr=False)

    def rpc(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.rpc_socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def processes(self) -> dict[str, dict[str, Any]]:
        """supervisord's view of its processes by name: state name, pid, ... (none before it listens)."""
        if self.process.poll() is not None:
            raise RuntimeError(f"supervisord exited with {self.process.returncode}:\n{self.log.read_text()}")
        try:
            return {info["name"]: info for info in self.rpc().supervisor.getAllProcessInfo()}
        except (FileNotFoundError, ConnectionRefusedError):
            return {}

    def running_pids(self) -> dict[str, int]:
        return {name: info["pid"] for name, info in self.processes().items() if info["statename"] == "RUNNING"}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # supervisord stops its programs, then itself
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._rundir.cleanup()


def systemd_default_open_files() -> None:
    """The soft open-file limit systemd gives its services (1,024), such as Debian's supervisor.service."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


@dataclass
class SupervisordConfig:
    """A main supervisord config of a test's own, which includes the rendered program."""

    conf: Path
    rpc_socket: Path
    log: Path
    rundir: tempfile.TemporaryDirectory


def write_supervisord_config(workdir: Path, program: Path) -> SupervisordConfig:
    """supervisord's main config in ``workdir``: in the foreground, its control socket, ``program`` included."""
    # A unix socket path must stay under about 100 bytes: a short folder of its own.
    rundir = tempfile.TemporaryDirectory(prefix="sv-")
    rpc_socket = Path(rundir.name) / "supervisor.sock"
    conf = workdir / "supervisord.conf"
    log = workdir / "supervisord.log"
    user = "user=root\n" if os.geteuid() == 0 else ""  # says so, rather than a CRIT line about root
    conf.write_text(
        f"""[supervisord]
nodaemon=true
{user}logfile={log}
pidfile={workdir / "supervisord.pid"}
childlogdir={workdir}

[unix_http_server]
file={rpc_socket}
chmod=0700

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{rpc_socket}

[include]
files = {program}
"""
    )
    return SupervisordConfig(conf=conf, rpc_socket=rpc_socket, log=log, rundir=rundir)


def start_supervisord(workdir: Path, program: Path) -> Supervisor:
    """Start supervisord in the foreground with a main config of the test's own that includes ``program``."""
    config = write_supervisord_config(workdir, program)
    conf = config.conf
    supervisord = Path(sys.executable).parent / "supervisord"
    process = subprocess.Popen(
        [str(supervisord), "-c", str(conf)],
        cwd=workdir,
        # The settings come from the environment file, as in production; the
        # interpreter is this one (PYTHON, read by bin/daphne).
        env=child_env({"REDIS_URL": None, "DATABASE_URL": None, "DJANGO_SECRET_KEY": None}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # Started with systemd's default soft limit, so that the test sees minfds raise it.
        preexec_fn=systemd_default_open_files,
    )
    return Supervisor(process=process, rpc_socket=config.rpc_socket, log=config.log, _rundir=config.rundir)


@dataclass
class Deployment:
    """The rendered deploy/ files running: supervisord's daphne processes on one socket, nginx in front."""

    workdir: Path
    values: dict[str, str]
    env_file: Path
    supervisor: Supervisor
    nginx: Nginx | None = None

    @property
    def log_dir(self) -> Path:
        return Path(self.values["LOG_DIR"])

    def access_logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("access-*.log")))

    def server_logs(self) -> dict[str, str]:
        return {p.name: p.read_text(errors="replace") for p in sorted(self.log_dir.glob("server-*.log"))}

    def manage(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``bin/with-env ENV_FILE python manage.py ...``, as docs/DEPLOY.md runs commands."""
        return run_python(
            "manage.py",
            *args,
            env={"REDIS_URL": None, "DATABASE_URL": None, "DJANGO_SECRET_KEY": None},
            timeout=timeout,
            launcher=(str(ROOT / "bin" / "with-env"), str(self.env_file)),
        )

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        self.supervisor.stop()


def start_deployment(
    workdir: Path,
    *,
    settings: dict[str, str],
    nginx_binary: str | None,
    extra_settings: dict[str, str] | None = None,
) -> Deployment:
    """Render deploy/, write the environment file with ``settings`` and start supervisord (and nginx).

    ``extra_settings`` may be settings the template does not name (or names in a comment): they are added.
    """
    values = render_deploy(workdir, port=free_port(), listen_port=free_port())
    env_file = Path(values["ENV_FILE"])
    env_file.parent.mkdir(parents=True)
    text = set_env_values((workdir / "deploy" / "notify.env").read_text(), settings)
    env_file.write_text(put_env_values(text, extra_settings or {}))
    Path(values["LOG_DIR"]).mkdir()
    Path(values["STATIC_ROOT"]).mkdir()  # collectstatic fills it (whitenoise warns while it is missing)
    supervisor = start_supervisord(workdir, workdir / "deploy" / "supervisor" / "notify.conf")
    deployment = Deployment(workdir=workdir, values=values, env_file=env_file, supervisor=supervisor)
    if nginx_binary is not None:
        try:
            deployment.nginx = run_nginx(
                nginx_binary,
                prefix=workdir / "nginx",
                site=workdir / "deploy" / "nginx" / "notify.conf",
                host="127.0.0.1",
                port=int(values["LISTEN"].rpartition(":")[2]),
            )
        except Exception:
            supervisor.stop()
            raise
    return deployment


# systemd: no systemd runs as PID 1 here, so systemd-socket-activate plays
# notify.socket and runs notify@.service's ExecStart as systemd would.

SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unit_settings(text: str, name: str) -> list[str]:
    """The values of every ``name=`` line of a systemd unit (no line continuations: the templates have none)."""
    return [value.strip() for value in re.findall(rf"^{name}=(.*)$", text, flags=re.MULTILINE)]


def read_environment_file(path: Path) -> dict[str, str]:
    """The settings of an environment file as systemd's EnvironmentFile= reads deploy/notify.env.

    Comments (# or ;) and blank lines skipped, KEY=value split at the first =;
    bin/with-env refuses whatever systemd would read otherwise (quotes, backslashes).
    """
    settings = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";")):
            name, sep, value = line.partition("=")
            assert sep, f"{path}: {line!r} is not KEY=value"
            settings[name.strip()] = value.strip()
    return settings


@dataclass
class SocketActivated:
    """notify@.service's ExecStart, given notify.socket's listening socket by systemd-socket-activate."""

    process: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> int:
        """SIGTERM (the unit's KillSignal), then SIGKILL after its TimeoutStopSec; the exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        return self.process.returncode


def start_systemd_service(activate: str, workdir: Path, values: dict[str, str]) -> SocketActivated:
    """Run the rendered unit's ExecStart as systemd would: its environment alone, in its folder, on the socket."""
    units = workdir / "deploy" / "systemd"
    socket_unit = (units / "notify.socket").read_text()
    service = (units / "notify@.service").read_text()
    assert unit_settings(service, "Sockets") == ["notify.socket"]
    [listen] = unit_settings(socket_unit, "ListenStream")
    [exec_start] = unit_settings(service, "ExecStart")
    [env_file] = unit_settings(service, "EnvironmentFile")
    [directory] = unit_settings(service, "WorkingDirectory")
    assert env_file == values["ENV_FILE"]
    # systemd gives a service PATH and what the unit names, nothing of the caller's environment.
    environment = {"PATH": SYSTEMD_PATH}
    for assignment in unit_settings(service, "Environment"):
        name, _, value = assignment.partition("=")
        environment[name] = value
    environment.update(read_environment_file(Path(env_file)))
    argv = shlex.split(exec_start)
    assert not argv[0].startswith(("-", "@", "+", "!", ":")), "ExecStart prefixes are not played here"
    log = workdir / "service.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [activate, "-l", listen, *(f"--setenv={name}={value}" for name, value in environment.items()), *argv],
            cwd=directory,
            env={"PATH": SYSTEMD_PATH},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return SocketActivated(process=process, url=f"ws://{listen}/", log=log)
