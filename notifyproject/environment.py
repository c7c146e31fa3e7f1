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


def _shown(url: str) -> str:
    """A Redis address for an error message: whatever could be a password (before an @) left out."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}" if sep else ("***" if "@" in url else url)


def env_redis_url(environ: Mapping[str, str], name: str) -> str:
    value = env_str(environ, name, "")
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(
            f"{name}={_shown(value)!r} is not a Redis address; use redis://host:6379/0 (a comma in a password: %2C)."
        )
    return value


def _host_port(item: str, name: str) -> tuple[str, int]:
    host, colon, port = item.rpartition(":")
    host = host.strip("[]")
    if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigurationError(f"{name}: {item!r} is not host:port.")
    return host, int(port)


def env_redis_hosts(environ: Mapping[str, str]) -> list[dict[str, Any]]:
    """The channel layer's Redis servers, as channels-redis's ``hosts``; [] when Redis is not configured.

    ``REDIS_URL`` holds one address, or several separated by commas (shards: each id lives on
    one of them). ``REDIS_SENTINELS`` (host:port,host:port) with ``REDIS_SENTINEL_MASTER``
    names a Sentinel-managed Redis instead; ``REDIS_PASSWORD`` is the master's password and
    ``REDIS_SENTINEL_PASSWORD`` the sentinels' own, when they have one.
    """
    urls = env_list(environ, "REDIS_URL", [])
    sentinels = env_list(environ, "REDIS_SENTINELS", [])
    master = env_str(environ, "REDIS_SENTINEL_MASTER", "")
    if urls and sentinels:
        raise ConfigurationError("REDIS_URL and REDIS_SENTINELS are both set; use one of them.")
    if sentinels:
        if not master:
            raise ConfigurationError("REDIS_SENTINELS is set without REDIS_SENTINEL_MASTER, the master's name.")
        host: dict[str, Any] = {
            "master_name": master,
            "sentinels": [_host_port(item, "REDIS_SENTINELS") for item in sentinels],
        }
        if password := env_str(environ, "REDIS_PASSWORD", ""):
            host["password"] = password
        if sentinel_password := env_str(environ, "REDIS_SENTINEL_PASSWORD", ""):
            host["sentinel_kwargs"] = {"password": sentinel_password}
        return [host]
    if master:
        raise ConfigurationError("REDIS_SENTINEL_MASTER is set without REDIS_SENTINELS, the sentinels' addresses.")
    for index, url in enumerate(urls):
        env_redis_url({"REDIS_URL": url}, "REDIS_URL")
        if url in urls[:index]:
            raise ConfigurationError(f"REDIS_URL names {_shown(url)!r} twice; each shard is a different Redis.")
    return [{"address": url} for url in urls]


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
