"""The registry's in-memory state: what a take hands the writer, and how a failed batch merges into the next."""

from __future__ import annotations

from notifications.registry.state import Batch, ConnectionTable, LiveConnection


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table_with(*temp_ids: str) -> tuple[ConnectionTable, Clock]:
    clock = Clock()
    table = ConnectionTable(clock=clock)
    for temp_id in temp_ids:
        table.connected(temp_id, f"chan-{temp_id}", client_address="192.0.2.1", user_agent="ua", origin="")
    return table, clock


def test_a_new_connection_is_written_with_its_registrations_and_first_registration_time() -> None:
    table, clock = table_with("a")
    clock.now = 1002.0
    table.registered("a", "alice")
    table.registered("a", "bob")
    batch = table.take(with_activity=False, counters={})
    assert list(batch.new) == ["a"]
    assert batch.new["a"].registered_at == 1002.0 and batch.new["a"].recipients == ["alice", "bob"]
    assert batch.registrations == {("a", "alice"), ("a", "bob")}
    assert batch.first_registered == {}  # part of the new row, not a separate update


def test_a_take_starts_afresh_and_copies_what_it_hands_over() -> None:
    table, _ = table_with("a")
    batch = table.take(with_activity=False, counters={})
    table.registered("a", "later")
    assert batch.new["a"].recipients == []  # the copy the writer holds does not change under it
    second = table.take(with_activity=False, counters={})
    assert second.new == {}
    assert second.registrations == {("a", "later")}
    assert second.first_registered == {"a": 1000.0}  # the row exists already: an update


def test_activity_is_taken_only_with_a_heartbeat() -> None:
    table, clock = table_with("a")
    table.take(with_activity=False, counters={})
    clock.now = 1005.0
    table.active("a")
    assert table.take(with_activity=False, counters={}).activity == {}
    assert table.take(with_activity=True, counters={}).activity == {"a": 1005.0}
    assert table.take(with_activity=True, counters={}).activity == {}


def test_a_connection_that_leaves_before_it_was_written_is_only_deleted() -> None:
    table, _ = table_with("a", "b")
    table.registered("a", "alice")
    assert table.disconnected("a") is True
    assert table.disconnected("a") is False  # once
    batch = table.take(with_activity=True, counters={})
    assert set(batch.new) == {"b"} and batch.registrations == set() and batch.gone == {"a"}


def test_reports_for_unknown_connections_change_nothing() -> None:
    table, _ = table_with()
    assert table.registered("ghost", "x") is False
    table.active("ghost")
    batch = table.take(with_activity=True, counters={})
    assert batch == Batch()


def test_a_failed_batch_followed_by_a_later_one_loses_nothing_and_keeps_no_ghost() -> None:
    a = LiveConnection("a", "chan-a", 1.0, "", "", "", 1.0)
    b = LiveConnection("b", "chan-b", 2.0, "", "", "", 2.0)
    failed = Batch(new={"a": a}, registrations={("a", "x")}, activity={"a": 1.0}, counters={"relayed": 1})
    later = Batch(new={"b": b}, gone={"a"}, counters={"relayed": 5})
    merged = failed.then(later)
    assert set(merged.new) == {"b"}  # a left meanwhile: neither inserted nor updated...
    assert merged.registrations == set() and merged.activity == {}
    assert merged.gone == {"a"}  # ...but deleted, in case the failed write reached the database
    assert merged.counters == {"relayed": 5}  # the latest counters win


def test_a_snapshot_holds_every_live_connection_and_registration() -> None:
    table, _ = table_with("a", "b")
    table.registered("a", "alice")
    table.registered("b", "bob")
    table.disconnected("b")
    connections, registrations = table.snapshot()
    assert [c.temp_id for c in connections] == ["a"] and registrations == [("a", "alice")]
