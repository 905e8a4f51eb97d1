"""Owning the process's standard streams, and the one thread that writes frames.

The protocol runs on stdout, and a great many things write to fd 1 without
asking: a `print` in a library, llama.cpp's C code, ggml's crash handler
running gdb, llama-cpp-python's `suppress_stdout_stderr` which `dup2`s
/dev/null over fds 1 and 2 for the whole process during a load. So at start-up
the worker moves the protocol to private duplicates of the descriptors and
points fd 1 at stderr. After that, nothing but `FrameWriter` can put a byte on
the host's pipe.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

import msgspec

from protocol import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE, Chunk, ErrorCode, encode
from protocol import Error as ErrorFrame

log = logging.getLogger("worker.stdio")

#: Chunks of a running generation are written at most this often (the first
#: one at once). One 60 Hz frame: no reader can see the difference, and at
#: ~150 tokens/s it halves the frames, the wake-ups of this thread and the
#: host's work per token, which on a small machine steal cores from llama.cpp.
CHUNK_INTERVAL_S = 0.016
#: How long the final flush at shutdown may take before the worker gives up on
#: a host that no longer reads (the shutdown watchdog allows for it).
FINAL_FLUSH_S = 2.0
_TRUNCATED_TEXT = 1000


@dataclass(frozen=True)
class StdioFds:
    requests: int
    """Private duplicate of the original stdin: the host's requests."""
    frames: int
    """Private duplicate of the original stdout: the only way to the host."""
    logs: int
    """Private duplicate of the original stderr: immune to later dup2 tricks."""


def take_over_stdio() -> StdioFds:
    """Move the protocol off fds 0/1 and logging off fd 2; call before anything prints."""
    frames = os.dup(1)
    logs = os.dup(2)
    requests = os.dup(0)
    os.dup2(2, 1)  # stray writes to stdout now land on stderr
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # nothing else in the process can steal request bytes
    os.close(devnull)
    return StdioFds(requests=requests, frames=frames, logs=logs)


class _PendingChunk:
    """Chunk text waiting to be written; later chunks of the same request and kind merge in."""

    __slots__ = ("request_id", "parts", "reasoning")

    def __init__(self, request_id: int | str, text: str, reasoning: bool = False) -> None:
        self.request_id = request_id
        self.parts = [text]
        self.reasoning = reasoning

    def message(self) -> Chunk:
        text = "".join(self.parts)
        return Chunk(id=self.request_id, text="", reasoning=text) if self.reasoning else Chunk(id=self.request_id, text=text)


