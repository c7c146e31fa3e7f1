"""Start daphne as the app runs best: ``python -m notifications.serve [daphne options] mysite.asgi:application``.

daphne's own command line with the app's graceful drain on SIGTERM
(:mod:`notifications.launch`), and, before daphne is imported, what makes
the relay measurably cheaper (README, Benchmark): uvloop's event loop where
installed (it does not support Windows; daphne then runs on asyncio's own),
the app's Twisted reactor (:mod:`notifications.reactor`, which sends without
watching each socket first) and its masker for small client frames
(:mod:`notifications.masking`). daphne installs an asyncio reactor of its own
when its server module is imported, unless one is installed already: hence
the order. The app's own repository starts every daphne this way (its
``bin/daphne``), with the WebSocket options the README's guide gives.
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
