"""The suite by kind: every test gets exactly one kind, derived from the fixtures it uses (tests/conftest.py)."""

from __future__ import annotations

import pytest

from harness.servers import Python
from tests.kinds import KINDS, UNIT, kind_of

ALL_KINDS = [*KINDS, UNIT]
# Known tests, one of each kind (parametrized ids are tests as well).
PURE = "tests/test_protocol.py::test_connected_registers_the_id"
DAPHNE = "tests/test_daphne.py::test_greet_register_and_receive_from_a_short_lived_sender"
MANAGE_PY = "tests/test_project_settings.py::test_management_commands_need_no_secret_key"
NGINX = "tests/test_proxy.py::test_behind_nginx_the_admin_shows_the_real_client_address_and_not_a_forged_one"
SUPERVISORD = (
    "tests/test_deploy.py::"
    "test_supervisord_runs_two_daphne_processes_on_one_socket_behind_nginx_and_restarts_a_killed_one"
)
CHROMIUM = "tests/test_page.py::test_the_client_backs_off_exponentially_with_jitter"


@pytest.mark.parametrize(
    ("fixtures", "kind"),
    [
        ((), "unit"),
        (("settings", "tmp_path", "db", "live_connections", "in_memory_layer", "redis_prefix"), "unit"),
        (("daphne",), "server"),
        (("redis_url",), "server"),
        (("own_redis",), "server"),
        (("manage",), "server"),
        (("run_python",), "server"),
        (("daphne", "nginx_factory"), "deploy"),
        (("socket_activate", "redis_url"), "deploy"),
        (("daphne", "nginx_factory", "browser"), "browser"),
    ],
)
def test_the_heaviest_fixture_decides_the_kind(fixtures: tuple[str, ...], kind: str) -> None:
    assert kind_of(fixtures) == kind


def collected(run_python: Python, *options: str) -> set[str]:
    """The ids ``pytest --collect-only`` lists with ``options``."""
    done = run_python(
        "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *options, "tests",
        env={"DJANGO_SETTINGS_MODULE": "tests.settings"},
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return {line for line in done.stdout.splitlines() if "::" in line}


def test_every_test_has_exactly_one_kind_and_known_tests_have_theirs(run_python: Python) -> None:
    everything = collected(run_python)
    by_kind = {kind: collected(run_python, "-m", kind) for kind in ALL_KINDS}
    assert sum(len(ids) for ids in by_kind.values()) == len(everything)
    assert set().union(*by_kind.values()) == everything
    expected = {PURE: "unit", DAPHNE: "server", MANAGE_PY: "server", NGINX: "deploy", SUPERVISORD: "deploy"}
    expected[CHROMIUM] = "browser"
    for test, kind in expected.items():
        assert test in everything, test
        assert [k for k, ids in by_kind.items() if test in ids] == [kind], test
