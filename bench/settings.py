"""The project's settings with another channel layer, to compare layers in one run.

``BENCH_CHANNEL_LAYER`` names the backend class; everything else is the
project's own configuration (``notifyproject.settings``).
"""

from __future__ import annotations

import os

from notifyproject.settings import *  # noqa: F403
from notifyproject.settings import CHANNEL_LAYERS

CHANNEL_LAYERS["default"]["BACKEND"] = os.environ["BENCH_CHANNEL_LAYER"]
