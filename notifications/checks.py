"""System checks: every app setting's type and range, one stable id per problem.

``manage.py check`` reports them, and :func:`notifications.server.start_server`
refuses to start a server process on any error. The ids are listed in the
README's settings table; a test asserts the exact list.
"""

from __future__ import annotations

import math
import re
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from notifications.conf import raw
from notifications.networks import not_networks

MIN_API_KEY_LENGTH = 32
# Channels' group names: ASCII letters, digits, hyphens, underscores and periods, under 100 characters.
GROUP_NAME_CHARACTERS = re.compile(r"[a-zA-Z0-9_.-]*")
HASHED_ID_LENGTH = 64  # protocol.group_name() appends a SHA-256 hex digest
SEND_THROUGH_CHOICES = ("auto", "layer", "server")
OWN_LAYERS = ("notifications.layers.memory.InMemoryLayer", "notifications.layers.redis.RedisPubSubLayer")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _positive_int(name: str, value: object, id: str) -> list[CheckMessage]:
    if _is_int(value) and value >= 1:  # type: ignore[operator]
        return []
    return [Error(f"NOTIFICATIONS_{name} is {value!r}; it must be a whole number, at least 1.", id=id)]


def _seconds(name: str, value: object, id: str) -> list[CheckMessage]:
    if _is_seconds(value):
        return []
    return [Error(f"NOTIFICATIONS_{name} is {value!r}; it must be a positive number of seconds.", id=id)]


def _list_of_strings(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)


