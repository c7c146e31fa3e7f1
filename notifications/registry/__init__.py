"""The registry of this process's live connections, kept in the database.

:data:`registry` is the one object consumers report to. Its parts:
:mod:`.state` holds the connections in memory and what is still to be
written, :mod:`.writer` writes that to the database, and :mod:`.service`
runs the background task that does so and hooks into the server's start and stop.
"""

from notifications.registry.service import registry

__all__ = ["registry"]
