"""Waiting for the registry, which the daphne processes write in batches."""

from __future__ import annotations

from harness.servers import eventually
from notifications.presence import aconnection_count


async def registry_counts(recipient: str, count: int, *, seconds: float = 10) -> None:
    """Wait until the registry holds ``count`` live connections for ``recipient``."""

    async def counted() -> bool:
        return await aconnection_count(recipient) == count

    await eventually(counted, seconds=seconds)
