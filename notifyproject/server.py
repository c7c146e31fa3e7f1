"""Start daphne on uvloop: ``python -m notifyproject.server [daphne options] notifyproject.asgi:application``.

``bin/daphne`` starts every daphne this way: daphne's command line with the
app's graceful drain on SIGTERM (:mod:`notifications.launch`). daphne runs Twisted on an
asyncio loop that it creates when its server module is imported, so the loop
policy must be set before daphne is imported. uvloop's loop makes the relay
measurably cheaper (README, Benchmark); where uvloop is not installed
(it does not support Windows), daphne runs on asyncio's own loop.
"""

from __future__ import annotations

import asyncio


def main() -> None:
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from notifications.launch import main as daphne

    daphne()


if __name__ == "__main__":
    main()
