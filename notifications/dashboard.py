"""What the admin's dashboard shows, as one JSON-ready dictionary (:func:`snapshot`).

Everything comes from where the other views of the deployment come from:
the registry's rows of live processes (connections, registered ids,
counters, their last undeliverable notifications), the per-minute
:class:`~notifications.models.ActivitySample` rows for the last hour's
chart, and the channel layer for the ids with the most pending
notifications. Text that came from clients (ids) is data here; the page
puts it into the document as text, never as HTML.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.utils import timezone

from notifications import metrics
from notifications.exceptions import one_line
from notifications.models import ActivitySample, Registration, ServerProcess

MINUTES = 60  # the chart's span
MOST_PENDING = 10
# The chart's series: name -> the counter whose per-minute increase it draws.
SERIES = {
    "live": metrics.DELIVERED,
    "pending": metrics.PENDING,
    "undeliverable": metrics.UNDELIVERABLE,
    "relayed": metrics.RELAYED,
}


def snapshot(now: datetime | None = None) -> dict[str, Any]:
    """The dashboard's data as of ``now`` (default: this moment)."""
    now = now or timezone.now()
    processes = list(ServerProcess.objects.alive().with_liveness().order_by("host", "pid"))
    ids = Registration.objects.alive().ids_by_process()
    rows = [
        {
            "process": f"{p.host}:{p.pid}",
            "started": p.started_at.isoformat(),
            # By the database's clock, which wrote the heartbeat.
            "heartbeat_age": round(max(0.0, (p.database_now - p.heartbeat_at).total_seconds()), 1),  # type: ignore[attr-defined]
            "connections": _int(p.counters, metrics.CONNECTIONS_OPEN),
            "registered_ids": ids.get(p.pk, 0),
            **{name: _int(p.counters, counter) for name, counter in SERIES.items()},
        }
        for p in processes
    ]
    chart = chart_series(now)
    last_minute = {name: values[-2] if len(values) > 1 else 0 for name, values in chart.items() if name != "minutes"}
    recent = sorted(
        (
            {
                "at": datetime.fromtimestamp(at, tz=UTC).isoformat(),
                "reason": str(reason),
                "whose": str(whose),
                "process": f"{p.host}:{p.pid}",
            }
            for p in processes
            for at, reason, whose in _events(p.recent_undeliverable)
        ),
        key=lambda event: event["at"],
        reverse=True,
    )[:20]
    return {
        "now": now.isoformat(),
        "processes": rows,
        "total": {
            "processes": len(rows),
            "connections": sum(r["connections"] for r in rows),
            "registered_ids": Registration.objects.alive().distinct_ids(),
        },
        "last_minute": last_minute,
        "chart": chart,
        **_most_pending(),
        "recent_undeliverable": recent,
        "reasons": metrics.UNDELIVERABLE_REASONS,
    }


def chart_series(now: datetime) -> dict[str, list[Any]]:
    """Per minute of the last hour (oldest first, the current minute last): connections and each of :data:`SERIES`.

    A minute's figure is the increase of a counter since the process's
    previous row, summed over processes; a process's first row counts whole
    only if the process started within that minute (else what came before
    is unknown, and left out).
    """
    current = now.replace(second=0, microsecond=0)
    minutes = [current - timedelta(minutes=MINUTES - 1 - i) for i in range(MINUTES)]
    index = {minute: i for i, minute in enumerate(minutes)}
    series: dict[str, list[int]] = {name: [0] * MINUTES for name in ["connections", *SERIES]}
    previous: dict[str, ActivitySample] = {}
    samples = ActivitySample.objects.filter(minute__gte=minutes[0] - timedelta(minutes=5)).order_by(
        "process_key", "minute"
    )
    by_process: dict[str, list[ActivitySample]] = defaultdict(list)
    for sample in samples:
        by_process[sample.process_key].append(sample)
    for process_samples in by_process.values():
        for sample in process_samples:
            before = previous.get(sample.process_key)
            previous[sample.process_key] = sample
            at = index.get(sample.minute)
            if at is None:
                continue
            series["connections"][at] += _int(sample.counters, metrics.CONNECTIONS_OPEN)
            if before is None and sample.started_at < sample.minute:
                continue
            for name, counter in SERIES.items():
                increase = _int(sample.counters, counter) - (_int(before.counters, counter) if before else 0)
                series[name][at] += max(0, increase)
    return {"minutes": [minute.isoformat() for minute in minutes], **series}


def _most_pending() -> dict[str, Any]:
    """The ids with the most pending notifications, or why they could not be read (Redis down)."""
    try:
        ranked = most_pending()
    except Exception as exc:
        return {"most_pending": [], "most_pending_error": f"the channel layer did not answer ({one_line(exc)})"}
    return {
        "most_pending": [{"id": recipient, "count": count} for recipient, count in ranked],
        "most_pending_error": "",
    }


def most_pending(limit: int = MOST_PENDING) -> list[tuple[str, int]]:
    """The ids with the most pending notifications, from the channel layer ([] if it keeps none)."""
    layer = get_channel_layer()
    ask = getattr(layer, "most_pending", None)
    if ask is None:
        return []
    return list(async_to_sync(ask)(limit))


def _int(counters: Any, name: str) -> int:
    value = counters.get(name, 0) if isinstance(counters, dict) else 0
    return int(value) if isinstance(value, int | float) else 0


def _events(recent: Any) -> list[tuple[float, Any, Any]]:
    if not isinstance(recent, list):
        return []
    return [(float(e[0]), e[1], e[2]) for e in recent if isinstance(e, list) and len(e) == 3]
