"""``python -m bench.layer``: CPU per notification through the Redis channel layer alone, in one process.

One registrant's channel in a group; each round sends a notification to the
group as a v1 sender does (``send_kept_soon``: kept, published, not waited
for), reads it from the channel, then pauses 0.2 ms, so that every
notification goes out alone, as at the benchmark's paced rates. The figure
is the process's CPU time per notification (sending, Redis's reply and the
published copy read, the pause's timer), best of several rounds: what the
layer costs the daphne process for each relayed notification, without
daphne. Redis is ``REDIS_URL`` (by default the local one); the keys a run
writes have a prefix of their own and expire with the history
(``NOTIFICATIONS_HISTORY_TTL``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

import django

NOTIFICATIONS = 3000
ROUNDS = 5
PAUSE = 0.0002


async def per_notification(url: str) -> list[float]:
    """µs of CPU per notification sent and read, one per round."""
    from notifications.layers.redis import RedisPubSubLayer

    layer = RedisPubSubLayer(hosts=[url], prefix=f"benchlayer{uuid.uuid4().hex[:8]}")
    try:
        channel = await layer.new_channel()
        await layer.group_add("bench", channel)
        event = {"type": "notify.message", "text": "task 12345 done", "recipient": "bench"}
        rounds = []
        for round_ in range(ROUNDS + 1):  # the first warms up
            start = time.process_time()
            for _ in range(NOTIFICATIONS):
                await layer.send_kept_soon("bench", event)
                await layer.receive(channel)
                await asyncio.sleep(PAUSE)
            if round_:
                rounds.append((time.process_time() - start) / NOTIFICATIONS * 1e6)
        await layer.group_discard("bench", channel)
        return rounds
    finally:
        await layer.flush()


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifyproject.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    url = os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    django.setup()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    from redis.exceptions import RedisError

    from notifications.exceptions import one_line

    try:
        rounds = run(per_notification(url))
    except (OSError, RedisError) as exc:
        sys.exit(f"bench.layer: Redis at {url} could not be reached: {one_line(exc)}")
    print(f"Redis layer: {min(rounds):.1f} µs of CPU per notification sent and read (best of {ROUNDS} rounds of")
    print(f"{NOTIFICATIONS:,}; each round: {', '.join(f'{r:.1f}' for r in rounds)})")


if __name__ == "__main__":
    main()
