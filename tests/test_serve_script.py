"""The README's first command, bin/serve, brings up a working server."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.clients import open_client, receive, register_confirmed, send_once
from harness.servers import ROOT, free_port, wait_for_port


@pytest.fixture
def bin_serve(tmp_path: Path) -> Iterator[str]:
    """bin/serve as a new user runs it: no REDIS_URL, no key, its own SQLite file."""
    port = free_port()
    env = dict(os.environ, PORT=str(port), DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    for variable in ("REDIS_URL", "DJANGO_SETTINGS_MODULE", "DJANGO_SECRET_KEY", "DJANGO_DEBUG"):
        env.pop(variable, None)
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen([str(ROOT / "bin" / "serve")], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        wait_for_port(port, process=process, timeout=180)
        yield f"ws://127.0.0.1:{port}/"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


async def test_bin_serve_sets_up_and_serves_the_protocol_on_the_embedded_default(
    bin_serve: str, tmp_path: Path
) -> None:
    ws = await open_client(bin_serve)
    await register_confirmed(ws, "readme-uuid")
    await send_once(bin_serve, "readme-uuid", "it works")
    assert await receive(ws) == "it works"
    await ws.close()
    assert (tmp_path / "db.sqlite3").exists()  # migrations ran
