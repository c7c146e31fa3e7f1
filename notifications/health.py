"""Whether this process can serve: the answer of ``/readyz`` (see :mod:`notifications.endpoints`).

Ready means: the process is not draining, the database answers a query, and
every Redis server of the channel layer answers a PING, each within
:data:`TIMEOUT`. Load balancers call this every second or so, from several
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
_reported = True  # what was logged last: ready (nothing logged at start)


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


async def _layer_problems() -> list[str]:
    layer = get_channel_layer()
    if layer is None:
        return ["no channel layer is configured (CHANNEL_LAYERS)"]
    check = getattr(layer, "problems", None)
    if check is None:  # a layer of another kind: nothing to ask it
        return []
    try:
        return list(await asyncio.wait_for(check(TIMEOUT), TIMEOUT + 0.5))
    except TimeoutError:
        return [f"the channel layer did not answer in {TIMEOUT:g} s"]


async def _check() -> Readiness:
    if drain.is_draining():
        return Readiness(False, "draining: this process is stopping")
    database, layer = await asyncio.gather(_database_problem(), _layer_problems())
    problems = ([database] if database else []) + layer
    return Readiness(not problems, "; ".join(problems) if problems else "ready")


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
    if answer.ready != _reported:
        _reported = answer.ready
        if answer.ready:
            logger.info("Ready again: the database and the channel layer answer")
        else:
            logger.warning("Not ready: %s", answer.reason)
    return answer


def forget() -> None:
    """Forget the last answer (tests)."""
    global _last, _checking, _reported
    _last, _checking, _reported = None, None, True
