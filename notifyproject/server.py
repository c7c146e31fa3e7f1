"""Start this project's daphne: ``python -m notifyproject.server [daphne options] notifyproject.asgi:application``.

What ``bin/daphne`` runs: the app's own launcher (:mod:`notifications.serve`:
daphne's command line with the graceful drain, on uvloop, the app's reactor
and its masker).
"""

from __future__ import annotations

from notifications.serve import main

if __name__ == "__main__":
    main()
