"""The app's settings and their defaults, in one place.

Each property returns the raw value of the Django setting, or the default
when it is unset; :mod:`notifications.checks` checks every value's type and
range at start-up, so code that reads them may trust them. Values are read
once and remembered (the relay reads several per message, and a Django
setting costs microseconds to look up); a change through
``override_settings`` (``setting_changed``) forgets them.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

# The defaults, by setting name without the NOTIFICATIONS_ prefix.
DEFAULTS: dict[str, Any] = {
    "ALLOWED_ORIGINS": ["*"],
    "MAX_RECIPIENT_LENGTH": 255,
    "MAX_IDS_PER_CONNECTION": 16,
    "MAX_QUEUED_MESSAGES": 1000,
    "GROUP_PREFIX": "notify.",
    "REGISTRY_ENABLED": True,
    "REGISTRY_FLUSH_INTERVAL": 0.2,
    "HEARTBEAT_INTERVAL": 10.0,
    "STALE_AFTER": 30.0,
    "SEND_THROUGH": "auto",
    "SERVER_URL": "ws://127.0.0.1:8765/",
    "API_KEYS": [],
    "API_MAX_BODY": 1024 * 1024,
    "API_MAX_BATCH": 1000,
    "HISTORY_SIZE": 100,
    "HISTORY_TTL": 600.0,
    "HISTORY_MAX_ENTRIES": 100_000,
    "PENDING": True,
    "DRAIN_SECONDS": 5.0,
    "REGISTRATION": "open",
    "TOKEN_MAX_AGE": 3600,
    "WS_SENDERS": "anyone",
    "MAX_FRAMES_PER_SECOND": 0,
    "FLOOD_SECONDS": 5.0,
    "MAX_CONNECTIONS_PER_ADDRESS": 0,
    "MAX_HANDSHAKES_PER_SECOND_PER_ADDRESS": 0,
    "METRICS_KEY": "",
    "METRICS_ALLOWED_ADDRESSES": [],
    "TRUSTED_PROXIES": [],
}


_values: dict[str, Any] = {}


def raw(name: str) -> Any:
    """The setting ``NOTIFICATIONS_<name>`` as it is set, unchecked (the system checks read this)."""
    try:
        return _values[name]
    except KeyError:
        value = _values[name] = getattr(settings, f"NOTIFICATIONS_{name}", DEFAULTS[name])
        return value


def _forget(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("NOTIFICATIONS_"):
        _values.clear()


setting_changed.connect(_forget)


class Settings:
    @property
    def ALLOWED_ORIGINS(self) -> list[str]:
        """Origins allowed to open the WebSocket; ``*`` allows any, ``null`` pages from disk."""
        return raw("ALLOWED_ORIGINS")  # type: ignore[no-any-return]

    @property
    def MAX_RECIPIENT_LENGTH(self) -> int:
        """Longest recipient id accepted, in characters (code points)."""
        return raw("MAX_RECIPIENT_LENGTH")  # type: ignore[no-any-return]

    @property
    def MAX_IDS_PER_CONNECTION(self) -> int:
        """How many ids one connection may register; further ones are refused and logged."""
        return raw("MAX_IDS_PER_CONNECTION")  # type: ignore[no-any-return]

    @property
    def MAX_QUEUED_MESSAGES(self) -> int:
        """Notifications that may wait for one connection whose client stopped reading.

        Beyond that, newer notifications for it are dropped, counted and logged
        (the connection stays open), so that a stuck client cannot grow the
        server's memory.
        """
        return raw("MAX_QUEUED_MESSAGES")  # type: ignore[no-any-return]

    @property
    def GROUP_PREFIX(self) -> str:
        """Prefix of the channel-layer group names that recipients map to."""
        return raw("GROUP_PREFIX")  # type: ignore[no-any-return]

    @property
    def REGISTRY_ENABLED(self) -> bool:
        """Whether server processes record their live connections in the database."""
        return raw("REGISTRY_ENABLED")  # type: ignore[no-any-return]

    @property
    def REGISTRY_FLUSH_INTERVAL(self) -> float:
        """Seconds a process gathers connection events before writing them in one transaction."""
        return raw("REGISTRY_FLUSH_INTERVAL")  # type: ignore[no-any-return]

    @property
    def HEARTBEAT_INTERVAL(self) -> float:
        """Seconds between a process's heartbeats (also when it purges stale processes)."""
        return raw("HEARTBEAT_INTERVAL")  # type: ignore[no-any-return]

    @property
    def STALE_AFTER(self) -> float:
        """Seconds without a heartbeat after which a process counts as dead and its rows are purged.

        Rows of a killed process vanish within ``STALE_AFTER + HEARTBEAT_INTERVAL``.
        """
        return raw("STALE_AFTER")  # type: ignore[no-any-return]

    @property
    def SEND_THROUGH(self) -> str:
        """How :func:`notifications.sending.send` hands notifications over.

        ``"layer"``: the channel layer. ``"server"``: the running server's
        WebSocket at ``SERVER_URL``. ``"auto"``: the channel layer, unless it
        is the in-memory one and this process is not a server (it did not call
        :func:`notifications.server.start_server`): publishing into its own
        memory would reach nobody.
        """
        return raw("SEND_THROUGH")  # type: ignore[no-any-return]

    @property
    def SERVER_URL(self) -> str:
        """WebSocket address of the server, used when sending through the server's WebSocket."""
        return raw("SERVER_URL")  # type: ignore[no-any-return]

    @property
    def API_KEYS(self) -> list[str]:
        """Keys accepted by the HTTP push endpoint; with none, the endpoint answers 404."""
        return raw("API_KEYS")  # type: ignore[no-any-return]

    @property
    def API_MAX_BODY(self) -> int:
        """Largest request body the HTTP push endpoint reads, in bytes; larger ones get 413."""
        return raw("API_MAX_BODY")  # type: ignore[no-any-return]

    @property
    def API_MAX_BATCH(self) -> int:
        """Most notifications in one request to the HTTP push endpoint."""
        return raw("API_MAX_BATCH")  # type: ignore[no-any-return]

    @property
    def HISTORY_SIZE(self) -> int:
        """Notifications kept per id (the newest); 0 keeps none, and then nothing is pending either."""
        return raw("HISTORY_SIZE")  # type: ignore[no-any-return]

    @property
    def HISTORY_TTL(self) -> float:
        """Seconds each kept notification stays, in the history and as pending."""
        return raw("HISTORY_TTL")  # type: ignore[no-any-return]

    @property
    def HISTORY_MAX_ENTRIES(self) -> int:
        """Kept notifications of all ids together in the in-memory layer; the oldest go first beyond it."""
        return raw("HISTORY_MAX_ENTRIES")  # type: ignore[no-any-return]

    @property
    def PENDING(self) -> bool:
        """Whether a notification that no registration received waits for the id's next registration."""
        return raw("PENDING")  # type: ignore[no-any-return]

    @property
    def DRAIN_SECONDS(self) -> float:
        """Seconds over which a stopping server process closes its WebSockets with 4012, evenly spread.

        The deploy files' stop timeouts (30 s) leave room for up to 20 s of it.
        """
        return raw("DRAIN_SECONDS")  # type: ignore[no-any-return]

    @property
    def REGISTRATION(self) -> str:
        """``"open"``: any client registers any id (protocol v1). ``"signed"``: only with a token for it.

        See :mod:`notifications.tokens`.
        """
        return raw("REGISTRATION")  # type: ignore[no-any-return]

    @property
    def TOKEN_MAX_AGE(self) -> int:
        """Seconds a registration token made without ``max_age`` is good for."""
        return raw("TOKEN_MAX_AGE")  # type: ignore[no-any-return]

    @property
    def WS_SENDERS(self) -> str:
        """Who may send over the WebSocket: ``"anyone"`` (protocol v1), ``"key"``, ``"none"``.

        ``"key"``: connections whose handshake carried ``Authorization: Bearer``
        with one of ``API_KEYS``, or the project's own server-side key (see
        :func:`notifications.senders.server_key`). ``"none"``: only the latter.
        """
        return raw("WS_SENDERS")  # type: ignore[no-any-return]

    @property
    def MAX_FRAMES_PER_SECOND(self) -> int:
        """Frames a second one connection may send (a token bucket, burst as large); 0: no limit."""
        return raw("MAX_FRAMES_PER_SECOND")  # type: ignore[no-any-return]

    @property
    def FLOOD_SECONDS(self) -> float:
        """Seconds a connection may stay over ``MAX_FRAMES_PER_SECOND`` before it is closed with 4008."""
        return raw("FLOOD_SECONDS")  # type: ignore[no-any-return]

    @property
    def MAX_CONNECTIONS_PER_ADDRESS(self) -> int:
        """Open connections one client address may hold in one process; 0: no limit."""
        return raw("MAX_CONNECTIONS_PER_ADDRESS")  # type: ignore[no-any-return]

    @property
    def MAX_HANDSHAKES_PER_SECOND_PER_ADDRESS(self) -> int:
        """New connections a second one client address may open in one process (burst as large); 0: no limit."""
        return raw("MAX_HANDSHAKES_PER_SECOND_PER_ADDRESS")  # type: ignore[no-any-return]

    @property
    def METRICS_KEY(self) -> str:
        """Bearer key that ``/metrics`` requires (32+ characters); "" requires none.

        With neither this nor ``METRICS_ALLOWED_ADDRESSES``, ``/metrics`` answers 404.
        """
        return raw("METRICS_KEY")  # type: ignore[no-any-return]

    @property
    def METRICS_ALLOWED_ADDRESSES(self) -> list[str]:
        """Addresses or networks (``10.0.0.0/8``) that may read ``/metrics``; [] allows any (with the key)."""
        return raw("METRICS_ALLOWED_ADDRESSES")  # type: ignore[no-any-return]

    @property
    def TRUSTED_PROXIES(self) -> list[str]:
        """Addresses or networks of the proxies whose ``X-Real-IP`` and ``X-Forwarded-Proto`` are believed.

        [] leaves it to daphne (``NOTIFY_BEHIND_PROXY``, which believes any
        peer: daphne must then be reachable by the proxy alone). See
        :class:`notifications.proxies.TrustedProxyHeaders`.
        """
        return raw("TRUSTED_PROXIES")  # type: ignore[no-any-return]

    @property
    def KEEPS(self) -> bool:
        """Whether notifications are kept at all (a history); pending needs it too."""
        return self.HISTORY_SIZE > 0


conf = Settings()
