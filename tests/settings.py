"""Settings for the test process: the project's own, with a fixed test-only key."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key-not-for-production-0123456789")

from notifyproject.settings import *  # noqa: E402, F403
