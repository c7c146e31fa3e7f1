"""``python manage.py purge_connections``: delete the rows of server processes without a heartbeat."""

from __future__ import annotations

import math
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from notifications.conf import conf
from notifications.models import ServerProcess


class Command(BaseCommand):
    help = (
        "Delete the live-connection rows of every server process whose last heartbeat is older than "
        "--stale-after seconds (default: NOTIFICATIONS_STALE_AFTER). Running processes do this on "
        "their own; this is for a deployment that stopped every process. A live process purged by "
        "mistake writes its rows again at its next heartbeat."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--stale-after",
            metavar="SECONDS",
            help=f"heartbeat age that counts as dead (default {conf.STALE_AFTER:g}; 0 purges every process)",
        )

    def handle(self, *args: Any, stale_after: str | None, **options: Any) -> None:
        seconds = conf.STALE_AFTER if stale_after is None else self._seconds(stale_after)
        try:
            result = ServerProcess.objects.stale(seconds).purge()
        except DatabaseError as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CommandError(f"Cannot purge: the database refused ({first_line}).") from exc
        self.stdout.write(
            f"Purged {result.connections} connection{'s' if result.connections != 1 else ''} of "
            f"{result.processes} server process{'es' if result.processes != 1 else ''} "
            f"without a heartbeat for {seconds:g} s."
        )

    @staticmethod
    def _seconds(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (value >= 0 and math.isfinite(value)):
            raise CommandError(f"--stale-after must be a number of seconds, 0 or more, not {raw!r}.")
        return value
