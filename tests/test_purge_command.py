"""`python manage.py purge_connections`: stale rows purged on demand."""

from __future__ import annotations

from collections.abc import Callable
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from notifications.models import Connection, ServerProcess


def purge(*args: str) -> str:
    out = StringIO()
    call_command("purge_connections", *args, stdout=out)
    return out.getvalue().strip()


def test_rows_of_processes_without_a_heartbeat_are_purged_and_counted(
    live_connections: Callable[..., list[Connection]],
) -> None:
    dead = live_connections(3, ids=("a", "b"), heartbeat_age=120)[0].process
    alive = live_connections(2, ids=("c",))[0].process
    assert purge() == "Purged 3 connections of 1 server process without a heartbeat for 30 s."
    assert not ServerProcess.objects.filter(pk=dead.pk).exists()
    assert Connection.objects.filter(process=alive).count() == 2
    assert purge() == "Purged 0 connections of 0 server processes without a heartbeat for 30 s."


def test_the_bound_can_be_given(live_connections: Callable[..., list[Connection]]) -> None:
    live_connections(1, heartbeat_age=10)
    live_connections(1, heartbeat_age=1)
    assert purge("--stale-after", "5") == "Purged 1 connection of 1 server process without a heartbeat for 5 s."
    assert purge("--stale-after", "0") == "Purged 1 connection of 1 server process without a heartbeat for 0 s."
    assert not Connection.objects.exists()


@pytest.mark.parametrize("bad", ["soon", "-1", "nan", "inf", ""])
def test_a_bad_bound_is_one_clear_line(bad: str, db: None) -> None:
    with pytest.raises(CommandError) as refused:
        purge("--stale-after", bad)
    assert str(refused.value) == f"--stale-after must be a number of seconds, 0 or more, not {bad!r}."
