"""The app's system checks: every setting's type and range, one id per problem, never a crash."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core.checks import CheckMessage, run_checks

from harness.servers import ROOT


def ids(messages: list[CheckMessage]) -> list[str]:
    return sorted(m.id for m in messages if m.id and m.id.startswith("notifications."))


# Each bad value, and the one check id it gets: the whole list of the app's ids.
BAD_SETTINGS: list[tuple[dict[str, Any], str]] = [
    ({"NOTIFICATIONS_ALLOWED_ORIGINS": "https://a.example"}, "notifications.E001"),  # a string, not a list
    ({"NOTIFICATIONS_ALLOWED_ORIGINS": ["https://a.example", 7]}, "notifications.E001"),
    ({"NOTIFICATIONS_ALLOWED_ORIGINS": ["https://app.example.com/some/path"]}, "notifications.E002"),
    ({"NOTIFICATIONS_ALLOWED_ORIGINS": [""]}, "notifications.E002"),
    ({"NOTIFICATIONS_MAX_RECIPIENT_LENGTH": 0}, "notifications.E003"),
    ({"NOTIFICATIONS_MAX_RECIPIENT_LENGTH": "255"}, "notifications.E003"),
    ({"NOTIFICATIONS_MAX_RECIPIENT_LENGTH": 300}, "notifications.E004"),
    ({"NOTIFICATIONS_MAX_IDS_PER_CONNECTION": 0}, "notifications.E005"),
    ({"NOTIFICATIONS_MAX_IDS_PER_CONNECTION": True}, "notifications.E005"),  # a bool is no count
    ({"NOTIFICATIONS_MAX_QUEUED_MESSAGES": "lots"}, "notifications.E006"),
    ({"NOTIFICATIONS_MAX_QUEUED_MESSAGES": 2.5}, "notifications.E006"),
    ({"NOTIFICATIONS_GROUP_PREFIX": "notify:"}, "notifications.E007"),  # not allowed in a group name
    ({"NOTIFICATIONS_GROUP_PREFIX": "x" * 36}, "notifications.E007"),  # the name would reach 100
    ({"NOTIFICATIONS_GROUP_PREFIX": None}, "notifications.E007"),
    ({"NOTIFICATIONS_REGISTRY_ENABLED": "0"}, "notifications.E008"),  # a non-empty string, truthy
    ({"NOTIFICATIONS_REGISTRY_FLUSH_INTERVAL": 0}, "notifications.E009"),
    ({"NOTIFICATIONS_REGISTRY_FLUSH_INTERVAL": "fast"}, "notifications.E009"),
    ({"NOTIFICATIONS_HEARTBEAT_INTERVAL": float("inf")}, "notifications.E010"),
    ({"NOTIFICATIONS_HEARTBEAT_INTERVAL": 0}, "notifications.E010"),
    ({"NOTIFICATIONS_STALE_AFTER": -1}, "notifications.E011"),
    ({"NOTIFICATIONS_STALE_AFTER": float("nan")}, "notifications.E011"),
    ({"NOTIFICATIONS_HEARTBEAT_INTERVAL": 10, "NOTIFICATIONS_STALE_AFTER": 15}, "notifications.E012"),
    ({"NOTIFICATIONS_SEND_THROUGH": "pigeon"}, "notifications.E013"),
    ({"NOTIFICATIONS_SERVER_URL": "http://localhost:8765/"}, "notifications.E014"),
    ({"NOTIFICATIONS_SERVER_URL": 8765}, "notifications.E014"),
    ({"NOTIFICATIONS_API_KEYS": "k" * 40}, "notifications.E015"),  # a string, not a list
    ({"NOTIFICATIONS_API_KEYS": ["k" * 40, "guessable"]}, "notifications.E016"),
    ({"NOTIFICATIONS_API_MAX_BODY": 0}, "notifications.E017"),
    ({"NOTIFICATIONS_API_MAX_BATCH": "many"}, "notifications.E018"),
    ({"CHANNEL_LAYERS": {}}, "notifications.E019"),
    ({"NOTIFICATIONS_HISTORY_SIZE": -1}, "notifications.E020"),
    ({"NOTIFICATIONS_HISTORY_SIZE": "100"}, "notifications.E020"),
    ({"NOTIFICATIONS_HISTORY_TTL": 0.5}, "notifications.E021"),  # at least a second
    ({"NOTIFICATIONS_HISTORY_TTL": "10m"}, "notifications.E021"),
    ({"NOTIFICATIONS_HISTORY_MAX_ENTRIES": 0}, "notifications.E022"),
    ({"NOTIFICATIONS_PENDING": "off"}, "notifications.E023"),
    ({"NOTIFICATIONS_DRAIN_SECONDS": 0}, "notifications.E024"),
    ({"NOTIFICATIONS_DRAIN_SECONDS": "5s"}, "notifications.E024"),
    ({"NOTIFICATIONS_DRAIN_SECONDS": 60}, "notifications.W002"),  # longer than the stop timeouts leave room for
    ({"NOTIFICATIONS_REGISTRATION": "closed"}, "notifications.E025"),
    ({"NOTIFICATIONS_TOKEN_MAX_AGE": 0}, "notifications.E026"),
    ({"NOTIFICATIONS_TOKEN_MAX_AGE": "1h"}, "notifications.E026"),
    ({"NOTIFICATIONS_WS_SENDERS": "keys"}, "notifications.E027"),
    ({"NOTIFICATIONS_MAX_FRAMES_PER_SECOND": -1}, "notifications.E028"),
    ({"NOTIFICATIONS_MAX_CONNECTIONS_PER_ADDRESS": "5"}, "notifications.E028"),
    ({"NOTIFICATIONS_MAX_HANDSHAKES_PER_SECOND_PER_ADDRESS": 2.5}, "notifications.E028"),
    ({"NOTIFICATIONS_FLOOD_SECONDS": 0}, "notifications.E029"),
    ({"NOTIFICATIONS_METRICS_KEY": "too-short-to-be-a-key"}, "notifications.E030"),
    ({"NOTIFICATIONS_METRICS_KEY": 12345}, "notifications.E030"),
    ({"NOTIFICATIONS_METRICS_ALLOWED_ADDRESSES": ["10.0.0.0/8", "the office"]}, "notifications.E031"),
    ({"NOTIFICATIONS_METRICS_ALLOWED_ADDRESSES": "10.0.0.0/8"}, "notifications.E031"),
    ({"NOTIFICATIONS_TRUSTED_PROXIES": ["10.0.0.2", "nginx.internal"]}, "notifications.E032"),
    ({"NOTIFICATIONS_TRUSTED_PROXIES": "10.0.0.2"}, "notifications.E032"),
    ({"CHANNEL_LAYERS": {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}}, "notifications.W001"),
    ({"CHANNEL_LAYERS": {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer"}}}, "notifications.W001"),
]


@pytest.mark.parametrize(("values", "expected"), BAD_SETTINGS, ids=[f"{e}-{list(v)[0]}" for v, e in BAD_SETTINGS])
def test_each_bad_setting_gets_its_own_id_and_nothing_else(
    settings: Any, values: dict[str, Any], expected: str
) -> None:
    for name, value in values.items():
        setattr(settings, name, value)
    assert ids(run_checks()) == [expected]


# A deployment that closed everything check --deploy looks at: nothing left to say.
LOCKED_DOWN: dict[str, Any] = {
    "DEBUG": False,
    "SECRET_KEY": "q8Vn2-xT4kLw9ZrB7yHc3JmP6sDf0GaU1eXo5iRt-KbN_hQz4W",
    "NOTIFICATIONS_REGISTRATION": "signed",
    "NOTIFICATIONS_WS_SENDERS": "key",
    "NOTIFICATIONS_ALLOWED_ORIGINS": ["https://app.example.com"],
    "NOTIFICATIONS_MAX_FRAMES_PER_SECOND": 50,
    "NOTIFICATIONS_API_KEYS": ["Zt3vQ9-pLk2mW8xR4nB7cY1sD6fH0gJ5aE"],
}

# Each production warning of check --deploy: the one thing that opens it on the locked-down deployment.
DEPLOY_WARNINGS: list[tuple[dict[str, Any], str]] = [
    ({"NOTIFICATIONS_REGISTRATION": "open", "NOTIFICATIONS_ALLOWED_ORIGINS": ["*"]}, "notifications.W003"),
    ({"NOTIFICATIONS_WS_SENDERS": "anyone"}, "notifications.W004"),
    ({"NOTIFICATIONS_ALLOWED_ORIGINS": ["https://app.example.com", "*"]}, "notifications.W005"),
    ({"NOTIFICATIONS_MAX_FRAMES_PER_SECOND": 0}, "notifications.W006"),
    ({"NOTIFICATIONS_API_KEYS": ["k" * 40]}, "notifications.W007"),  # long, but one character
    ({"NOTIFICATIONS_API_KEYS": ["Zt3vQ9-pLk2mW8xR4nB7cY1sD6fH0gJ5aE"] * 2}, "notifications.W007"),
    ({"SECRET_KEY": "django-insecure-" + "x7Kq2" * 10}, "notifications.W008"),
    ({"SECRET_KEY": "short-but-varied-0123456789"}, "notifications.W008"),
]


def test_a_locked_down_deployment_passes_check_deploy(settings: Any) -> None:
    for name, value in LOCKED_DOWN.items():
        setattr(settings, name, value)
    assert ids(run_checks(include_deployment_checks=True)) == []


@pytest.mark.parametrize(("values", "expected"), DEPLOY_WARNINGS, ids=[e for _, e in DEPLOY_WARNINGS])
def test_check_deploy_names_each_thing_still_open(settings: Any, values: dict[str, Any], expected: str) -> None:
    for name, value in {**LOCKED_DOWN, **values}.items():
        setattr(settings, name, value)
    assert ids(run_checks(include_deployment_checks=True)) == [expected]
    assert ids(run_checks()) == []  # production warnings only: a plain check (and start-up) says nothing


def test_the_defaults_under_check_deploy_say_what_v1_clients_keep_open(settings: Any) -> None:
    settings.DEBUG = False
    settings.SECRET_KEY = LOCKED_DOWN["SECRET_KEY"]
    assert ids(run_checks(include_deployment_checks=True)) == [
        "notifications.W003",  # registration open
        "notifications.W004",  # anyone sends
        "notifications.W006",  # no limit
    ]


def test_open_registrations_are_no_warning_while_debugging(settings: Any) -> None:
    for name, value in {**LOCKED_DOWN, "DEBUG": True, "NOTIFICATIONS_REGISTRATION": "open"}.items():
        setattr(settings, name, value)
    assert "notifications.W003" not in ids(run_checks(include_deployment_checks=True))


def test_a_weak_api_key_is_named_by_position_never_by_value(settings: Any) -> None:
    settings.NOTIFICATIONS_API_KEYS = ["Zt3vQ9-pLk2mW8xR4nB7cY1sD6fH0gJ5aE", "a" * 20 + "b" * 20]
    (message,) = [m for m in run_checks(include_deployment_checks=True) if m.id == "notifications.W007"]
    assert "key number 2 is weak" in message.msg
    assert "aaaa" not in message.msg + (message.hint or "")


def test_the_ids_are_exactly_those_the_readme_documents() -> None:
    documented = set(re.findall(r"`(notifications\.[EW]\d{3})`", (ROOT / "README.md").read_text()))
    assert documented == {expected for _, expected in BAD_SETTINGS + DEPLOY_WARNINGS}


def test_the_default_configuration_passes_every_check() -> None:
    assert ids(run_checks()) == []


def test_a_message_names_the_setting_and_its_value(settings: Any) -> None:
    # The check that once crashed with ValueError on int("lots") reports it instead.
    settings.NOTIFICATIONS_MAX_QUEUED_MESSAGES = "lots"
    (message,) = [m for m in run_checks() if m.id == "notifications.E006"]
    assert message.msg == "NOTIFICATIONS_MAX_QUEUED_MESSAGES is 'lots'; it must be a whole number, at least 1."


def test_a_short_api_key_is_reported_by_its_position_never_its_value(settings: Any) -> None:
    settings.NOTIFICATIONS_API_KEYS = ["k" * 40, "guessable", "m" * 40, "short"]
    (message,) = [m for m in run_checks() if m.id == "notifications.E016"]
    assert "key number 2, 4 is shorter than 32" in message.msg
    assert "guessable" not in message.msg + (message.hint or "")


def test_the_registry_column_bounds_the_id_length(settings: Any) -> None:
    settings.NOTIFICATIONS_MAX_RECIPIENT_LENGTH = 300
    (message,) = [m for m in run_checks() if m.id == "notifications.E004"]
    assert "stores at most 255 characters" in message.msg


def test_a_foreign_layer_is_told_what_it_loses(settings: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    (message,) = [m for m in run_checks() if m.id == "notifications.W001"]
    assert "registrations expire" in message.msg
