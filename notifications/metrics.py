"""Process-wide counters that operators read (admin, logs, metrics).

Nothing may vanish silently: every notification the server fails to hand to
the channel layer is counted here and logged at WARNING with its recipient.
"""

from __future__ import annotations

from collections import Counter

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


def snapshot() -> dict[str, int]:
    """A copy of the counters of this process."""
    return dict(counters)
