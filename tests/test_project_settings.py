"""The project's settings from the environment: each parser as a function, and the start-up they guard."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from django.core.checks import run_checks

from harness.servers import Daphne, Python
from notifyproject.environment import (
    ConfigurationError,
    app_settings,
    env_bool,
    env_int,
    env_list,
    env_log_level,
    env_redis_hosts,
    env_redis_url,
    env_seconds,
    env_websocket_url,
)

# The parsers, as functions.


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("yes", True), (" On ", True), ("0", False), ("off", False)])
def test_booleans_read_the_usual_words(raw: str, value: bool) -> None:
    assert env_bool({"X": raw}, "X", not value) is value


@pytest.mark.parametrize("environ", [{}, {"X": ""}, {"X": "  "}])
def test_an_unset_or_blank_variable_takes_the_default(environ: dict[str, str]) -> None:
    assert env_bool(environ, "X", True) is True
    assert env_int(environ, "X", 7) == 7
    assert env_list(environ, "X", ["a"]) == ["a"]


def test_a_bad_boolean_is_one_line_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError) as error:
        env_bool({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG", False)
    assert str(error.value) == (
        "Configuration error: DJANGO_DEBUG='maybe' is not a boolean; use 1/0, true/false, yes/no or on/off."
    )


def test_lists_are_comma_separated_and_stripped() -> None:
    assert env_list({"X": " a, b ,,c "}, "X", []) == ["a", "b", "c"]


@pytest.mark.parametrize(("raw", "error"), [("lots", "is not a whole number."), ("0", "is less than 1.")])
def test_a_bad_count_is_refused(raw: str, error: str) -> None:
    with pytest.raises(ConfigurationError, match=f"X='{raw}' {error}"):
        env_int({"X": raw}, "X", 5, minimum=1)


@pytest.mark.parametrize("raw", ["soon", "0", "-5", "inf", "nan"])
def test_seconds_must_be_positive_and_finite(raw: str) -> None:
    with pytest.raises(ConfigurationError, match=f"X='{raw}' is not a positive number of seconds."):
        env_seconds({"X": raw}, "X", 1.0)


def test_addresses_and_log_levels_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="is not a WebSocket address"):
        env_websocket_url({"U": "http://localhost:8765/"}, "U", "")
    with pytest.raises(ConfigurationError, match="is not a Redis address"):
        env_redis_url({"R": "http://not-redis"}, "R")
    assert env_redis_url({}, "R") == ""
    assert env_log_level({"L": "warning"}, "L", "INFO") == "WARNING"
    with pytest.raises(ConfigurationError, match="is not a log level"):
        env_log_level({"L": "LOUD"}, "L", "INFO")


def test_redis_is_one_url_several_shards_or_a_sentinel_managed_master() -> None:
    assert env_redis_hosts({}) == []
    assert env_redis_hosts({"REDIS_URL": "redis://r:6379/0"}) == [{"address": "redis://r:6379/0"}]
    assert env_redis_hosts({"REDIS_URL": "redis://a:6379/0, redis://b:6379/0,"}) == [
        {"address": "redis://a:6379/0"},
        {"address": "redis://b:6379/0"},
    ]
    sentinel = {
        "REDIS_SENTINELS": "s1:26379,[::1]:26380",
        "REDIS_SENTINEL_MASTER": "notify",
        "REDIS_PASSWORD": "master-secret",
        "REDIS_SENTINEL_PASSWORD": "sentinel-secret",
    }
    assert env_redis_hosts(sentinel) == [
        {
            "master_name": "notify",
            "sentinels": [("s1", 26379), ("::1", 26380)],
            "password": "master-secret",
            "sentinel_kwargs": {"password": "sentinel-secret"},
        }
    ]


@pytest.mark.parametrize(
    ("environ", "error"),
    [
        ({"REDIS_URL": "redis://a/0", "REDIS_SENTINELS": "s:26379", "REDIS_SENTINEL_MASTER": "m"}, "both set"),
        ({"REDIS_SENTINELS": "s:26379"}, "without REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_MASTER": "m"}, "without REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "s", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS: 's' is not host:port."),
        ({"REDIS_SENTINELS": "s:99999", "REDIS_SENTINEL_MASTER": "m"}, "is not host:port"),
        ({"REDIS_URL": "redis://a/0,http://b/0"}, "'http://b/0' is not a Redis address"),
        ({"REDIS_URL": "redis://a/0,redis://a/0"}, "names 'redis://a/0' twice"),
    ],
)
def test_a_redis_configuration_that_cannot_work_is_one_line(environ: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(error)) as raised:
        env_redis_hosts(environ)
    assert "\n" not in str(raised.value)


def test_notify_variables_set_the_apps_settings_and_only_those_set() -> None:
    environ = {
        "NOTIFY_STALE_AFTER": "45",
        "NOTIFY_MAX_QUEUED_MESSAGES": "20",
        "NOTIFY_ALLOWED_ORIGINS": "https://a.example, .b.example",
        "NOTIFY_REGISTRY_ENABLED": "0",
        "NOTIFY_SEND_THROUGH": "Server",
        "NOTIFY_API_KEYS": "",
        "UNRELATED": "1",
    }
    assert app_settings(environ) == {
        "NOTIFICATIONS_STALE_AFTER": 45.0,
        "NOTIFICATIONS_MAX_QUEUED_MESSAGES": 20,
        "NOTIFICATIONS_ALLOWED_ORIGINS": ["https://a.example", ".b.example"],
        "NOTIFICATIONS_REGISTRY_ENABLED": False,
        "NOTIFICATIONS_SEND_THROUGH": "server",
    }


def test_every_app_setting_has_its_variable() -> None:
    from notifications.conf import DEFAULTS
    from notifyproject.environment import APP_SETTINGS

    assert set(APP_SETTINGS) == set(DEFAULTS)


# The secret key: the project's own check.


def test_a_missing_secret_key_with_debug_off_fails_the_deployment_checks(settings: pytest.FixtureRequest) -> None:
    settings.DEBUG = False
    settings.SECRET_KEY = ""
    assert "notifyproject.E001" in {m.id for m in run_checks(include_deployment_checks=True)}
    assert "notifyproject.E001" not in {m.id for m in run_checks()}  # a command such as notify needs none


# Through real processes: one line, never a traceback.


def test_management_commands_need_no_secret_key(run_python: Python) -> None:
    result = run_python("manage.py", "check", env={"DJANGO_SECRET_KEY": None, "DJANGO_DEBUG": "0"})
    assert result.returncode == 0, result.stderr


def test_a_missing_secret_key_fails_check_deploy(run_python: Python) -> None:
    result = run_python("manage.py", "check", "--deploy", env={"DJANGO_SECRET_KEY": None, "DJANGO_DEBUG": "0"})
    assert result.returncode != 0
    assert "notifyproject.E001" in result.stderr
    assert "Traceback" not in result.stderr


def test_daphne_refuses_to_start_without_a_secret_key(daphne_factory: Callable[..., Daphne]) -> None:
    with pytest.raises(RuntimeError) as failed:
        daphne_factory({"DJANGO_SECRET_KEY": None, "DJANGO_DEBUG": "0"})
    log = str(failed.value)
    assert "Configuration error: notifyproject.E001: DJANGO_SECRET_KEY is not set" in log
    assert "Traceback" not in log


def test_a_short_api_key_stops_the_server_without_showing_the_key(daphne_factory: Callable[..., Daphne]) -> None:
    with pytest.raises(RuntimeError) as failed:
        daphne_factory({"NOTIFY_API_KEYS": "k" * 40 + ",guessable", "DJANGO_DEBUG": "1"})
    log = str(failed.value)
    assert "Configuration error: notifications.E016: NOTIFICATIONS_API_KEYS: key number 2 is shorter than 32" in log
    assert "guessable" not in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LOG_LEVEL", "LOUD", "Configuration error: LOG_LEVEL='LOUD' is not a log level"),
        ("DJANGO_DEBUG", "maybe", "Configuration error: DJANGO_DEBUG='maybe' is not a boolean"),
        ("DATABASE_URL", "nosuchdb://x", "Configuration error: DATABASE_URL"),
        ("NOTIFY_MAX_QUEUED_MESSAGES", "lots", "Configuration error: NOTIFY_MAX_QUEUED_MESSAGES='lots'"),
    ],
)
def test_a_bad_environment_value_is_one_clear_line(
    run_python: Python, variable: str, value: str, expected: str
) -> None:
    result = run_python(
        "manage.py",
        "check",
        env={variable: value, "DJANGO_DEBUG": "1"} if variable != "DJANGO_DEBUG" else {variable: value},
    )
    assert result.returncode != 0
    assert result.stderr.strip().startswith(expected), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_log_level_comes_from_the_environment(run_python: Python) -> None:
    code = "import django; django.setup(); import logging; print(logging.getLogger('notifications').level)"
    result = run_python("-c", code, env={"LOG_LEVEL": "warning", "DJANGO_DEBUG": "1"})
    assert result.stdout.strip() == str(30), result.stderr


@pytest.mark.parametrize(("behind_proxy", "trusted"), [("1", True), ("0", False), (None, False)])
def test_x_forwarded_proto_is_trusted_only_behind_the_proxy(
    run_python: Python, behind_proxy: str | None, trusted: bool
) -> None:
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(getattr(settings, 'SECURE_PROXY_SSL_HEADER', None) is not None)"
    )
    result = run_python("-c", code, env={"NOTIFY_BEHIND_PROXY": behind_proxy, "DJANGO_DEBUG": "1"})
    assert result.stdout.strip() == str(trusted), result.stderr


HTTPS_WARNINGS = {"security.W004", "security.W008", "security.W012", "security.W016"}


@pytest.mark.parametrize(("https", "warned"), [("1", set()), ("0", HTTPS_WARNINGS)])
def test_https_mode_answers_the_deployment_checks_about_tls(run_python: Python, https: str, warned: set[str]) -> None:
    env = {
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "a-long-random-production-key-" + "x" * 40,
        "DJANGO_HTTPS": https,
        "NOTIFY_BEHIND_PROXY": "1",
    }
    result = run_python("manage.py", "check", "--deploy", env=env)
    assert result.returncode == 0, result.stderr
    assert {w for w in HTTPS_WARNINGS if f"({w})" in result.stderr} == warned


def test_a_bad_redis_address_is_named_without_its_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        env_redis_hosts({"REDIS_URL": "redis://:secret,part@10.0.0.5:6379/0"})  # a comma splits it
    assert "secret" not in str(raised.value) and "part" not in str(raised.value)
    assert "%2C" in str(raised.value)
    with pytest.raises(ConfigurationError) as raised:
        env_redis_hosts({"REDIS_URL": "redis://:secret@a/0,redis://:secret@a/0"})
    assert "secret" not in str(raised.value) and "redis://***@a/0" in str(raised.value)
