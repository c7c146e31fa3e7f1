"""A server process's counters, read as operators read them: ``manage.py notify_stats --json``."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

from harness.servers import Daphne, eventually, run_python


def stats(env: dict[str, str | None]) -> dict[str, Any]:
    done = run_python("manage.py", "notify_stats", "--json", env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


async def counters_after(env: dict[str, str | None], server: Daphne, moment: float) -> dict[str, int]:
    """``server``'s counters as it wrote them after ``moment`` (its heartbeat is a second apart here)."""
    found: dict[str, int] = {}

    async def written() -> bool:
        nonlocal found
        for process in (await asyncio.to_thread(stats, env))["processes"]:
            at = datetime.fromisoformat(process["heartbeat_at"]).timestamp()
            if process["process"].endswith(f":{server.process.pid}") and at > moment:
                found = process["counters"]
                return True
        return False

    await eventually(written, seconds=15)
    return found
