"""An ASGI application that reports the garbage collector's state once daphne's reactor runs, then stops it.

Served by the project's launcher (``python -m notifyproject.server ... tests.gc_probe:application``)
in ``tests/test_launch.py``: the launcher's own start-up work runs first.
"""

from __future__ import annotations

import gc
import json
from typing import Any

from twisted.internet import reactor


def _report() -> None:
    print(json.dumps({"thresholds": gc.get_threshold(), "frozen": gc.get_freeze_count()}), flush=True)
    reactor.stop()  # type: ignore[attr-defined]


reactor.callWhenRunning(_report)  # type: ignore[attr-defined]


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    raise NotImplementedError("a probe: it serves nothing")
