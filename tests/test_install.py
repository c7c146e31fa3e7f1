"""A Django team installs the app's wheel into its own fresh project by following the README's guide.

The wheel is built from this checkout and installed into a new virtual
environment (the project's pins as constraints, so the versions are the
tested ones); ``django-admin startproject`` makes the project, and the
guide's code blocks are applied to it exactly as the README shows them, so
that the guide cannot drift from what is tested.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from harness.clients import receive, register_confirmed
from harness.servers import ROOT, free_port, wait_for_port

# Building and installing take a few seconds from pip's cache, longer when PyPI serves the packages.
pytestmark = pytest.mark.timeout(600)

GUIDE_HEADING = "## Add it to your own project"
GREETING = "..:: Hello from the Notification Center ::.."
TIMEOUT = 10.0
# Subprocess limits, in seconds.
BUILD_TIMEOUT = 180
INSTALL_TIMEOUT = 480
COMMAND_TIMEOUT = 120

# The view the fresh project adds: the pattern of the guide's "Send from any view".
VIEW = """\
from django.http import HttpResponse

import notifications.sending


def done(request):
    notifications.sending.send(request.GET["to"], "done")
    return HttpResponse("sent")
"""
VIEW_URL = """
from mysite.views import done  # noqa: E402

urlpatterns.append(path("done/", done))
"""


# The guide, read from the README.


def guide_section() -> str:
    """The README's section ``## Add it to your own project``, up to the next section."""
    readme = (ROOT / "README.md").read_text()
    start = readme.find(f"\n{GUIDE_HEADING}\n")
    assert start >= 0, f"README.md has no section {GUIDE_HEADING!r}"
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end >= 0 else len(readme)]


@dataclass(frozen=True)
class GuideEdit:
    """One code block of the guide that changes a file of the fresh project."""

    action: str  # "append" (At the end of `path`, add:) or "replace" (Replace `path` with:)
    path: str  # relative to the project's folder, e.g. mysite/settings.py
    code: str


FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
EDIT_LINE = re.compile(r"(?:At the end of `(?P<append>[\w/]+\.py)`, add|Replace `(?P<replace>[\w/]+\.py)` with):$")


def guide_edits() -> list[GuideEdit]:
    """The guide's file edits: each Python block whose introducing line names a file and what to do with it."""
    section = guide_section()
    edits = []
    for match in FENCE.finditer(section):
        before = section[: match.start()].rstrip().splitlines()[-1]
        line = EDIT_LINE.search(before)
        if match.group(1) == "python" and line:
            action = "append" if line.group("append") else "replace"
            edits.append(GuideEdit(action, line.group("append") or line.group("replace"), match.group(2)))
    return edits


def guide_commands() -> list[str]:
    """The lines of the guide's bash blocks."""
    return [
        line.split("  #")[0].strip()
        for match in FENCE.finditer(guide_section())
        if match.group(1) == "bash"
        for line in match.group(2).splitlines()
        if line.strip()
    ]


def apply_guide(project: Path) -> None:
    edits = guide_edits()
    assert sorted(edit.path for edit in edits) == ["mysite/asgi.py", "mysite/settings.py", "mysite/urls.py"], edits
    for edit in edits:
        target = project / edit.path
        assert target.is_file(), f"the guide edits {edit.path}, which startproject did not make"
        if edit.action == "append":
            target.write_text(target.read_text() + "\n" + edit.code)
        else:
            target.write_text(edit.code)


# The wheel and the fresh environment.


