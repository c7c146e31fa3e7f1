"""Whether this process can serve: the answer of ``/readyz`` (see :mod:`notifications.endpoints`).

Ready means: the process is not draining, the database answers a query, and
every Redis server of the channel layer answers a PING, each within
:data:`TIMEOUT`; with sharded Redis, at least one shard answers (the others'
ids wait for theirs, and the answer names them: "degraded"). Load balancers call this every second or so, from several
places: an answer is reused for :data:`REUSE_SECONDS`, so the checks run at
most a few times a second whatever the number of callers. A change of the
answer is logged once (WARNING when it turns unready, INFO when ready again),
never each call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection

from notifications import drain
from notifications.exceptions import one_line

logger = logging.getLogger(__name__)

TIMEOUT = 2.0  # seconds each check may take before it counts as failed
REUSE_SECONDS = 0.5


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str  # one line: "ready", or what is wrong


_last: tuple[float, Readiness] | None = None
_checking: asyncio.Future[Readiness] | None = None
_reported = "ready"  # the state logged last: ready, degraded or unready (nothing is logged at start)


def _query_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def _database_problem() -> str | None:
    try:
        await asyncio.wait_for(database_sync_to_async(_query_database)(), TIMEOUT)
    except TimeoutError:
        return f"the database did not answer in {TIMEOUT:g} s"
    except Exception as exc:
        return f"the database does not answer: {one_line(exc)}"
    return None


async def _layer_problems() -> tuple[list[str], list[str]]:
    """What keeps the channel layer from working, and what degrades it (shards down while others answer)."""
    layer = get_channel_layer()
    if layer is None:
        return ["no channel layer is configured (CHANNEL_LAYERS)"], []
    check = getattr(layer, "problems", None)
    if check is None:  # a layer of another kind: nothing to ask it
        return [], []
    try:
        problems = list(await asyncio.wait_for(check(TIMEOUT), TIMEOUT + 0.5))
    except TimeoutError:
        return [f"the channel layer did not answer in {TIMEOUT:g} s"], []
    if problems and len(problems) < getattr(layer, "shard_count", 1):
        # Sharded: a shard that is down affects its own ids only; the process serves the rest.
        return [], problems
    return problems, []


async def _check() -> Readiness:
    if drain.is_draining():
        return Readiness(False, "draining: this process is stopping")
    database, (layer, degraded) = await asyncio.gather(_database_problem(), _layer_problems())
    problems = ([database] if database else []) + layer
    if problems:
        return Readiness(False, "; ".join(problems + degraded))
    return Readiness(True, "degraded: " + "; ".join(degraded) if degraded else "ready")


async def readiness() -> Readiness:
    """Whether this process is ready to serve, checked at most every :data:`REUSE_SECONDS` (callers share a check)."""
    global _last, _checking, _reported
    now = time.monotonic()
    if _last is not None and now - _last[0] < REUSE_SECONDS and not drain.is_draining():
        return _last[1]
    if _checking is None or _checking.done():
        _checking = asyncio.ensure_future(_check())
    answer = await asyncio.shield(_checking)
    _last = (time.monotonic(), answer)
    state = "ready" if answer.reason == "ready" else "degraded" if answer.ready else "unready"
    if state != _reported:
        if state == "unready":
            logger.warning("Not ready: %s", answer.reason)
        elif state == "degraded":
            logger.warning("Ready, %s", answer.reason)
        else:
            logger.info("Ready again: the database and the channel layer answer")
        _reported = state
    return answer


def forget() -> None:
    """Forget the last answer (tests)."""
    global _last, _checking, _reported
    _last, _checking, _reported = None, None, "ready"
