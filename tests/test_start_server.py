"""The one start-up of a server process: nothing happens on import, checks first, then serving."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from harness.servers import Python
from notifications import server


def test_a_failed_check_refuses_to_start_with_one_line_per_error(settings: Any) -> None:
    settings.NOTIFICATIONS_MAX_QUEUED_MESSAGES = "lots"
    settings.NOTIFICATIONS_SEND_THROUGH = "pigeon"
    with pytest.raises(ImproperlyConfigured) as refused:
        server.start_server()
    lines = str(refused.value).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ["notifications.E006", "notifications.E013"]
    assert not server.is_serving()  # refused: this process did not become a server


PROBE = """
import sys, django
django.setup()
from notifications.registry import registry
from notifications.server import is_serving, start_server
print("reactor imported:", "twisted.internet.reactor" in sys.modules)
print("serving before:", is_serving())
start_server()
print("serving after:", is_serving(), "registry started:", registry.started)
"""


def test_a_process_that_imports_twisted_without_running_daphne_is_no_daphne_server(run_python: Python) -> None:
    # django.setup() imports Twisted's reactor whenever daphne is in INSTALLED_APPS;
    # start_server() must not take that for "running under daphne".
    result = run_python("-c", PROBE, env={"DJANGO_DEBUG": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "reactor imported: True",
        "serving before: False",
        "serving after: True registry started: False",
    ]


def test_importing_the_app_makes_no_process_a_server() -> None:
    import notifications.consumers  # noqa: F401
    import notifications.sending  # noqa: F401

    assert not server.is_serving()
