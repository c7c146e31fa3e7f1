"""System programs the tests need: skip without one, fail under CI (which must install it)."""

from __future__ import annotations

import os
import subprocess

import pytest

from harness.servers import find_program

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
NGINX_HINT = "apt-get install nginx (Debian/Ubuntu)"
SYSTEMD_HINT = "apt-get install systemd (Debian/Ubuntu)"


def require_program(name: str, *, install_hint: str) -> str:
    """The path of a system program; skip the test without it (fail under CI=true)."""
    path = find_program(name)
    if path:
        return path
    message = f"{name} is not installed: {install_hint}"
    if IN_CI:
        pytest.fail(message + " (CI=true: .ci/run must install it)")
    pytest.skip(message)


def skewed_clock(seconds: int) -> dict[str, str]:
    """The environment that shifts a child's wall clock by ``seconds`` (libfaketime), as on a host whose clock is off.

    The monotonic clock stays true, so the child's timers (asyncio, the
    heartbeat) keep their pace. The library is preloaded directly: the
    ``faketime`` program forks, so a signal would reach it and not the child.
    """
    wrapper = require_program("faketime", install_hint="apt-get install faketime (Debian/Ubuntu)")
    # The wrapper knows where its package put the library.
    preload = subprocess.run(
        [wrapper, "-f", "+0", "printenv", "LD_PRELOAD"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()
    return {"LD_PRELOAD": preload, "FAKETIME": f"{seconds:+d}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


# How the browser tests start Chromium: headless, quiet, without a sandbox (CI runs as root).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
