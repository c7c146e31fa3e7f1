"""``python manage.py notify_stats [--json]``: every live server process's connections and counters, and their sum."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.db.models import Count

from notifications.models import ServerProcess

# The counters shown in the table, in this order (--json gives every one).
SHOWN = ("relayed", "delivered", "pending", "pending_again", "replayed", "undeliverable", "missed", "reads_paused")


class Command(BaseCommand):
    help = (
        "Show every live server process (from the registry) with its open connections and its counters since "
        "it started: notifications relayed, delivered, pending, undeliverable and more, then their sum. "
        "Counters are as of each process's last registry write (its heartbeat, NOTIFICATIONS_HEARTBEAT_INTERVAL)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", dest="as_json", help="one JSON object instead of a table")

    def handle(self, *args: Any, as_json: bool = False, **options: Any) -> None:
        try:
            processes = list(ServerProcess.objects.alive().order_by("host", "pid"))
            open_connections = dict(
                ServerProcess.objects.filter(pk__in=[p.pk for p in processes])
                .annotate(n=Count("connections"))
                .values_list("pk", "n")
            )
        except DatabaseError as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CommandError(f"Cannot read the registry: the database refused ({first_line}).") from exc
        rows = [
            {
                "process": f"{p.host}:{p.pid}",
                "heartbeat_at": p.heartbeat_at.isoformat(),
                "connections": open_connections.get(p.pk, 0),
                "counters": _counters(p),
            }
            for p in processes
        ]
        total: Counter[str] = Counter()
        for row in rows:
            total.update(row["counters"])
        summary = {"connections": sum(row["connections"] for row in rows), "counters": dict(total)}
        if as_json:
            self.stdout.write(json.dumps({"processes": rows, "total": summary}, sort_keys=True))
            return
        header = ["process", "connections", *SHOWN]
        lines = [[row["process"], row["connections"], *(row["counters"].get(k, 0) for k in SHOWN)] for row in rows]
        lines.append(["total", summary["connections"], *(total.get(k, 0) for k in SHOWN)])
        widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
        for line in [header, *lines]:
            self.stdout.write("  ".join(str(cell).rjust(width) for cell, width in zip(line, widths, strict=True)))


def _counters(process: ServerProcess) -> dict[str, int]:
    """The process's counters; the three columns of older rows when it wrote no others."""
    stored = process.counters if isinstance(process.counters, dict) else {}
    counters = {str(k): int(v) for k, v in stored.items() if isinstance(v, int)}
    for name in ("relayed", "undeliverable", "rejected_frames"):
        counters.setdefault(name, getattr(process, name))
    return counters
