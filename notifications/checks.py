"""System checks: misconfiguration stops start-up with one clear line."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import ERROR, CheckMessage, Error, Tags, register, run_checks
from django.core.exceptions import ImproperlyConfigured

from notifications.conf import conf


@register(Tags.security, deploy=True)
def check_secret_key(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        key = settings.SECRET_KEY
    except ImproperlyConfigured:  # Django refuses to hand out an empty key
        key = ""
    if not settings.DEBUG and not key:
        return [
            Error(
                "DJANGO_SECRET_KEY is not set and DJANGO_DEBUG is off.",
                hint="Set DJANGO_SECRET_KEY to a long random string, or DJANGO_DEBUG=1 for development.",
                id="notifications.E001",
            )
        ]
    return []


@register()
def check_allowed_origins(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for origin in conf.ALLOWED_ORIGINS:
        if origin in {"*", "null"}:
            continue
        if not isinstance(origin, str) or "://" in origin and origin.count("/") > 2:
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
    errors: list[CheckMessage] = []
    for name, value in (
        ("NOTIFICATIONS_MAX_RECIPIENT_LENGTH", conf.MAX_RECIPIENT_LENGTH),
        ("NOTIFICATIONS_MAX_IDS_PER_CONNECTION", conf.MAX_IDS_PER_CONNECTION),
        ("NOTIFICATIONS_MAX_QUEUED_MESSAGES", conf.MAX_QUEUED_MESSAGES),
        ("NOTIFICATIONS_API_MAX_BODY", conf.API_MAX_BODY),
        ("NOTIFICATIONS_API_MAX_BATCH", conf.API_MAX_BATCH),
    ):
        if value < 1:
            errors.append(Error(f"{name} is {value}; it must be at least 1.", id="notifications.E003"))
    from notifications.models import Registration

    column = Registration._meta.get_field("recipient").max_length
    if column < conf.MAX_RECIPIENT_LENGTH:
        # The registry stores every registered id; a longer one would fail its writes.
        errors.append(
            Error(
                f"NOTIFICATIONS_MAX_RECIPIENT_LENGTH is {conf.MAX_RECIPIENT_LENGTH}; the registry stores at most "
                f"{column} characters.",
                id="notifications.E003",
            )
        )
    return errors


MIN_API_KEY_LENGTH = 32


@register(Tags.security)
def check_api_keys(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    # Never name the key itself: this line ends up in logs.
    short = [index for index, key in enumerate(conf.API_KEYS, start=1) if len(key) < MIN_API_KEY_LENGTH]
    if short:
        return [
            Error(
                f"NOTIFY_API_KEYS: key number {', '.join(map(str, short))} is shorter than {MIN_API_KEY_LENGTH} "
                "characters, too easy to guess.",
                hint="Generate keys with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'",
                id="notifications.E006",
            )
        ]
    return []


def refuse_to_start_on_errors() -> None:
    """Stop a server process whose configuration fails a check, one line per error.

    ``runserver`` runs the system checks, daphne does not; the ASGI module calls
    this. A server is a deployment, so the deployment checks run too (E001: a
    management command such as ``notify`` needs no secret key, a server does).
    """
    errors = [message for message in run_checks(include_deployment_checks=True) if message.level >= ERROR]
    if errors:
        lines = [f"{m.id}: {m.msg}" + (f" {m.hint}" if m.hint else "") for m in errors]
        raise SystemExit("Configuration error: " + "\nConfiguration error: ".join(lines))


@register()
def check_registry_timing(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    flush, heartbeat, stale = conf.REGISTRY_FLUSH_INTERVAL, conf.HEARTBEAT_INTERVAL, conf.STALE_AFTER
    if min(flush, heartbeat, stale) <= 0:
        return [
            Error(
                "NOTIFICATIONS_REGISTRY_FLUSH_INTERVAL, NOTIFICATIONS_HEARTBEAT_INTERVAL and "
                f"NOTIFICATIONS_STALE_AFTER must be positive (they are {flush}, {heartbeat} and {stale}).",
                id="notifications.E004",
            )
        ]
    if stale < 2 * heartbeat:
        # One late heartbeat (a busy database, a pause) must not get a live process purged.
        return [
            Error(
                f"NOTIFICATIONS_STALE_AFTER ({stale} s) is less than twice NOTIFICATIONS_HEARTBEAT_INTERVAL "
                f"({heartbeat} s): live processes would be purged.",
                hint="Set NOTIFY_STALE_AFTER to at least twice NOTIFY_HEARTBEAT_INTERVAL.",
                id="notifications.E005",
            )
        ]
    return []
