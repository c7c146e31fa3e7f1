"""Kept notifications in one process's memory: each id's history, its pending ones, and a global bound.

Used by :class:`notifications.layers.memory.InMemoryLayer`. Every
notification sent to an id gets a position (``<epoch>:<sequence>-<n>``: the
epoch is new in every process, so positions never repeat after a restart; the
sequence counts every id's notifications, ``n`` this id's while it is remembered)
and stays for ``ttl`` seconds, among the newest ``size`` of its id, and
among the newest ``max_entries`` of all ids together. A pending one is also
kept until the id's next registration takes it.

Notifications are kept in the order they were sent, which is also the order
in which they expire and in which the global bound drops them: the oldest
kept notification of all is always the first of its own id.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from notifications.layers import META_TTL, KeptNotification, Replay, id_sequence, is_after, position_order


@dataclass(slots=True, eq=False)
class _Entry:
    group: str
    position: str
    text: str
    expires_at: float
    kept: bool = True
    pending: bool = False


@dataclass(slots=True)
class _Id:
    # Nothing after ``floor`` was dropped: the newest dropped position, or (for a history that
    # began while nothing of the id was remembered) its first entry's.
    floor: str
    count: int  # the id's notifications so far: the ``n`` of its newest position
    entries: deque[_Entry] = field(default_factory=deque)
    pending: deque[_Entry] = field(default_factory=deque)


class MemoryHistory:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.epoch = secrets.token_hex(4)
        self._clock = clock
        self._sequence = 0
        self._ids: dict[str, _Id] = {}
        self._order: deque[_Entry] = deque()  # every entry in the order sent; dropped ones linger until compacted
        self._kept = 0
        # Ids whose every entry was dropped: their newest position and until when it is remembered,
        # oldest first, at most ``max_entries`` of them.
        self._gone: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._max_gone = 100_000

    def __len__(self) -> int:
        """How many notifications are kept, of all ids."""
        return self._kept

    @property
    def ids(self) -> int:
        """How many ids have at least one kept notification."""
        return len(self._ids)

    def add(self, group: str, text: str, *, size: int, ttl: float, max_entries: int) -> _Entry:
        """Keep a notification for ``group``; its entry tells its position."""
        now = self._clock()
        self._max_gone = max_entries
        self._expire(now)
        self._sequence += 1
        kept = self._ids.get(group)
        if kept is None:
            gone = self._gone.pop(group, None)
            remembered = gone[0] if gone is not None and gone[1] > now else None
            kept = self._ids[group] = _Id(floor=remembered or "", count=id_sequence(remembered) or 0)
        kept.count += 1
        entry = _Entry(group, f"{self.epoch}:{self._sequence}-{kept.count}", text, now + ttl)
        kept.floor = kept.floor or entry.position
        kept.entries.append(entry)
        self._order.append(entry)
        self._kept += 1
        while len(kept.entries) > size:
            self._drop(kept.entries[0])
        while self._kept > max_entries:
            self._drop_oldest()
        if len(self._order) > 2 * self._kept + 1024:
            self._order = deque(e for e in self._order if e.kept)
        return entry

    def find(self, group: str, position: object) -> _Entry | None:
        """The kept entry at ``position`` in ``group``'s history, if it is still kept."""
        kept = self._ids.get(group)
        return next((e for e in kept.entries if e.position == position), None) if kept is not None else None

    def make_pending(self, entry: _Entry) -> None:
        """``entry`` reached nobody: the id's next registration takes it."""
        if entry.kept and not entry.pending:
            entry.pending = True
            self._ids[entry.group].pending.append(entry)

    def pending_counts(self) -> list[tuple[str, int]]:
        """(group, how many of its notifications are pending and not expired) for each group with any."""
        now = self._clock()
        counts = []
        for group, kept in self._ids.items():
            if kept.pending:
                alive = sum(1 for e in kept.pending if e.kept and e.expires_at > now)
                if alive:
                    counts.append((group, alive))
        return counts

    def take_pending(self, group: str, *, peek: bool = False) -> list[KeptNotification]:
        """The id's pending notifications, oldest first, once: they are pending no more (unless ``peek``)."""
        kept = self._ids.get(group)
        if kept is None or not kept.pending:
            return []
        now = self._clock()
        taken = [KeptNotification(e.position, e.text) for e in kept.pending if e.kept and e.expires_at > now]
        if peek:
            return taken
        for entry in kept.pending:
            entry.pending = False
        kept.pending.clear()
        return taken

    def newest(self, group: str) -> str:
        """The newest position ``group`` has had; with nothing remembered, its beginning (remembered from now)."""
        now = self._clock()
        self._expire(now)
        kept = self._ids.get(group)
        if kept is not None:
            return kept.entries[-1].position
        gone = self._gone.pop(group, None)
        position = gone[0] if gone is not None and gone[1] > now else f"{self.epoch}:0-0"
        self._gone[group] = (position, now + META_TTL)
        while len(self._gone) > self._max_gone:
            self._gone.popitem(last=False)
        return position

    def resume(self, group: str, since: str | None, start: str | None, *, take: bool = True) -> Replay:
        """See :meth:`notifications.layers.KeepingLayer.resume`."""
        now = self._clock()
        self._expire(now)
        kept = self._ids.get(group)
        gone = self._gone.get(group)
        if kept is not None:
            newest: str | None = kept.entries[-1].position
        else:
            newest = gone[0] if gone is not None and gone[1] > now else None
        floor = kept.floor if kept is not None else newest
        order = position_order(since)
        recovered = (
            since is not None
            and order is not None
            and order[0] == self.epoch
            and newest is not None
            and floor is not None
            and not is_after(since, newest)
            and not is_after(floor, since)
            # a position this id had (not another id's): kept, the newest dropped, or the newest
            and (since in (floor, newest) or (kept is not None and any(e.position == since for e in kept.entries)))
        )
        if kept is None:
            return Replay(recovered, newest, [])
        after = since if recovered else start
        if after is not None and (position_order(after) or ("",))[0] != self.epoch:
            after = None  # a start of another epoch: everything kept is newer
        replay = [e for e in kept.entries if after is None or is_after(e.position, after)]
        chosen = {id(e) for e in replay}
        if not recovered:
            # Every pending one too, also those sent before ``start``; with ``since``, those are the client's.
            replay.extend(e for e in kept.pending if id(e) not in chosen)
            replay.sort(key=lambda e: position_order(e.position) or ("", 0, 0))
        if take:
            for entry in kept.pending:
                entry.pending = False
            kept.pending.clear()
        return Replay(recovered, newest, [KeptNotification(e.position, e.text) for e in replay])

    def _expire(self, now: float) -> None:
        order = self._order
        while order and (not order[0].kept or order[0].expires_at <= now):
            entry = order.popleft()
            if entry.kept:
                self._drop(entry)

    def _drop_oldest(self) -> None:
        while self._order:
            entry = self._order.popleft()
            if entry.kept:
                self._drop(entry)
                return

    def _drop(self, entry: _Entry) -> None:
        # The oldest kept entry of its id (see the module docstring), so the first of its deques.
        kept = self._ids[entry.group]
        assert kept.entries[0] is entry
        kept.entries.popleft()
        if entry.pending:
            assert kept.pending[0] is entry
            kept.pending.popleft()
            entry.pending = False
        entry.kept = False
        entry.text = ""  # it may linger in the order until compacted: its text must not
        self._kept -= 1
        kept.floor = entry.position
        if not kept.entries:
            del self._ids[entry.group]
            self._gone[entry.group] = (entry.position, self._clock() + META_TTL)
            while len(self._gone) > self._max_gone:
                self._gone.popitem(last=False)
