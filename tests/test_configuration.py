"""Configuration from the environment and the system checks that guard it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.core.checks import run_checks

from harness.servers import Daphne, Python


def error_ids(settings_errors: list) -> set[str]:
    return {message.id for message in settings_errors}


def test_a_missing_secret_key_with_debug_off_fails_the_checks(settings: pytest.FixtureRequest) -> None:
    settings.DEBUG = False
    settings.SECRET_KEY = ""
    assert "notifications.E001" in error_ids(run_checks(include_deployment_checks=True))


def test_a_missing_secret_key_fails_the_deployment_checks(run_python: Python) -> None:
    result = run_python("manage.py", "check", "--deploy", env={"DJANGO_SECRET_KEY": None, "DJANGO_DEBUG": "0"})
    assert result.returncode != 0
    assert "notifications.E001" in result.stderr
    assert "Traceback" not in result.stderr


def test_management_commands_need_no_secret_key(run_python: Python) -> None:
    result = run_python("manage.py", "check", env={"DJANGO_SECRET_KEY": None, "DJANGO_DEBUG": "0"})
    assert result.returncode == 0, result.stderr


def test_daphne_refuses_to_start_without_a_secret_key(daphne_factory: Callable[..., Daphne]) -> None:
    with pytest.raises(RuntimeError) as failed:
        daphne_factory({"DJANGO_SECRET_KEY": None, "DJANGO_DEBUG": "0"})
    log = str(failed.value)
    assert "Configuration error: notifications.E001: DJANGO_SECRET_KEY is not set" in log
    assert "Traceback" not in log


def test_debug_generates_a_development_key(run_python: Python) -> None:
    result = run_python("manage.py", "check", env={"DJANGO_SECRET_KEY": None, "DJANGO_DEBUG": "1"})
    assert result.returncode == 0, result.stderr


def test_a_bad_origin_entry_fails_the_checks(settings: pytest.FixtureRequest) -> None:
    settings.NOTIFICATIONS_ALLOWED_ORIGINS = ["https://app.example.com/some/path"]
    assert "notifications.E002" in error_ids(run_checks())


def test_ids_longer_than_the_registry_stores_fail_the_checks(settings: pytest.FixtureRequest) -> None:
    settings.NOTIFICATIONS_MAX_RECIPIENT_LENGTH = 300
    messages = [m for m in run_checks() if m.id == "notifications.E003"]
    assert messages and "stores at most 255 characters" in messages[0].msg


@pytest.mark.parametrize(
    "setting",
    [
        "NOTIFICATIONS_MAX_IDS_PER_CONNECTION",
        "NOTIFICATIONS_MAX_RECIPIENT_LENGTH",
        "NOTIFICATIONS_MAX_QUEUED_MESSAGES",
        "NOTIFICATIONS_API_MAX_BODY",
        "NOTIFICATIONS_API_MAX_BATCH",
    ],
)
def test_a_limit_below_one_fails_the_checks(settings: pytest.FixtureRequest, setting: str) -> None:
    setattr(settings, setting, 0)
    assert "notifications.E003" in error_ids(run_checks())


def test_a_queue_limit_that_is_not_a_number_stops_start_up_with_one_line(run_python: Python) -> None:
    result = run_python("manage.py", "check", env={"NOTIFY_MAX_QUEUED_MESSAGES": "lots"})
    assert result.returncode != 0
    assert "Configuration error: NOTIFY_MAX_QUEUED_MESSAGES='lots' is not a whole number." in result.stderr
    assert "Traceback" not in result.stderr


def test_the_default_configuration_passes_the_checks() -> None:
    assert not [m for m in run_checks() if m.id and m.id.startswith("notifications.")]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LOG_LEVEL", "LOUD", "Configuration error: LOG_LEVEL='LOUD' is not a log level"),
        ("DJANGO_DEBUG", "maybe", "Configuration error: DJANGO_DEBUG='maybe' is not a boolean"),
        ("DATABASE_URL", "nosuchdb://x", "Configuration error: DATABASE_URL"),
        ("REDIS_URL", "http://not-redis", "Configuration error: REDIS_URL"),
        ("NOTIFY_SERVER_URL", "http://localhost:8765/", "Configuration error: NOTIFY_SERVER_URL"),
    ],
)
def test_a_bad_environment_value_is_one_clear_line(
    variable: str, value: str, expected: str, run_python: Python
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
    result = run_python(
        "-c",
        code,
        env={"LOG_LEVEL": "warning", "DJANGO_SETTINGS_MODULE": "notifyproject.settings", "DJANGO_DEBUG": "1"},
    )
    assert result.stdout.strip() == str(30), result.stderr


@pytest.mark.parametrize(
    ("heartbeat", "stale_after", "error"),
    [(0, 30, "notifications.E004"), (10, -1, "notifications.E004"), (10, 15, "notifications.E005")],
)
def test_registry_timings_that_would_purge_live_processes_fail_the_checks(
    settings: pytest.FixtureRequest, heartbeat: float, stale_after: float, error: str
) -> None:
    settings.NOTIFICATIONS_HEARTBEAT_INTERVAL = heartbeat
    settings.NOTIFICATIONS_STALE_AFTER = stale_after
    assert error in error_ids(run_checks())


def test_the_default_registry_timings_pass_the_checks() -> None:
    assert not {"notifications.E004", "notifications.E005"} & error_ids(run_checks())


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_a_bad_registry_timing_in_the_environment_stops_start_up_with_one_line(value: str, run_python: Python) -> None:
    result = run_python("manage.py", "check", env={"DJANGO_DEBUG": "1", "NOTIFY_STALE_AFTER": value})
    assert result.returncode != 0
    assert f"Configuration error: NOTIFY_STALE_AFTER={value!r} is not a positive number of seconds." in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("behind_proxy", "trusted"), [("1", True), ("0", False), (None, False)])
def test_x_forwarded_proto_is_trusted_only_behind_the_proxy(
    behind_proxy: str | None, trusted: bool, run_python: Python
) -> None:
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(getattr(settings, 'SECURE_PROXY_SSL_HEADER', None) is not None)"
    )
    result = run_python("-c", code, env={"NOTIFY_BEHIND_PROXY": behind_proxy, "DJANGO_DEBUG": "1"})
    assert result.stdout.strip() == str(trusted), result.stderr


def test_a_short_api_key_stops_the_server_without_showing_the_key(daphne_factory: Callable[..., Daphne]) -> None:
    env = {"NOTIFY_API_KEYS": "k" * 40 + ",guessable", "DJANGO_DEBUG": "1"}
    with pytest.raises(RuntimeError) as failed:
        daphne_factory(env)
    log = str(failed.value)
    assert "Configuration error: notifications.E006: NOTIFY_API_KEYS: key number 2 is shorter than 32" in log
    assert "guessable" not in log
    assert "Traceback" not in log


def test_long_api_keys_pass_the_checks(settings: pytest.FixtureRequest) -> None:
    settings.NOTIFICATIONS_API_KEYS = ["k" * 32, "another-key-for-the-queue-manager-0123456789"]
    assert "notifications.E006" not in error_ids(run_checks())


HTTPS_WARNINGS = {"security.W004", "security.W008", "security.W012", "security.W016"}


@pytest.mark.parametrize(("https", "warned"), [("1", set()), ("0", HTTPS_WARNINGS)])
def test_https_mode_answers_the_deployment_checks_about_tls(https: str, warned: set[str], run_python: Python) -> None:
    env = {
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "a-long-random-production-key-" + "x" * 40,
        "DJANGO_HTTPS": https,
        "NOTIFY_BEHIND_PROXY": "1",
    }
    result = run_python("manage.py", "check", "--deploy", env=env)
    assert result.returncode == 0, result.stderr
    assert {w for w in HTTPS_WARNINGS if f"({w})" in result.stderr} == warned