class FrameWriter:
    """The single writer of the protocol stream.

    Senders never block on the host: frames queue here and a thread writes
    them, several per system call. When the host reads slowly, consecutive
    chunks of one generation merge into one frame instead of piling up as
    thousands of small ones, so memory stays bounded by the text itself and
    generation never waits for a busy UI. Nothing is reordered.

    Every frame is encoded on its own and checked against `max_frame_size`
    (the host's limit, from `init`), because a frame the host refuses would
    cost it the whole stream: a reply too large for it, or one that fails to
    encode, is replaced by an `error` for the same request id
    (`reply_too_large`, `internal`), an oversized chunk is split, and the
    rest of the batch goes out untouched.
    """

    def __init__(self, fd: int, chunk_interval: float = CHUNK_INTERVAL_S, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._fd = fd
        self.max_frame_size = max_frame_size
        self._chunk_interval = chunk_interval
        self._last_chunk: tuple[int | str | None, float] = (None, 0.0)
        self._cond = threading.Condition()
        self._queue: deque[msgspec.Struct | _PendingChunk] = deque()
        self._writing = False
        self._closed = False
        self._broken = threading.Event()
        self._thread = threading.Thread(target=self._run, name="frame-writer", daemon=True)
        self._thread.start()

    @property
    def broken(self) -> threading.Event:
        """Set when the host's end of the pipe is gone."""
        return self._broken

    def send(self, message: msgspec.Struct) -> None:
        with self._cond:
            if self._closed:
                return
            self._queue.append(message)
            self._cond.notify_all()  # the writer, not only a flush() waiter, must wake

    def send_chunk(self, request_id: int | str, text: str, reasoning: bool = False) -> None:
        """Queue answer text (or, with `reasoning`, thought text) of a generation."""
        with self._cond:
            if self._closed:
                return
            tail = self._queue[-1] if self._queue else None
            if isinstance(tail, _PendingChunk) and tail.request_id == request_id and tail.reasoning == reasoning:
                tail.parts.append(text)
                return
            self._queue.append(_PendingChunk(request_id, text, reasoning))
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued has been written (or the pipe broke)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: (not self._queue and not self._writing) or self._broken.is_set(), timeout
            )

    def close(self, timeout: float = FINAL_FLUSH_S) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _chunk_wait(self) -> float:
        """Seconds to hold back the queue: only chunks queued, of the request last written, too soon."""
        if self._closed or not self._queue or not all(isinstance(item, _PendingChunk) for item in self._queue):
            return 0.0
        last_id, last_at = self._last_chunk
        head = self._queue[0]
        if not isinstance(head, _PendingChunk) or head.request_id != last_id:
            return 0.0  # the first chunk of a generation goes at once
        return last_at + self._chunk_interval - time.monotonic()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                while (wait := self._chunk_wait()) > 0:
                    self._cond.wait(wait)  # a non-chunk frame (done, pong...) wakes it at once
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._writing = True
            try:
                data = b"".join(self._encode(item.message() if isinstance(item, _PendingChunk) else item) for item in batch)
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                last = batch[-1]
                self._last_chunk = (last.request_id, time.monotonic()) if isinstance(last, _PendingChunk) else (None, 0.0)
            except OSError as exc:
                log.warning("the host's end of the protocol pipe is gone (%s)", exc)
                with self._cond:
                    self._queue.clear()
                    self._writing = False
                    self._closed = True
                    self._broken.set()
                    self._cond.notify_all()
                return
            except Exception:  # noqa: BLE001 - a bug here must not kill the writer silently
                log.exception("could not write a batch of frames")
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def _encode(self, message: msgspec.Struct) -> bytes:
        """One frame, or what replaces it when the host could not take it (see the class)."""
        request_id = getattr(message, "id", None)
        tag = message.__struct_config__.tag
        try:
            data = encode(message)
        except Exception as exc:  # noqa: BLE001 - one bad frame must not cost the others
            log.exception("could not encode a %s frame for request %r", tag, request_id)
            if request_id is None or isinstance(message, ErrorFrame):
                return b""
            return self._encode(
                ErrorFrame(id=request_id, code=ErrorCode.INTERNAL, message=f"internal error: the {tag} reply could not be encoded: {exc}", retryable=False)
            )
        size = len(data) - HEADER_SIZE
        if size <= self.max_frame_size:
            return data
        if isinstance(message, Chunk) and max(len(message.text), len(message.reasoning)) > 1:
            field = "reasoning" if message.reasoning else "text"
            value = getattr(message, field)
            half = len(value) // 2
            first, second = (msgspec.structs.replace(message, **{field: part}) for part in (value[:half], value[half:]))
            return self._encode(first) + self._encode(second)
        log.warning("a %s frame of %d bytes for request %r exceeds the host's limit of %d bytes", tag, size, request_id, self.max_frame_size)
        text = getattr(message, "message", None)
        if isinstance(text, str) and len(text) > _TRUNCATED_TEXT:
            # An `error` or `log` whose text is too long: the text is what gives way.
            return self._encode(msgspec.structs.replace(message, message=text[:_TRUNCATED_TEXT] + " [truncated]"))
        if request_id is None or isinstance(message, ErrorFrame):
            return b""
        return self._encode(
            ErrorFrame(
                id=request_id,
                code=ErrorCode.REPLY_TOO_LARGE,
                message=f"the {tag} reply would be {size} bytes, over the {self.max_frame_size} bytes the host reads "
                "(init.max_frame_size); ask for less at a time, or raise the host's limit",
                retryable=False,
            )
        )
