"""The in-memory state of the registry: every live connection, and what changed since the last write.

Pure data, no I/O and no event loop: the consumer's reports are dictionary
operations here, :meth:`ConnectionTable.take` hands the background task one
:class:`Batch` to write, and a batch that failed is merged into the next.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class LiveConnection:
    """What the process remembers of one open connection, enough to write its rows again."""

    temp_id: str
    channel_name: str
    connected_at: float
    client_address: str
    user_agent: str
    origin: str
    last_activity_at: float
    registered_at: float | None = None
    recipients: list[str] = field(default_factory=list)

    def copy(self) -> LiveConnection:
        """A copy that the event loop no longer changes, for a write in another thread."""
        return dataclasses.replace(self, recipients=list(self.recipients))


@dataclass
class Batch:
    """Writes gathered since the last flush. Applying one twice does no harm."""

    new: dict[str, LiveConnection] = field(default_factory=dict)
    registrations: set[tuple[str, str]] = field(default_factory=set)  # (temp_id, recipient)
    first_registered: dict[str, float] = field(default_factory=dict)  # rows already written
    activity: dict[str, float] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    counters: dict[str, Any] = field(default_factory=dict)  # the process's metrics, latest wins
    recent_undeliverable: list[Any] = field(default_factory=list)  # latest wins

    def then(self, later: Batch) -> Batch:
        """This (failed) batch followed by a later one, as one batch."""

        def kept(items: dict[str, Any]) -> dict[str, Any]:
            return {key: value for key, value in items.items() if key not in later.gone}

        return Batch(
            new=kept(self.new) | later.new,
            registrations={r for r in self.registrations if r[0] not in later.gone} | later.registrations,
            first_registered=kept(self.first_registered) | later.first_registered,
            activity=kept(self.activity) | later.activity,
            gone=self.gone | later.gone,
            counters=later.counters or self.counters,
            recent_undeliverable=later.recent_undeliverable if later.counters else self.recent_undeliverable,
        )


class ConnectionTable:
    """The live connections of this process and the changes not yet taken for writing."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self.live: dict[str, LiveConnection] = {}
        self._new: set[str] = set()
        self._registrations: set[tuple[str, str]] = set()
        self._first_registered: set[str] = set()
        self._active: set[str] = set()
        self._gone: set[str] = set()

    def connected(self, temp_id: str, channel_name: str, *, client_address: str, user_agent: str, origin: str) -> None:
        now = self._clock()
        self.live[temp_id] = LiveConnection(
            temp_id=temp_id,
            channel_name=channel_name,
            connected_at=now,
            last_activity_at=now,
            client_address=client_address,
            user_agent=user_agent,
            origin=origin,
        )
        self._new.add(temp_id)

    def registered(self, temp_id: str, recipient: str) -> bool:
        """Note a registration; False for a connection this table does not hold."""
        live = self.live.get(temp_id)
        if live is None:
            return False
        live.recipients.append(recipient)
        if live.registered_at is None:
            live.registered_at = self._clock()
            if temp_id not in self._new:
                self._first_registered.add(temp_id)
        self._registrations.add((temp_id, recipient))
        return True

    def active(self, temp_id: str) -> None:
        live = self.live.get(temp_id)
        if live is not None:
            live.last_activity_at = self._clock()
            self._active.add(temp_id)

    def disconnected(self, temp_id: str) -> bool:
        """Forget a connection; False for one this table does not hold."""
        if self.live.pop(temp_id, None) is None:
            return False
        self._new.discard(temp_id)
        self._first_registered.discard(temp_id)
        self._active.discard(temp_id)
        # Deleted even if its row was never written: deleting nothing is harmless,
        # and a write whose outcome is unknown (an error at commit) may have written it.
        self._gone.add(temp_id)
        return True

    def take(
        self, *, with_activity: bool, counters: dict[str, Any], recent_undeliverable: list[Any] | None = None
    ) -> Batch:
        """Everything reported since the last take, as one batch; the table starts gathering anew."""
        live = self.live
        batch = Batch(gone=self._gone, counters=counters, recent_undeliverable=recent_undeliverable or [])
        batch.new = {temp_id: live[temp_id].copy() for temp_id in self._new}
        batch.registrations = {r for r in self._registrations if r[0] in live}
        batch.first_registered = {t: live[t].registered_at or 0.0 for t in self._first_registered}
        if with_activity:
            batch.activity = {t: live[t].last_activity_at for t in self._active}
            self._active = set()
        self._new, self._registrations, self._first_registered, self._gone = set(), set(), set(), set()
        return batch

    def registered_ids(self) -> int:
        """How many distinct ids this process's live connections registered."""
        return len({recipient for live in self.live.values() for recipient in live.recipients})

    def snapshot(self) -> tuple[list[LiveConnection], list[tuple[str, str]]]:
        """Every live connection and every (temp_id, recipient) registration, copied."""
        connections = [c.copy() for c in self.live.values()]
        return connections, [(c.temp_id, r) for c in connections for r in c.recipients]
