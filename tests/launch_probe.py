"""An ASGI application that reports what the launcher set up once daphne's reactor runs, then stops it.

Served by the launchers (``python -m notifications.serve ... tests.launch_probe:application``)
in ``tests/test_launch.py``: the launcher's own start-up work runs first. It reports the garbage
collector's state and the factory autobahn makes each client frame's masker with.
"""

from __future__ import annotations

import gc
import json
from typing import Any

from autobahn.websocket import protocol
from twisted.internet import reactor


def _report() -> None:
    masker = protocol.create_xor_masker
    state = {
        "thresholds": gc.get_threshold(),
        "frozen": gc.get_freeze_count(),
        "masker": f"{masker.__module__}.{masker.__qualname__}",
    }
    print(json.dumps(state), flush=True)
    reactor.stop()  # type: ignore[attr-defined]


reactor.callWhenRunning(_report)  # type: ignore[attr-defined]


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    raise NotImplementedError("a probe: it serves nothing")
