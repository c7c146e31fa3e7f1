"""Start daphne on uvloop: ``python -m notifyproject.server [daphne options] notifyproject.asgi:application``.

``bin/daphne`` starts every daphne this way: daphne's command line with the
app's graceful drain on SIGTERM (:mod:`notifications.launch`). daphne runs Twisted on an
asyncio reactor that it installs when its server module is imported, unless
one is installed already: so the loop policy is set first, then the app's
reactor (:mod:`notifications.reactor`, which sends without watching each
socket first) is installed on a loop of that policy, small client frames are
unmasked by the app's masker (:mod:`notifications.masking`), and only then is
daphne imported. uvloop's loop, the app's reactor and its masker make the relay
measurably cheaper (README, Benchmark); where uvloop is not installed (it does not
support Windows), daphne runs on asyncio's own loop.
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
    from notifications import masking, reactor

    reactor.install()
    masking.install()
    from notifications.launch import main as daphne

    daphne()


if __name__ == "__main__":
    main()
