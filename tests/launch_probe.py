"""An ASGI application that reports what the launcher set up once daphne's reactor runs, then stops it.

Served by the launchers (``python -m notifications.serve ... tests.launch_probe:application``)
in ``tests/test_launch.py``: the launcher's own start-up work runs first. It reports the garbage
collector's state, the factory autobahn makes each client frame's masker with, and the channel
layer Channels holds. Like a Django project's ASGI module, it sets Django up as it is loaded.
"""

from __future__ import annotations

import gc
import json
from typing import Any

import django
from autobahn.websocket import protocol
from channels.layers import channel_layers
from twisted.internet import reactor

django.setup()


def _report() -> None:
    masker = protocol.create_xor_masker
    state = {
        "thresholds": gc.get_threshold(),
        "frozen": gc.get_freeze_count(),
        "masker": f"{masker.__module__}.{masker.__qualname__}",
        "channel_layer": type(layer).__name__ if (layer := channel_layers.backends.get("default")) else None,
    }
    print(json.dumps(state), flush=True)
    reactor.stop()  # type: ignore[attr-defined]


reactor.callWhenRunning(_report)  # type: ignore[attr-defined]


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    raise NotImplementedError("a probe: it serves nothing")
