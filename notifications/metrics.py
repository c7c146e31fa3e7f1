"""Process-wide counters that operators read (admin, logs, metrics).

Nothing may vanish silently: every notification the server fails to hand to
the channel layer is counted here and logged at WARNING with its recipient.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque

from prometheus_client import Histogram

counters: Counter[str] = Counter()

CONNECTIONS_OPEN = "connections_open"
RELAYED = "relayed"  # notifications handed to the channel layer (sent by clients, the API, the command)
DELIVERED = "delivered"  # notifications handed to a connection live (written, or waiting for a slow reader)
UNDELIVERABLE = "undeliverable"  # every notification not delivered to a connection, whatever the cause
LAYER_FULL = "layer_full"  # ... of which: a connection's channel-layer queue was full
NOT_READING = "not_reading"  # ... of which: its client had stopped reading, NOTIFICATIONS_MAX_QUEUED_MESSAGES waited
REJECTED_FRAMES = "rejected_frames"
UNHANDLED_FRAMES = "unhandled_frames"  # frames read from a client but never handled: daphne killed the consumer
REGISTRATIONS_REFUSED = "registrations_refused"  # signed mode: no token, or one that does not register the id
SENDS_REFUSED = "sends_refused"  # WebSocket sends from connections that may not send (WS_SENDERS)
PENDING = "pending"  # notifications that no registration received, kept for the id's next one
PENDING_AGAIN = "pending_again"  # ... that reached a connection as it left, kept for the id's next one
MISSED = "missed"  # notifications a v1 connection lost while the channel layer was away (also undeliverable)
REPLAYED = "replayed"  # kept notifications (pending, or from the history on resume) sent to a registration
CAUGHT_UP = "caught_up"  # ... of which: sent after the channel layer lost them for a while (a Redis reconnect)
REDIS_SILENT = "redis_silent"  # pub/sub connections dropped because Redis stopped answering (made again)
CONTINUITY_LOST = "continuity_lost"  # registrations that could not be caught up after such a gap
READS_PAUSED = "reads_paused"  # times a client's socket was not read while its frames waited (it sent too fast)
FRAMES_LIMITED = "frames_limited"  # frames not acted on: their connection was over MAX_FRAMES_PER_SECOND
FLOODS_CLOSED = "floods_closed"  # connections closed with 4008: over MAX_FRAMES_PER_SECOND for FLOOD_SECONDS
ADDRESS_LIMITED = "address_limited"  # connections closed with 4008 at once: too many from their address
DRAINED = "drained"  # WebSockets closed with 4012 as the process stopped (a graceful drain)
RESUMES_RECOVERED = "resumes_recovered"  # v2 registrations with ``since`` answered ``recovered: true``
RESUMES_NOT_RECOVERED = "resumes_not_recovered"  # ... answered ``recovered: false``
IDS_LIMITED = "ids_limited"  # registrations refused: the connection had MAX_IDS_PER_CONNECTION ids
LAYER_READ_ERRORS = "layer_read_errors"  # reads from the channel layer (Redis pub/sub) that failed; it reconnects
LAYER_SEND_ERRORS = "layer_send_errors"  # notifications the channel layer refused to take (also undeliverable)

# Written beside the counters (process_figures()): this process's CPU seconds and resident memory.
CPU_SECONDS = "cpu_seconds"
RESIDENT_BYTES = "resident_bytes"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# Why a notification was undeliverable: each reason has its counter, ``undeliverable_<reason>``,
# and every one of them is also in UNDELIVERABLE.
UNDELIVERABLE_REASONS = {
    "layer_refused": "the channel layer refused it (Redis unreachable, a full layer)",
    "server_unreachable": "the server's WebSocket could not take it (sending through the server)",
    "queue_full": "its connection's channel-layer queue was full",
    "not_reading": "its client stopped reading and MAX_QUEUED_MESSAGES waited",
    "client_left": "its connection left before it was written, and it could not be kept",
    "missed": "a v1 connection missed it while the channel layer was away",
}
# The last undeliverable notifications of this process, newest last: (unix time, reason, whose).
recent_undeliverable: deque[tuple[float, str, str]] = deque(maxlen=20)

# From the send call (the time travels with the notification) to the write on the recipient's socket,
# for live deliveries by this process. Registered with the /metrics registry (notifications.prometheus).
DELIVERY_LATENCY = Histogram(
    "notify_delivery_latency_seconds",
    "Seconds from the send call to the write on the recipient's socket (live deliveries, this process)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=None,
)


def undeliverable(reason: str, whose: str, count: int = 1) -> None:
    """Count ``count`` undeliverable notifications for one of :data:`UNDELIVERABLE_REASONS`.

    ``whose``: the recipient as :func:`notifications.protocol.describe` renders it
    (or "every connection", "an unknown recipient"); kept with the last few for the
    admin's dashboard, never as a metric label.
    """
    counters[UNDELIVERABLE] += count
    counters[f"undeliverable_{reason}"] += count
    recent_undeliverable.append((time.time(), reason, whose if count == 1 else f"{count} × {whose}"))


def snapshot() -> dict[str, int]:
    """A copy of the counters of this process."""
    return dict(counters)


def process_figures() -> dict[str, float]:
    """This process's CPU time in seconds and resident memory in bytes (0 where the system does not say)."""
    times = os.times()
    return {CPU_SECONDS: round(times.user + times.system, 3), RESIDENT_BYTES: _resident_bytes()}


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0
