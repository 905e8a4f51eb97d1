"""Length-prefixed framing, apart from any I/O.

A frame is a 4-byte unsigned big-endian length N followed by N bytes of
payload. This module only cuts a byte stream into payloads and builds the
prefix; what the payload means is `codec`'s job, and who reads or writes the
bytes is the caller's. Keeping it pure is what lets the same code serve a
blocking pipe in the worker, an anyio stream in the host, and the tests.
"""

from __future__ import annotations

import struct

from .errors import ErrorCode, ProtocolError

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
#: The one default limit on a frame's payload, in both directions: the worker
#: refuses larger requests, never writes larger replies, and both hosts refuse
#: larger replies. Each side may raise its own (PROTOCOL.md section 2.3).
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
#: The least a host may announce in `init.max_frame_size`: an `error` frame must always fit.
MIN_FRAME_SIZE = 4096


def frame(payload: bytes) -> bytes:
    """Prefix one payload with its length."""
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental splitter: feed it reads of any size, get whole payloads.

    The length is checked against `max_size` as soon as the 4 prefix bytes are
    in, before any payload is buffered, so a hostile prefix cannot make us
    allocate. An oversized length is fatal: nothing after it can be trusted to
    start on a frame boundary, so the decoder refuses further input.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_size < 1:
            raise ValueError("max_size must be positive")
        self.max_size = max_size
        self._buffer = bytearray()
        self._start = 0
        self._failed: ProtocolError | None = None

    @property
    def failed(self) -> ProtocolError | None:
        """The fatal error that stopped this decoder, if any."""
        return self._failed

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        return len(self._buffer) - self._start

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | ProtocolError]:
        """Add bytes; return the payloads completed by them, in order.

        A fatal error is returned as the last item (never raised) so that the
        good frames that came before it in the same read are not lost.
        """
        if self._failed is not None:
            return []
        self._buffer += data
        out: list[bytes | ProtocolError] = []
        buf = self._buffer
        pos = self._start
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            (size,) = HEADER.unpack_from(buf, pos)
            if size > self.max_size:
                self._failed = ProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame length {size} exceeds the maximum of {self.max_size} bytes",
                    fatal=True,
                )
                out.append(self._failed)
                self._buffer = bytearray()
                self._start = 0
                return out
            if end - pos - HEADER_SIZE < size:
                break
            body = pos + HEADER_SIZE
            out.append(bytes(buf[body : body + size]))
            pos = body + size
        # Compact only once the consumed prefix is large, so a stream of small
        # frames does not memmove the buffer on every read.
        if pos == end:
            buf.clear()
            pos = 0
        elif pos > 65536:
            del buf[:pos]
            pos = 0
        self._start = pos
        return out
