"""The race of kept notifications: a registration and a send for the same id at the same instant.

Whatever the interleaving (the send decided before the subscription was
confirmed, after it, or while the registration takes what is pending), the
notification must reach the registering client exactly once: live, or as
pending taken by that registration, never both and never neither.

Each round has an id of its own; a receiver connects and reads the greeting,
then its registration frame and the sender's notification go out at once
(``asyncio.gather``). Rounds run concurrently in batches. The sender sends
protocol v2 frames, so that its replies tell how often each side of the race
won ("live": the subscription was confirmed first; "pending": the send was).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection

from harness.clients import is_probe, open_client, register
from harness.servers import Daphne

ROUNDS = 1000
SAME_PROCESS_ROUNDS = 200
BATCH = 50
ARRIVAL_TIMEOUT = 10.0  # seconds the notification may take to arrive
NOTHING_MORE_WITHIN = 0.5  # seconds in which no second copy may arrive


@dataclass
class Tally:
    """What each round saw: the rounds whose notification was lost, duplicated or wrong."""

    delivered: int = 0
    lost: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    unexpected: list[tuple[int, str]] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)  # what the sender was told: live or pending

    def summary(self) -> str:
        return (
            f"{self.delivered} delivered, {len(self.lost)} lost, {len(self.duplicated)} duplicated, "
            f"{len(self.unexpected)} unexpected, {len(self.errors)} errors; "
            f"the sender was told {dict(self.outcomes)}"
        )

    def details(self) -> str:
        return (
            f"{self.summary()}; lost rounds {self.lost[:20]}, duplicated rounds {self.duplicated[:20]}, "
            f"unexpected {self.unexpected[:5]}, errors {self.errors[:5]}"
        )


async def _next_frame(ws: ClientConnection, seconds: float) -> str:
    while True:
        data = await asyncio.wait_for(ws.recv(), seconds)
        if isinstance(data, str) and not is_probe(data):
            return data


async def _round(n: int, receiver_url: str, sender: ClientConnection, run: str, tally: Tally) -> None:
    recipient = f"race-{run}-{n}-{uuid.uuid4().hex}"
    text = f"notification {n} of {run}"
    try:
        ws = await open_client(receiver_url)  # connected and greeted before the race starts
    except Exception as exc:
        tally.errors.append((n, f"connect: {type(exc).__name__}: {exc}"))
        return
    try:
        # The race: the registration frame to the receiver's process and the
        # notification to the sender's, at the same instant.
        notification = json.dumps({"v": 2, "recipient_uuid": recipient, "message": text})
        await asyncio.wait_for(asyncio.gather(register(ws, recipient), sender.send(notification)), 10)
        try:
            first = await _next_frame(ws, ARRIVAL_TIMEOUT)
        except TimeoutError:
            tally.lost.append(n)
            return
        if first != text:
            tally.unexpected.append((n, first))
            return
        tally.delivered += 1
        try:
            again = await _next_frame(ws, NOTHING_MORE_WITHIN)
        except TimeoutError:
            return
        if again == text:
            tally.duplicated.append(n)
        else:
            tally.unexpected.append((n, again))
    except Exception as exc:
        tally.errors.append((n, f"{type(exc).__name__}: {exc}"))
    finally:
        await ws.close()


async def _read_replies(sender: ClientConnection, tally: Tally, rounds: int) -> None:
    """The sender's v2 replies: whether each notification went live or waited as pending."""
    for _ in range(rounds):
        reply = json.loads(await sender.recv())
        tally.outcomes[reply["outcome"]] += 1


async def _race(receiver: Daphne, sender_server: Daphne, rounds: int) -> tuple[Tally, float]:
    run = uuid.uuid4().hex[:8]
    tally = Tally()
    sender = await open_client(sender_server.url)  # one sender, reused by every round
    replies = asyncio.ensure_future(_read_replies(sender, tally, rounds))
    started = time.monotonic()
    try:
        for first in range(0, rounds, BATCH):
            batch = range(first, min(first + BATCH, rounds))
            async with asyncio.timeout(ARRIVAL_TIMEOUT + NOTHING_MORE_WITHIN + 30):
                await asyncio.gather(*(_round(n, receiver.url, sender, run, tally) for n in batch))
        await asyncio.wait_for(replies, ARRIVAL_TIMEOUT)
    finally:
        replies.cancel()
        await sender.close()
    return tally, time.monotonic() - started


def _report(name: str, tally: Tally, seconds: float, rounds: int, *logs: str) -> None:
    print(f"\n{name}: {rounds} rounds in {seconds:.1f} s: {tally.summary()}")
    problems = Counter(line for log in logs for line in log.splitlines() if "Traceback" in line or " ERROR " in line)
    assert not problems, f"server log problems: {problems.most_common(5)}"
    assert (tally.delivered, tally.lost, tally.duplicated) == (rounds, [], []), tally.details()
    assert not tally.unexpected and not tally.errors, tally.details()
    assert set(tally.outcomes) <= {"live", "pending"} and tally.outcomes.total() == rounds, tally.details()


async def test_a_registration_racing_a_send_from_another_process_receives_it_exactly_once(
    redis_daphne_pair: tuple[Daphne, Daphne],
) -> None:
    a, b = redis_daphne_pair
    tally, seconds = await _race(a, b, ROUNDS)
    _report("receiver on A, sender on B", tally, seconds, ROUNDS, a.log(), b.log())


async def test_a_registration_racing_a_send_on_the_same_process_receives_it_exactly_once(
    redis_daphne_pair: tuple[Daphne, Daphne],
) -> None:
    a, _ = redis_daphne_pair
    tally, seconds = await _race(a, a, SAME_PROCESS_ROUNDS)
    _report("receiver and sender on A", tally, seconds, SAME_PROCESS_ROUNDS, a.log())
