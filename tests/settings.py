"""Settings for the test process: the project's own, with a fixed test-only key."""

import hashlib
import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key-not-for-production-0123456789")

from notifyproject.settings import *  # noqa: E402, F403
from notifyproject.settings import BASE_DIR, DATABASES  # noqa: E402

# In this process the consumer runs under WebsocketCommunicator, without a
# server; the registry is tested through real daphne processes, which use the
# project's settings.
NOTIFICATIONS_REGISTRY_ENABLED = False
# The views the tests call in this process reach the consumers of this process
# through its in-memory layer, as they would in a server process.
NOTIFICATIONS_SEND_THROUGH = "layer"

if DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
    # A test database of this checkout's own, so that suites of several
    # checkouts can run at once against one PostgreSQL server.
    checkout = hashlib.sha256(str(BASE_DIR).encode()).hexdigest()[:8]
    DATABASES["default"].setdefault("TEST", {})
    DATABASES["default"]["TEST"].setdefault("NAME", f"test_{DATABASES['default']['NAME']}_{checkout}")