@register()
def check_allowed_origins(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    origins = raw("ALLOWED_ORIGINS")
    if not _list_of_strings(origins):
        return [
            Error(
                f"NOTIFICATIONS_ALLOWED_ORIGINS is {origins!r}; it must be a list of strings.",
                hint='For example ["https://app.example.com", ".example.org"], or ["*"] to allow any origin.',
                id="notifications.E001",
            )
        ]
    errors: list[CheckMessage] = []
    for origin in origins:
        if origin in {"*", "null"}:
            continue
        if not origin or "://" in origin and origin.count("/") > 2:
            errors.append(
                Error(
                    f"NOTIFICATIONS_ALLOWED_ORIGINS holds {origin!r}, which is not an origin.",
                    hint="Use scheme://host[:port], a host, .domain for a domain and its subdomains, * or null.",
                    id="notifications.E002",
                )
            )
    return errors


@register()
def check_limits(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors = [
        *_positive_int("MAX_RECIPIENT_LENGTH", raw("MAX_RECIPIENT_LENGTH"), "notifications.E003"),
        *_positive_int("MAX_IDS_PER_CONNECTION", raw("MAX_IDS_PER_CONNECTION"), "notifications.E005"),
        *_positive_int("MAX_QUEUED_MESSAGES", raw("MAX_QUEUED_MESSAGES"), "notifications.E006"),
        *_positive_int("API_MAX_BODY", raw("API_MAX_BODY"), "notifications.E017"),
        *_positive_int("API_MAX_BATCH", raw("API_MAX_BATCH"), "notifications.E018"),
    ]
    if _is_int(raw("MAX_RECIPIENT_LENGTH")):
        from notifications.models import Registration

        column = Registration._meta.get_field("recipient").max_length or 0
        if column < raw("MAX_RECIPIENT_LENGTH"):
            # The registry stores every registered id; a longer one would fail its writes.
            errors.append(
                Error(
                    f"NOTIFICATIONS_MAX_RECIPIENT_LENGTH is {raw('MAX_RECIPIENT_LENGTH')}; the registry stores "
                    f"at most {column} characters.",
                    id="notifications.E004",
                )
            )
    return errors


@register()
def check_group_prefix(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    prefix = raw("GROUP_PREFIX")
    if isinstance(prefix, str) and GROUP_NAME_CHARACTERS.fullmatch(prefix) and len(prefix) + HASHED_ID_LENGTH < 100:
        return []
    return [
        Error(
            f"NOTIFICATIONS_GROUP_PREFIX is {prefix!r}; it must be a string of ASCII letters, digits, '-', '_' "
            f"and '.', at most {99 - HASHED_ID_LENGTH} characters (channel-layer group names).",
            id="notifications.E007",
        )
    ]


@register()
def check_registry(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if not isinstance(raw("REGISTRY_ENABLED"), bool):
        errors.append(
            Error(
                f"NOTIFICATIONS_REGISTRY_ENABLED is {raw('REGISTRY_ENABLED')!r}; it must be True or False.",
                id="notifications.E008",
            )
        )
    flush, heartbeat, stale = raw("REGISTRY_FLUSH_INTERVAL"), raw("HEARTBEAT_INTERVAL"), raw("STALE_AFTER")
    errors += _seconds("REGISTRY_FLUSH_INTERVAL", flush, "notifications.E009")
    errors += _seconds("HEARTBEAT_INTERVAL", heartbeat, "notifications.E010")
    errors += _seconds("STALE_AFTER", stale, "notifications.E011")
    if _is_seconds(heartbeat) and _is_seconds(stale) and stale < 2 * heartbeat:
        # One late heartbeat (a busy database, a pause) must not get a live process purged.
        errors.append(
            Error(
                f"NOTIFICATIONS_STALE_AFTER ({stale} s) is less than twice NOTIFICATIONS_HEARTBEAT_INTERVAL "
                f"({heartbeat} s): live processes would be purged.",
                hint="Set NOTIFICATIONS_STALE_AFTER to at least twice NOTIFICATIONS_HEARTBEAT_INTERVAL.",
                id="notifications.E012",
            )
        )
    return errors


@register()
def check_sending(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if raw("SEND_THROUGH") not in SEND_THROUGH_CHOICES:
        errors.append(
            Error(
                f"NOTIFICATIONS_SEND_THROUGH is {raw('SEND_THROUGH')!r}; it must be one of "
                f"{', '.join(map(repr, SEND_THROUGH_CHOICES))}.",
                id="notifications.E013",
            )
        )
    url = raw("SERVER_URL")
    if not (isinstance(url, str) and url.startswith(("ws://", "wss://")) and len(url) > len("wss://")):
        errors.append(
            Error(
                f"NOTIFICATIONS_SERVER_URL is {url!r}; it must be a WebSocket address such as ws://127.0.0.1:8765/.",
                id="notifications.E014",
            )
        )
    return errors


@register()
def check_history(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    size = raw("HISTORY_SIZE")
    if not (_is_int(size) and size >= 0):
        errors.append(
            Error(
                f"NOTIFICATIONS_HISTORY_SIZE is {size!r}; it must be a whole number, 0 or more.",
                id="notifications.E020",
            )
        )
    ttl = raw("HISTORY_TTL")
    if not (_is_seconds(ttl) and ttl >= 1):
        errors.append(
            Error(
                f"NOTIFICATIONS_HISTORY_TTL is {ttl!r}; it must be a number of seconds, at least 1.",
                id="notifications.E021",
            )
        )
    errors += _positive_int("HISTORY_MAX_ENTRIES", raw("HISTORY_MAX_ENTRIES"), "notifications.E022")
    if not isinstance(raw("PENDING"), bool):
        errors.append(
            Error(f"NOTIFICATIONS_PENDING is {raw('PENDING')!r}; it must be True or False.", id="notifications.E023")
        )
    return errors


# The stop timeouts of deploy/supervisor and deploy/systemd (30 s) hold the drain, the closing
# handshakes and the registry's removal of the process's rows (up to 5 s each).
MAX_DRAIN_SECONDS = 20.0


@register()
def check_drain(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    seconds = raw("DRAIN_SECONDS")
    if not _is_seconds(seconds):
        return [
            Error(
                f"NOTIFICATIONS_DRAIN_SECONDS is {seconds!r}; it must be a positive number of seconds.",
                id="notifications.E024",
            )
        ]
    if seconds > MAX_DRAIN_SECONDS:
        return [
            Warning(
                f"NOTIFICATIONS_DRAIN_SECONDS is {seconds:g}: longer than the {MAX_DRAIN_SECONDS:g} s the deploy "
                "files' stop timeouts (30 s) leave for it, so a stop may kill the process mid-drain.",
                hint="Raise stopwaitsecs (supervisord) and TimeoutStopSec (systemd) to at least the drain plus 10 s.",
                id="notifications.W002",
            )
        ]
    return []


REGISTRATION_MODES = ("open", "signed")
SENDER_MODES = ("anyone", "key", "none")


@register(Tags.security)
def check_access(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    mode = raw("REGISTRATION")
    if mode not in REGISTRATION_MODES:
        errors.append(
            Error(
                f"NOTIFICATIONS_REGISTRATION is {mode!r}; it must be one of {', '.join(REGISTRATION_MODES)}.",
                id="notifications.E025",
            )
        )
    errors += _positive_int("TOKEN_MAX_AGE", raw("TOKEN_MAX_AGE"), "notifications.E026")
    senders = raw("WS_SENDERS")
    if senders not in SENDER_MODES:
        errors.append(
            Error(
                f"NOTIFICATIONS_WS_SENDERS is {senders!r}; it must be one of {', '.join(SENDER_MODES)}.",
                id="notifications.E027",
            )
        )
    return errors


LIMITS = ("MAX_FRAMES_PER_SECOND", "MAX_CONNECTIONS_PER_ADDRESS", "MAX_HANDSHAKES_PER_SECOND_PER_ADDRESS")


@register()
def check_client_limits(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = [
        Error(
            f"NOTIFICATIONS_{name} is {raw(name)!r}; it must be a whole number, 0 (no limit) or more.",
            id="notifications.E028",
        )
        for name in LIMITS
        if not (_is_int(raw(name)) and raw(name) >= 0)
    ]
    errors += _seconds("FLOOD_SECONDS", raw("FLOOD_SECONDS"), "notifications.E029")
    return errors


@register(Tags.security)
def check_api_keys(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    keys = raw("API_KEYS")
    if not _list_of_strings(keys):
        # Never show the value: it may hold a key, and this line ends up in logs.
        return [
            Error(
                f"NOTIFICATIONS_API_KEYS is a {type(keys).__name__}; it must be a list of strings.",
                id="notifications.E015",
            )
        ]
    # Never name the key itself: this line ends up in logs.
    short = [index for index, key in enumerate(keys, start=1) if len(key) < MIN_API_KEY_LENGTH]
    if short:
        return [
            Error(
                f"NOTIFICATIONS_API_KEYS: key number {', '.join(map(str, short))} is shorter than "
                f"{MIN_API_KEY_LENGTH} characters, too easy to guess.",
                hint="Generate keys with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'",
                id="notifications.E016",
            )
        ]
    return []


@register(Tags.security)
def check_metrics_access(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    key = raw("METRICS_KEY")
    if not isinstance(key, str):
        errors.append(
            Error(f"NOTIFICATIONS_METRICS_KEY is a {type(key).__name__}; it must be a string.", id="notifications.E030")
        )
    elif key and len(key) < MIN_API_KEY_LENGTH:
        # Never show the value: this line ends up in logs.
        errors.append(
            Error(
                f"NOTIFICATIONS_METRICS_KEY is shorter than {MIN_API_KEY_LENGTH} characters, too easy to guess.",
                hint="Generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'",
                id="notifications.E030",
            )
        )
    addresses = raw("METRICS_ALLOWED_ADDRESSES")
    if not _list_of_strings(addresses):
        errors.append(
            Error(
                f"NOTIFICATIONS_METRICS_ALLOWED_ADDRESSES is a {type(addresses).__name__}; it must be a list of "
                "addresses or networks.",
                id="notifications.E031",
            )
        )
    else:
        errors += _network_errors("METRICS_ALLOWED_ADDRESSES", addresses, "notifications.E031")
    return errors


@register(Tags.security)
def check_trusted_proxies(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    proxies = raw("TRUSTED_PROXIES")
    if not _list_of_strings(proxies):
        return [
            Error(
                f"NOTIFICATIONS_TRUSTED_PROXIES is a {type(proxies).__name__}; it must be a list of addresses or "
                "networks.",
                id="notifications.E032",
            )
        ]
    return _network_errors("TRUSTED_PROXIES", proxies, "notifications.E032")


def _network_errors(name: str, items: list[str], check_id: str) -> list[CheckMessage]:
    return [
        Error(
            f"NOTIFICATIONS_{name}: {item!r} is not an address or a network.",
            hint="Use addresses or networks such as 10.0.0.5, 10.0.0.0/8 or ::1.",
            id=check_id,
        )
        for item in not_networks(items)
    ]


# What a channel layer other than the app's own loses, by what it is.
def _foreign_layer_losses(backend: str) -> str:
    if backend.endswith("InMemoryChannelLayer"):
        return "registrations expire after its group_expiry (a day by default), and notifications that do not fit "
    return "notifications that do not fit a connection's queue are dropped without being counted or logged, and "


@register()
def check_channel_layer(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    layers = getattr(settings, "CHANNEL_LAYERS", None)
    default = layers.get("default") if isinstance(layers, dict) else None
    if not isinstance(default, dict) or not isinstance(default.get("BACKEND"), str):
        return [
            Error(
                "CHANNEL_LAYERS has no 'default' layer: notifications cannot be relayed.",
                hint='Use {"default": {"BACKEND": "notifications.layers.memory.InMemoryLayer"}} for one process, '
                "notifications.layers.redis.RedisPubSubLayer for several.",
                id="notifications.E019",
            )
        ]
    backend = default["BACKEND"]
    if backend in OWN_LAYERS:
        return []
    return [
        Warning(
            f"CHANNEL_LAYERS['default'] is {backend}, not one of the app's layers: no notification is kept "
            f"(no history, nothing pending for a late registration), {_foreign_layer_losses(backend)}"
            "each connection's queue may be unbounded or silently capped.",
            hint="Use notifications.layers.memory.InMemoryLayer (one process) or "
            "notifications.layers.redis.RedisPubSubLayer (Redis).",
            id="notifications.W001",
        )
    ]


# What `manage.py check --deploy` says is still open. Each may be accepted knowingly (the README says
# which, for clients of protocol v1); each hint names the step that closes it.
MIN_DISTINCT_KEY_CHARACTERS = 10
MIN_SECRET_KEY_LENGTH = 50


@register(Tags.security, deploy=True)
def check_deployment(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    warnings: list[CheckMessage] = []
    if not settings.DEBUG and raw("REGISTRATION") == "open":
        warnings.append(
            Warning(
                "Registrations are open: whoever knows an id reads its notifications and takes its pending ones.",
                hint="Set NOTIFY_REGISTRATION=signed once your pages register with tokens (README, Locking it down).",
                id="notifications.W003",
            )
        )
    if raw("WS_SENDERS") == "anyone":
        warnings.append(
            Warning(
                "Any WebSocket client may send any text to any id (NOTIFICATIONS_WS_SENDERS is 'anyone').",
                hint="Set NOTIFY_WS_SENDERS=key (back-ends present an API key) or none (README, Locking it down).",
                id="notifications.W004",
            )
        )
    origins = raw("ALLOWED_ORIGINS")
    if raw("REGISTRATION") == "signed" and _list_of_strings(origins) and "*" in origins:
        warnings.append(
            Warning(
                "Registrations are signed but any site's pages may connect (NOTIFICATIONS_ALLOWED_ORIGINS is '*').",
                hint="List the origins of your own pages in NOTIFY_ALLOWED_ORIGINS.",
                id="notifications.W005",
            )
        )
    if all(raw(name) == 0 for name in LIMITS):
        warnings.append(
            Warning(
                "No client limit is on: one connection may flood, one address may open connections without end.",
                hint="Set NOTIFY_MAX_FRAMES_PER_SECOND, NOTIFY_MAX_CONNECTIONS_PER_ADDRESS and "
                "NOTIFY_MAX_HANDSHAKES_PER_SECOND_PER_ADDRESS (README, Locking it down).",
                id="notifications.W006",
            )
        )
    keys = raw("API_KEYS")
    if _list_of_strings(keys):
        weak = [
            index
            for index, key in enumerate(keys, start=1)
            if len(set(key)) < MIN_DISTINCT_KEY_CHARACTERS or keys.index(key) != index - 1
        ]
        if weak:  # never the key itself: this line ends up in logs
            warnings.append(
                Warning(
                    f"NOTIFICATIONS_API_KEYS: key number {', '.join(map(str, weak))} is weak (fewer than "
                    f"{MIN_DISTINCT_KEY_CHARACTERS} different characters, or the same as an earlier key).",
                    hint="Generate keys with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'",
                    id="notifications.W007",
                )
            )
    try:
        secret = settings.SECRET_KEY
    except ImproperlyConfigured:  # empty: Django refuses to use it at all, and the project's own check says so
        secret = None
    if isinstance(secret, str) and (
        len(secret) < MIN_SECRET_KEY_LENGTH
        or len(set(secret)) < MIN_DISTINCT_KEY_CHARACTERS
        or secret.startswith("django-insecure-")
    ):
        warnings.append(
            Warning(
                f"SECRET_KEY is weak (under {MIN_SECRET_KEY_LENGTH} characters, few different ones, or Django's "
                "insecure default): registration tokens and the project's own sender key are made from it.",
                hint="Set DJANGO_SECRET_KEY to: python3 -c 'import secrets; print(secrets.token_urlsafe(50))'",
                id="notifications.W008",
            )
        )
    return warnings
