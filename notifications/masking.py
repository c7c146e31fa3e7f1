"""Unmasking small WebSocket frames with Python's integers instead of autobahn's native masker.

Every frame a client sends is masked (RFC 6455, 5.3): the server XORs its
payload with a 4-byte key. autobahn does it with a masker object per frame,
made by ``autobahn.websocket.protocol.create_xor_masker``; with its native
accelerators built (NVX, the default wheel), that object allocates two
buffers through cffi and copies the payload twice, about 2.3 µs for a
70-byte notification, more than the XOR itself. :class:`SmallFrameUnmasker`
does it with one integer XOR (about 0.5 µs for the same frame). Frames of
``SMALL_FRAME`` bytes or more keep autobahn's masker, whose SIMD loop wins
there.

:func:`install` puts :func:`create_xor_masker` in place of autobahn's
factory for the frames daphne reads; :mod:`notifications.serve` calls it
before daphne starts, as it installs the app's reactor. The masker keeps
autobahn's interface (``pointer``, ``reset``, ``process`` called once per
chunk as a frame's bytes arrive); ``tests/test_masking.py`` holds both to
the same output and fails if autobahn stops creating its maskers through
that module-level name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Frames shorter than this are unmasked here; longer ones by autobahn's masker.
SMALL_FRAME = 4096


class SmallFrameUnmasker:
    """autobahn's masker interface: XOR each chunk of a frame with the mask, continuing where the last chunk ended."""

    __slots__ = ("_mask", "_position")

    def __init__(self, mask: bytes) -> None:
        self._mask = bytes(mask)
        self._position = 0

    def pointer(self) -> int:
        """Bytes of the frame processed so far."""
        return self._position

    def reset(self) -> None:
        self._position = 0

    def process(self, data: bytes) -> bytes:
        size = len(data)
        if not size:
            return b""
        start = self._position & 3
        self._position += size
        return unmask(self._mask[start:] + self._mask[:start], data)


def unmask(mask: bytes, data: bytes) -> bytes:
    """``data`` XORed with the 4-byte ``mask`` repeated, from the mask's first byte: one integer XOR."""
    size = len(data)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


_library_factory: Callable[..., Any] | None = None


def create_xor_masker(mask: bytes, length: int | None = None) -> Any:
    """A masker for a frame of ``length`` bytes: this module's for small frames, autobahn's otherwise."""
    if length is not None and length < SMALL_FRAME:
        return SmallFrameUnmasker(mask)
    assert _library_factory is not None  # installed
    return _library_factory(mask, length)


def install() -> None:
    """Unmask the small frames daphne's WebSocket connections read with :class:`SmallFrameUnmasker`."""
    global _library_factory
    from autobahn.websocket import protocol

    # autobahn's protocol module imports the name from autobahn.websocket.xormasker, and reads it there.
    if protocol.create_xor_masker is not create_xor_masker:  # type: ignore[attr-defined]
        _library_factory = protocol.create_xor_masker  # type: ignore[attr-defined]
        protocol.create_xor_masker = create_xor_masker  # type: ignore[attr-defined]
