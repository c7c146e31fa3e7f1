"""A recipient that stops reading: bounded memory, newer notifications dropped and counted (real daphne)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import psutil
import pytest

from harness.clients import frame, open_client, receive, register_confirmed
from harness.servers import Daphne, wait_until
from notifications.backpressure import READ_PAUSE_AT, READ_RESUME_AT, ClientQueue, ReadWindow

BIG = "x" * 100_000  # a few hundred of these overflow any socket buffer on loopback
SENT = 400
LIMIT = 5


async def test_a_client_that_stops_reading_has_newer_notifications_dropped_and_counted(
    daphne_factory: Callable[..., Daphne],
) -> None:
    server = daphne_factory({"NOTIFY_MAX_QUEUED_MESSAGES": str(LIMIT)})
    # max_queue=1: the client library stops reading the socket once one frame waits unread.
    stuck = await open_client(server.url, max_queue=1)
    await register_confirmed(stuck, "stuck-reader")
    await register_confirmed(stuck, "stuck-probe")
    neighbour = await open_client(server.url)
    await register_confirmed(neighbour, "neighbour")
    sender = await open_client(server.url)
    rss_before = psutil.Process(server.process.pid).memory_info().rss
    for i in range(SENT):
        await sender.send(frame("stuck-reader", f"{i:04d}{BIG}"))
    await sender.send(frame("neighbour", "still served"))
    assert await receive(neighbour) == "still served"  # every frame before it has been handled
    dropped = re.findall(r"Undeliverable notification for 'stuck-reader': client \w+ is not reading", server.log())
    assert dropped, "nothing was dropped: the client's buffers took everything"
    # 400 notifications of 100 KB (40 MB) met a stuck reader; what the server
    # holds for it is bounded by the limit and the socket buffers, far below that.
    assert psutil.Process(server.process.pid).memory_info().rss - rss_before < 30_000_000

    # Reading again, the client gets what waited, in order, then new
    # notifications as usual: the connection stayed open. A probe to a second
    # id of the same connection comes after everything queued before it.
    received: list[int] = []
    for attempt in range(20):
        await sender.send(frame("stuck-probe", f"probe {attempt}"))
        try:
            while (text := await asyncio.wait_for(stuck.recv(), 1.0)) != f"probe {attempt}":
                if not text.startswith("probe"):
                    received.append(int(text[:4]))
            break
        except TimeoutError:
            continue
    dropped = len(re.findall(r"Undeliverable notification for 'stuck-reader'", server.log()))
    assert received == sorted(set(received))
    assert len(received) + dropped == SENT
    await wait_until(lambda: "reads again; " in server.log(), seconds=10)
    for ws in (stuck, neighbour, sender):
        await ws.close()


async def test_notifications_still_waiting_when_the_client_leaves_are_counted(
    daphne_factory: Callable[..., Daphne],
) -> None:
    server = daphne_factory({"NOTIFY_MAX_QUEUED_MESSAGES": "1000"})
    stuck = await open_client(server.url, max_queue=1)
    await register_confirmed(stuck, "leaves-unread")
    # A reading twin under the same id: once it has everything, so has the stuck
    # connection's consumer (both queues are filled by the same group send).
    twin = await open_client(server.url)
    await register_confirmed(twin, "leaves-unread")
    sender = await open_client(server.url)
    for i in range(SENT):
        await sender.send(frame("leaves-unread", f"{i:04d}{BIG}"))
    assert [(await receive(twin))[:4] for _ in range(SENT)] == [f"{i:04d}" for i in range(SENT)]
    stuck.transport.abort()  # gone without reading or closing
    await wait_until(lambda: re.search(r"left with \d+ notifications unsent", server.log()) is not None, seconds=30)
    for ws in (twin, sender):
        await ws.close()


class Transport:
    """Records what flow control asked of a connection's transport (Twisted's producer API)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted's name)
        self.calls.append("pause")

    def resumeProducing(self) -> None:  # noqa: N802 (Twisted's name)
        self.calls.append("resume")


# The app's server queues what a client sends in a ClientQueue; daphne's own, in an asyncio.Queue.
QUEUES = pytest.mark.parametrize("make_queue", [ClientQueue, asyncio.Queue], ids=["app", "daphne"])


@QUEUES
async def test_a_fast_senders_socket_is_paused_as_its_frames_are_queued_not_only_as_they_are_taken(
    make_queue: Callable[[], ClientQueue | asyncio.Queue[dict[str, str]]],
) -> None:
    # A consumer that waits (for Redis, say) takes no frame for a while; meanwhile daphne queues every
    # frame Twisted reads. The socket must pause at the limit all the same, or a sender that closes
    # after a burst leaves more queued than daphne lets the consumer finish (it kills it after 10 s).
    queue = make_queue()
    transport = Transport()
    window = ReadWindow(queue, transport)
    for n in range(READ_PAUSE_AT * 3):
        queue.put_nowait({"type": "websocket.receive", "text": str(n)})
    assert transport.calls == ["pause"]  # once, at the limit, before the consumer took anything
    while queue.qsize() > READ_RESUME_AT:
        queue.get_nowait()
        window.took_one()
    assert transport.calls == ["pause", "resume"]


@QUEUES
async def test_frames_left_unhandled_when_the_consumer_is_killed_are_counted_by_kind(
    make_queue: Callable[[], ClientQueue | asyncio.Queue[dict[str, str]]],
) -> None:
    queue = make_queue()
    window = ReadWindow(queue, Transport())
    for n in range(5):
        queue.put_nowait({"type": "websocket.receive", "text": str(n)})
    queue.put_nowait({"type": "websocket.disconnect"})
    assert window.unread() == 5  # frames of the client; the disconnect is none
    assert queue.empty()


async def test_the_apps_client_queue_hands_over_in_order_to_a_waiting_reader_and_loses_nothing_to_a_cancel() -> None:
    queue = ClientQueue()
    assert queue and queue.empty() and queue.qsize() == 0  # daphne tests `if queue:` before it puts
    reader = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)  # the reader waits on the empty queue
    queue.put_nowait({"n": 1})
    queue.put_nowait({"n": 2})
    assert queue.qsize() == 2
    assert await asyncio.wait_for(reader, 1) == {"n": 1}
    # Django's ASGI handler cancels a get() that waits for a disconnect once the response is sent.
    cancelled = asyncio.ensure_future(queue.get())
    assert await asyncio.wait_for(cancelled, 1) == {"n": 2}
    cancelled = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    queue.put_nowait({"n": 3})
    assert await asyncio.wait_for(queue.get(), 1) == {"n": 3}
    assert queue and queue.empty()
