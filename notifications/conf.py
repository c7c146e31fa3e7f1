"""The app's own settings, each with its default, read when used.

Reading lazily keeps ``override_settings`` working in tests.
"""

from __future__ import annotations

from django.conf import settings


class Settings:
    @property
    def ALLOWED_ORIGINS(self) -> list[str]:
        """Origins allowed to open the WebSocket; ``*`` allows any, ``null`` pages from disk."""
        return list(getattr(settings, "NOTIFICATIONS_ALLOWED_ORIGINS", ["*"]))

    @property
    def MAX_RECIPIENT_LENGTH(self) -> int:
        """Longest recipient id accepted, in characters (code points)."""
        return int(getattr(settings, "NOTIFICATIONS_MAX_RECIPIENT_LENGTH", 255))

    @property
    def MAX_IDS_PER_CONNECTION(self) -> int:
        """How many ids one connection may register; further ones are refused and logged."""
        return int(getattr(settings, "NOTIFICATIONS_MAX_IDS_PER_CONNECTION", 16))

    @property
    def MAX_QUEUED_MESSAGES(self) -> int:
        """Notifications that may wait for one connection whose client stopped reading.

        Beyond that, newer notifications for it are dropped, counted and logged
        (the connection stays open), so that a stuck client cannot grow the
        server's memory.
        """
        return int(getattr(settings, "NOTIFICATIONS_MAX_QUEUED_MESSAGES", 1000))

    @property
    def GROUP_PREFIX(self) -> str:
        """Prefix of the channel-layer group names that recipients map to."""
        return str(getattr(settings, "NOTIFICATIONS_GROUP_PREFIX", "notify."))

    @property
    def REGISTRY_ENABLED(self) -> bool:
        """Whether server processes record their live connections in the database."""
        return bool(getattr(settings, "NOTIFICATIONS_REGISTRY_ENABLED", True))

    @property
    def REGISTRY_FLUSH_INTERVAL(self) -> float:
        """Seconds a process gathers connection events before writing them in one transaction."""
        return float(getattr(settings, "NOTIFICATIONS_REGISTRY_FLUSH_INTERVAL", 0.2))

    @property
    def HEARTBEAT_INTERVAL(self) -> float:
        """Seconds between a process's heartbeats (also when it purges stale processes)."""
        return float(getattr(settings, "NOTIFICATIONS_HEARTBEAT_INTERVAL", 10.0))

    @property
    def STALE_AFTER(self) -> float:
        """Seconds without a heartbeat after which a process counts as dead and its rows are purged.

        Rows of a killed process vanish within ``STALE_AFTER + HEARTBEAT_INTERVAL``.
        """
        return float(getattr(settings, "NOTIFICATIONS_STALE_AFTER", 30.0))

    @property
    def SERVER_URL(self) -> str:
        """WebSocket address of the server, used by ``notify`` when the layer is process-local."""
        return str(getattr(settings, "NOTIFICATIONS_SERVER_URL", "ws://127.0.0.1:8765/"))

    @property
    def API_KEYS(self) -> list[str]:
        """Keys accepted by the HTTP push endpoint; with none, the endpoint answers 404."""
        return list(getattr(settings, "NOTIFICATIONS_API_KEYS", []))

    @property
    def API_MAX_BODY(self) -> int:
        """Largest request body the HTTP push endpoint reads, in bytes; larger ones get 413."""
        return int(getattr(settings, "NOTIFICATIONS_API_MAX_BODY", 1024 * 1024))

    @property
    def API_MAX_BATCH(self) -> int:
        """Most notifications in one request to the HTTP push endpoint."""
        return int(getattr(settings, "NOTIFICATIONS_API_MAX_BATCH", 1000))


conf = Settings()
