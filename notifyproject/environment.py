"""The project's environment variables, parsed: one function per kind of value, one table for the app.

Every function takes the environment as a mapping, so each is tested as a
plain function. A bad value raises :class:`ConfigurationError`, a
``SystemExit`` whose text is one line naming the variable: raised while the
settings load, it stops the process with that line on standard error and
exit status 1, never a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


class ConfigurationError(SystemExit):
    """An environment variable holds a value the project cannot use; the text says which and why."""

    def __init__(self, message: str) -> None:
        super().__init__(f"Configuration error: {message}")


def _raw(environ: Mapping[str, str], name: str) -> str | None:
    raw = environ.get(name)
    return None if raw is None or raw.strip() == "" else raw


def env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _raw(environ, name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off.")


def env_list(environ: Mapping[str, str], name: str, default: list[str]) -> list[str]:
    """Comma-separated items, each stripped; empty items are left out."""
    raw = _raw(environ, name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_int(environ: Mapping[str, str], name: str, default: int, *, minimum: int | None = None) -> int:
    raw = _raw(environ, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a whole number.") from None
    if minimum is not None and value < minimum:
        raise ConfigurationError(f"{name}={raw!r} is less than {minimum}.")
    return value


def env_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = _raw(environ, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(f"{name}={raw!r} is not a positive number of seconds.")
    return value


def env_str(environ: Mapping[str, str], name: str, default: str) -> str:
    raw = _raw(environ, name)
    return default if raw is None else raw.strip()


def env_websocket_url(environ: Mapping[str, str], name: str, default: str) -> str:
    value = env_str(environ, name, default)
    if not value.startswith(("ws://", "wss://")):
        raise ConfigurationError(f"{name}={value!r} is not a WebSocket address; use ws://host:8765/.")
    return value


def env_redis_url(environ: Mapping[str, str], name: str) -> str:
    value = env_str(environ, name, "")
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(f"{name}={value!r} is not a Redis address; use redis://host:6379/0.")
    return value


def env_choice(environ: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env_str(environ, name, default).lower()
    if value not in choices:
        raise ConfigurationError(f"{name}={value!r} is not one of {', '.join(choices)}.")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def env_log_level(environ: Mapping[str, str], name: str, default: str) -> str:
    value = env_str(environ, name, default).upper()
    if value not in LOG_LEVELS:
        raise ConfigurationError(f"{name}={value!r} is not a log level; use {', '.join(LOG_LEVELS)}.")
    return value


def _integer(minimum: int) -> Callable[[Mapping[str, str], str], int]:
    def parse(environ: Mapping[str, str], name: str) -> int:
        return env_int(environ, name, 0, minimum=minimum)

    return parse


# NOTIFY_<NAME> sets the app's setting NOTIFICATIONS_<NAME>, parsed by kind. The
# defaults live in the app (notifications/conf.py): an unset variable sets nothing.
APP_SETTINGS: dict[str, Callable[[Mapping[str, str], str], Any]] = {
    "ALLOWED_ORIGINS": lambda environ, name: env_list(environ, name, []),
    "MAX_RECIPIENT_LENGTH": _integer(1),
    "MAX_IDS_PER_CONNECTION": _integer(1),
    "MAX_QUEUED_MESSAGES": _integer(1),
    "GROUP_PREFIX": lambda environ, name: env_str(environ, name, ""),
    "REGISTRY_ENABLED": lambda environ, name: env_bool(environ, name, True),
    "REGISTRY_FLUSH_INTERVAL": lambda environ, name: env_seconds(environ, name, 1.0),
    "HEARTBEAT_INTERVAL": lambda environ, name: env_seconds(environ, name, 1.0),
    "STALE_AFTER": lambda environ, name: env_seconds(environ, name, 1.0),
    "SEND_THROUGH": lambda environ, name: env_str(environ, name, "").lower(),
    "SERVER_URL": lambda environ, name: env_websocket_url(environ, name, ""),
    "API_KEYS": lambda environ, name: env_list(environ, name, []),
    "API_MAX_BODY": _integer(1),
    "API_MAX_BATCH": _integer(1),
    "HISTORY_SIZE": _integer(0),
    "HISTORY_TTL": lambda environ, name: env_seconds(environ, name, 1.0),
    "HISTORY_MAX_ENTRIES": _integer(1),
    "PENDING": lambda environ, name: env_bool(environ, name, True),
    "DRAIN_SECONDS": lambda environ, name: env_seconds(environ, name, 5.0),
    "REGISTRATION": lambda environ, name: env_str(environ, name, "").lower(),
    "TOKEN_MAX_AGE": _integer(1),
    "WS_SENDERS": lambda environ, name: env_str(environ, name, "").lower(),
    "MAX_FRAMES_PER_SECOND": _integer(0),
    "FLOOD_SECONDS": lambda environ, name: env_seconds(environ, name, 5.0),
    "MAX_CONNECTIONS_PER_ADDRESS": _integer(0),
    "MAX_HANDSHAKES_PER_SECOND_PER_ADDRESS": _integer(0),
    "METRICS_KEY": lambda environ, name: env_str(environ, name, ""),
    "METRICS_ALLOWED_ADDRESSES": lambda environ, name: env_list(environ, name, []),
    "TRUSTED_PROXIES": lambda environ, name: env_list(environ, name, []),
}


def app_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``NOTIFICATIONS_*`` settings that the ``NOTIFY_*`` variables set (only those set)."""
    return {
        f"NOTIFICATIONS_{name}": parse(environ, f"NOTIFY_{name}")
        for name, parse in APP_SETTINGS.items()
        if _raw(environ, f"NOTIFY_{name}") is not None
    }
