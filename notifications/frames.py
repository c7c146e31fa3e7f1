"""daphne's WebSocket protocol, reading and writing small whole text frames in one step.

A notification is one small text frame in (the sender's) and one out (to
each recipient). autobahn reads every frame through its general state
machine: about twenty method calls (frame begin, data and end, message
begin, data and end, each through a hook), a masker and a UTF-8 validator
object, and a debug line whose arguments are formatted even when debug
logging is off; it writes one through four calls and another such line. On
the benchmark's machine that was about 10 µs per frame read and 3 µs per
frame written (``bench/frames.py`` measures both paths).

:class:`WebSocketProtocol` takes the common case itself and leaves every
other to autobahn, unchanged:

- Read: while the connection is open and autobahn is between messages with
  nothing buffered, each frame of what arrived that is a whole, final,
  masked text frame (7- or 16-bit length, within the frame and message
  limits) whose payload is valid UTF-8 is handled here as autobahn would:
  unmasked, counted in ``trafficStats``, the ping timeout restarted, then
  ``onMessage``. From the first frame that is anything else (binary,
  fragmented, control, cut between reads, invalid, too large) the rest of
  the bytes go to autobahn, which reads, fails or closes as it always did.
- Write: a message of at most 64 KiB, unfragmented, not queued behind
  others, goes out as one frame with one ``transport.write``, counted as
  autobahn counts it.

Neither applies while autobahn would do more for the frame: with a
compression extension negotiated, its frame, octet or timing logs on, debug
logging on, or listeners on its ``message`` event. ``tests/test_frames.py``
holds both paths to the same behaviour and fails if autobahn or daphne
change what this relies on (the hooks daphne overrides, the names read
here). :class:`notifications.launch.DrainingServer` makes daphne's factory
build this class.
"""

from __future__ import annotations

from typing import Any

from daphne.ws_protocol import WebSocketProtocol as DaphneWebSocketProtocol
from txaio.tx import _no_op

from notifications.masking import unmask

FIN_TEXT = 0x81  # FIN set, no RSV bits, opcode 1 (text)
FIN_BINARY = 0x82
MASKED = 0x80
LENGTH_16 = 126  # the 7-bit length that says a 16-bit length follows
LENGTH_64 = 127
LARGEST_16 = 0xFFFF
MASK_SIZE = 4


class WebSocketProtocol(DaphneWebSocketProtocol):
    """daphne's protocol; small whole text frames are read and written here, everything else by autobahn."""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802  (Twisted's name)
        if self._between_messages():
            data = self._read_whole_text_frames(data)
            if not data:
                return
        super().dataReceived(data)

    def sendMessage(  # noqa: N802  (autobahn's name and signature)
        self,
        payload: bytes,
        isBinary: bool = False,  # noqa: N803
        fragmentSize: int | None = None,  # noqa: N803
        sync: bool = False,
        doNotCompress: bool = False,  # noqa: N803
    ) -> None:
        length = len(payload)
        if (
            length <= LARGEST_16
            and fragmentSize is None
            and not sync
            and self.state == self.STATE_OPEN
            and not self.send_queue
            and not self.maskServerFrames
            and (not self.autoFragmentSize or length <= self.autoFragmentSize)
            and not 0 < self.maxMessagePayloadSize < length
            and self._plain()
        ):
            first = FIN_BINARY if isBinary else FIN_TEXT
            if length < LENGTH_16:
                frame = b"".join((bytes((first, length)), payload))
            else:
                frame = b"".join((bytes((first, LENGTH_16)), length.to_bytes(2, "big"), payload))
            self.transport.write(frame)
            stats = self.trafficStats
            stats.outgoingWebSocketMessages += 1
            stats.outgoingOctetsAppLevel += length
            stats.outgoingOctetsWebSocketLevel += length
            stats.outgoingWebSocketFrames += 1
            stats.outgoingOctetsWireLevel += len(frame)
            return
        super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)

    def _plain(self) -> bool:
        """Nothing autobahn would add to a frame: no compression, no logging of frames, octets or debug lines."""
        return (
            self._perMessageCompress is None
            and not self.logFrames
            and not self.logOctets
            and not self.trackedTimings
            and self.log.debug is _no_op
            and self._listeners is None
        )

    def _between_messages(self) -> bool:
        """Open, autobahn between messages with nothing buffered, nothing failed, frames unmasked as they come."""
        return (
            self.state == self.STATE_OPEN
            and self.current_frame is None
            and not self.inside_message
            and not self.data
            and not self.failedByMe
            and self.applyMask
            and self._plain()
        )

    def _read_whole_text_frames(self, data: bytes) -> bytes:
        """Handle the whole text frames at the start of ``data``; what is left, from the first other frame on."""
        size = len(data)
        start = 0
        while size - start >= 2 + MASK_SIZE and data[start] == FIN_TEXT:
            second = data[start + 1]
            if not second & MASKED:
                break  # autobahn fails an unmasked client frame
            length = second & ~MASKED
            head = start + 2
            if length == LENGTH_16:
                length = int.from_bytes(data[head : head + 2], "big")
                if length < LENGTH_16:
                    break  # not the shortest encoding: autobahn fails it
                head += 2
            elif length == LENGTH_64:
                break
            end = head + MASK_SIZE + length
            if end > size or 0 < self.maxFramePayloadSize < length or 0 < self.maxMessagePayloadSize < length:
                break  # cut between reads (autobahn buffers it), or too large (autobahn fails it)
            payload = unmask(data[head : head + MASK_SIZE], data[head + MASK_SIZE : end])
            if self.utf8validateIncoming and not payload.isascii():
                try:
                    payload.decode()
                except UnicodeDecodeError:
                    break  # autobahn closes with 1007
            self._count_read(end - start, length)
            start = end
            self.onMessage(payload, False)
            if self.state != self.STATE_OPEN:
                break
        return data[start:] if start else data

    def _count_read(self, wire: int, length: int) -> None:
        """What autobahn counts and does for a whole message read: ``trafficStats``, the ping timeout restarted."""
        stats = self.trafficStats
        stats.incomingOctetsWireLevel += wire
        stats.incomingOctetsWebSocketLevel += length
        stats.incomingOctetsAppLevel += length
        stats.incomingWebSocketFrames += 1
        stats.incomingWebSocketMessages += 1
        if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
            self._cancelAutoPingTimeoutCall()


def use_in(factory: Any) -> Any:
    """Make ``factory`` (daphne's ``WebSocketFactory``) build :class:`WebSocketProtocol`; return it."""
    factory.protocol = WebSocketProtocol
    return factory