def build_wheel(dest: Path, scratch: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of the checkout: setuptools writes build/ and *.egg-info into the
    source tree, and a build/ left by an earlier build would put modules deleted since into the wheel."""
    source = scratch / "checkout"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "build", "*.egg-info", ".pytest_cache", ".ruff_cache", "*.sqlite3*"
        ),
    )
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dest), str(source)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}{result.stderr}"
    wheels = list(dest.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def project_constraints(dest: Path) -> Path:
    """requirements.txt as pip constraints: pip refuses extras there ("Constraints cannot have extras")."""
    text = (ROOT / "requirements.txt").read_text()
    path = dest / "constraints.txt"
    path.write_text(re.sub(r"^([A-Za-z0-9_.-]+)\[[^\]]*\]", r"\1", text, flags=re.MULTILINE))
    return path


@dataclass(frozen=True)
class Environment:
    """A new virtual environment with the wheel installed, and nothing of this checkout on its path."""

    root: Path
    install_seconds: float

    def program(self, name: str) -> str:
        return str(self.root / "bin" / name)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ, VIRTUAL_ENV=str(self.root), PATH=f"{self.root / 'bin'}{os.pathsep}{os.environ['PATH']}")
        # pytest-django sets DJANGO_SETTINGS_MODULE to the suite's settings; manage.py must choose its own.
        for name in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "PYTHONHOME"):
            env.pop(name, None)
        return env

    def run(self, *args: str, cwd: Path, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run a program of the environment; fail the test, with its output, unless it exits with 0."""
        result = subprocess.run(
            [self.program(args[0]), *args[1:]], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, (
            f"{' '.join(args)} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
        )
        return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    scratch = tmp_path_factory.mktemp("wheel")
    return build_wheel(scratch / "dist", scratch)


@pytest.fixture(scope="module")
def installed_wheel(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Environment:
    """A fresh virtual environment with ``pip install <wheel> -c requirements.txt``, timed."""
    scratch = tmp_path_factory.mktemp("venv")
    root = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=COMMAND_TIMEOUT)
    started = time.monotonic()
    result = subprocess.run(
        [
            str(root / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            str(wheel),
            "-c",
            str(project_constraints(scratch)),
        ],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, f"pip install of the wheel failed:\n{result.stdout}{result.stderr}"
    print(f"pip install {wheel.name}: {seconds:.1f} s")
    environment = Environment(root, seconds)
    # The app comes from the environment, not from this checkout.
    where = environment.run("python", "-c", "import notifications; print(notifications.__file__)", cwd=scratch)
    assert Path(where.stdout.strip()).is_relative_to(root), where.stdout
    return environment


@pytest.fixture
def fresh_project(installed_wheel: Environment, tmp_path: Path) -> Path:
    """``django-admin startproject mysite``: the folder that holds manage.py."""
    installed_wheel.run("django-admin", "startproject", "mysite", cwd=tmp_path)
    return tmp_path / "mysite"


@dataclass(frozen=True)
class Served:
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def served_project(installed_wheel: Environment, fresh_project: Path, tmp_path: Path) -> Iterator[Served]:
    """The fresh project set up by the guide, with a view that sends, migrated and served by daphne."""
    apply_guide(fresh_project)
    (fresh_project / "mysite" / "views.py").write_text(VIEW)
    urls = fresh_project / "mysite" / "urls.py"
    urls.write_text(urls.read_text() + VIEW_URL)
    installed_wheel.run("python", "manage.py", "migrate", cwd=fresh_project)
    port = free_port()
    log_path = tmp_path / "daphne.log"
    # The guide's own command, on a free port of loopback.
    serve = shlex.split(next(line for line in guide_commands() if "-m notifications.serve" in line))
    assert serve[:3] == ["python", "-m", "notifications.serve"] and serve[-1] == "mysite.asgi:application", serve
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [installed_wheel.program("python"), *serve[1:-1], "-b", "127.0.0.1", "-p", str(port), serve[-1]],
            cwd=fresh_project,
            env=installed_wheel.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_for_port(port, process=process, timeout=30)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"daphne did not serve the fresh project: {exc}\n{log_path.read_text(errors='replace')}")
        yield Served(port, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def http_get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


# The tests.


def test_the_wheel_holds_the_app_and_nothing_else(wheel: Path) -> None:
    app_files = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "notifications").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    dist_info = {name for name in names if name.split("/")[0].endswith(".dist-info")}
    assert names - dist_info == app_files
    # Templates, static files and migrations are among them.
    assert {
        "notifications/templates/notifications/example.html",
        "notifications/static/notifications/notify-client.js",
        "notifications/migrations/0001_live_connections.py",
    } <= app_files


def test_the_guide_installs_the_wheel_this_checkout_builds(wheel: Path) -> None:
    commands = guide_commands()
    assert f"pip install dist/{wheel.name}" in commands, commands
    assert f'pip install "dist/{wheel.name}[redis]"' in commands, commands


async def test_a_fresh_project_set_up_by_the_guide_relays_what_its_view_sends(served_project: Served) -> None:
    recipient = "fresh-project-uuid"
    port = served_project.port
    async with connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT) as ws:
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == GREETING
        # Registers with {"recipient_uuid": ..., "message": "connected"}, then proves it with a probe.
        await register_confirmed(ws, recipient)
        status = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/done/?to={recipient}")
        assert status == 200, f"the view answered {status}; daphne's log:\n{served_project.log()}"
        assert await receive(ws, TIMEOUT) == "done"


def test_a_fresh_project_on_channels_own_layer_passes_the_checks_with_a_warning_and_migrates(
    installed_wheel: Environment, fresh_project: Path
) -> None:
    settings = fresh_project / "mysite" / "settings.py"
    settings.write_text(
        settings.read_text()
        + '\nINSTALLED_APPS += ["channels", "notifications"]\n'
        + 'CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}\n'
    )
    check = installed_wheel.run("python", "manage.py", "check", cwd=fresh_project)
    assert "notifications.W001" in check.stdout + check.stderr
    migrate = installed_wheel.run("python", "manage.py", "migrate", cwd=fresh_project)
    assert "Applying notifications.0001_live_connections... OK" in migrate.stdout
