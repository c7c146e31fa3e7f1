"""The project's settings with another channel layer, to compare layers in one run.

``BENCH_CHANNEL_LAYER`` names the backend class; everything else is the
project's own configuration (``notifyproject.settings``).
"""

from __future__ import annotations

import os

from notifyproject.settings import *  # noqa: F403
from notifyproject.settings import CHANNEL_LAYERS

CHANNEL_LAYERS["default"]["BACKEND"] = os.environ["BENCH_CHANNEL_LAYER"]
if "channels_redis" not in CHANNEL_LAYERS["default"]["BACKEND"] and "Redis" not in CHANNEL_LAYERS["default"]["BACKEND"]:
    CHANNEL_LAYERS["default"].pop("CONFIG", None)  # the in-memory layer takes no Redis hosts
