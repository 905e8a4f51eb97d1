"""The request core: requests out, replies routed back to their callers by id.

A `Connection` is one started worker as the core sees it: a reader task that
decodes its output and hands each reply to the waiter of its request (a small
in-memory stream, so any number of calls can be in flight), a task that keeps
the tail of its stderr, and what is known of its end. `RequestCore` sends
requests over the current connection and waits for their terminal replies,
with the timeouts, the cancellation and the withdrawal every call shares.

It knows nothing of models or sessions (that is `client.py`) nor of how the
worker was started (that is the transport).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import signal
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import protocol
from protocol import Chunk, Error, Progress, ToolCallEvent

from .exceptions import BadRequest, LlamaWorkerError, ProtocolViolation, WorkerCrashed, WorkerTimeout, error_from_frame
from .options import USE_CLIENT_DEFAULT, Timeout, _UseClientDefault
from .transport import WorkerStreams

log = logging.getLogger("llama_worker.host")

R = TypeVar("R")

#: Requests that start work on the worker's model thread: cancelling one, or
#: its timeout, aborts it and waits for its terminal reply, so that the
#: worker is idle (never `busy` because of it) when control returns.
_WORK_REQUESTS = (protocol.Load, protocol.Generate, protocol.Preload, protocol.SaveSession, protocol.RestoreSession, protocol.Reset, protocol.CloseSession)
#: Replies that are events of a request, not its end.
EVENTS = (Chunk, Progress, ToolCallEvent)
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class _Stalled(Exception):
    """No reply for a request's stall timeout (a load that stopped making progress)."""


@dataclass
class Waiter:
    """Where the replies of one request go, until its terminal one."""

    send: MemoryObjectSendStream[Any]
    receive: MemoryObjectReceiveStream[Any]
    connection: Connection


@dataclass
class Connection:
    """One started worker: its streams, the requests awaiting replies, and how it ended."""

    streams: WorkerStreams
    max_frame_size: int
    on_unrouted: Callable[[Any], None]
    """Frames that answer no pending request (logs, late replies)."""
    stderr_tail: deque[bytes] = field(default_factory=lambda: deque(maxlen=64))
    pending: dict[int | str, Waiter] = field(default_factory=dict)
    crashed: WorkerCrashed | None = None
    closing: bool = False
    violation: ProtocolViolation | None = None
    """Set when the client killed the worker for an unreadable frame."""
    gone: anyio.Event = field(default_factory=anyio.Event)
    """Set once the reader has seen the end of the worker's output and failed what was pending."""

    @property
    def pid(self) -> int | None:
        return self.streams.pid

    @property
    def alive(self) -> bool:
        return self.crashed is None and self.streams.returncode is None

    def stderr_text(self, limit: int = 8192) -> str:
        return b"".join(self.stderr_tail)[-limit:].decode("utf-8", errors="replace")

    def fail_all(self, exc: WorkerCrashed) -> None:
        self.crashed = exc
        for waiter in self.pending.values():
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock):
                waiter.send.send_nowait(exc)
        self.pending.clear()

    # -- the two tasks that run for the connection's life -----------------------

    async def drain_stderr(self) -> None:
        try:
            async for data in self.streams.stderr():
                self.stderr_tail.append(data)
        except _GONE:
            pass

    async def read_frames(self) -> None:
        reader = protocol.reply_reader(self.max_frame_size)
        try:
            async for data in self.streams.receive():
                for item in reader.feed(data):
                    if isinstance(item, protocol.ProtocolError):
                        self._unreadable(item)
                    else:
                        self._route(item)
                if self.violation is not None:
                    break
        except _GONE:
            pass
        # The output closed: the worker is exiting or dead. Report within a second.
        with anyio.move_on_after(1.0):
            await self.streams.wait()
        if not self.closing or self.pending:
            exc = self._crash_report()
            if not self.closing:
                log.error("%s; stderr tail:\n%s", exc.message, exc.stderr_tail[-2000:])
            self.fail_all(exc)
        self.gone.set()

    def _crash_report(self) -> WorkerCrashed:
        code = self.streams.returncode
        sig = -code if code is not None and code < 0 else None
        cause = f"killed by signal {signal.Signals(sig).name}" if sig else f"exited with code {code}" if code is not None else "closed its output"
        if self.violation is not None:
            cause = f"sent an unreadable frame and was killed by the client ({self.violation.message})"
        exc = WorkerCrashed(f"the worker (pid {self.pid}) {cause}", exit_code=code if sig is None else None, signal=sig, stderr_tail=self.stderr_text())
        exc.__cause__ = self.violation
        return exc

    def _unreadable(self, error: protocol.ProtocolError) -> None:
        """A reply that cannot be read: fail its call if it names one, else treat the worker as broken.

        A bad length prefix, garbage or a payload without a readable id means
        the stream can no longer be trusted (and some call's reply may be the
        one lost): kill the worker, so that every pending call fails at once
        with `WorkerCrashed` and `auto_restart` applies.
        """
        violation = ProtocolViolation(f"unreadable frame from the worker: {error.code}: {error.message}")
        waiter = self.pending.pop(error.request_id, None) if error.request_id is not None and not error.fatal else None
        if waiter is not None:
            log.error("%s (request %r)", violation.message, error.request_id)
            waiter.send.send_nowait(violation)
            return
        log.error("%s; killing the worker", violation.message)
        if self.violation is None:
            self.violation = violation
            self.streams.kill()

    def _route(self, msg: Any) -> None:
        rid: int | str | None = getattr(msg, "id", None)
        waiter = self.pending.get(rid) if rid is not None else None
        if rid is None or waiter is None:
            self.on_unrouted(msg)
            return
        if not isinstance(msg, EVENTS):
            del self.pending[rid]
        waiter.send.send_nowait(msg)

    # -- ending it ----------------------------------------------------------------

    async def stop(self, grace: float) -> None:
        """Close its input, then wait, terminate and kill, `grace` seconds apart."""
        with contextlib.suppress(*_GONE):
            await self.streams.close_input()
        for escalate in (None, self.streams.terminate, self.streams.kill):
            if escalate is not None:
                escalate()
            with anyio.move_on_after(grace):
                await self.streams.wait()
                return
        await self.streams.wait()

    async def kill(self) -> None:
        self.closing = True
        self.streams.kill()
        await self.streams.wait()


class RequestCore:
    """Send requests over the current connection; wait for their terminal replies.

    `connect` returns the connection to use (the client's: it restarts a
    crashed worker there when `auto_restart` is on).
    """

    def __init__(self, connect: Callable[[], Awaitable[Connection]], *, request_timeout: float | None, shutdown_timeout: float) -> None:
        self._connect = connect
        self.request_timeout = request_timeout
        self.shutdown_timeout = shutdown_timeout
        self.frame_limit = protocol.DEFAULT_MAX_FRAME_SIZE
        """The largest request the worker reads (its `ready.max_frame_size`)."""
        self._ids = itertools.count(1)
        self._send_lock = anyio.Lock()

    def next_id(self) -> int:
        return next(self._ids)

    def seconds(self, timeout: Timeout) -> float | None:
        return self.request_timeout if isinstance(timeout, _UseClientDefault) else timeout

    async def open(self, msg: msgspec.Struct, connection: Connection | None = None) -> Waiter:
        """Send `msg`; the waiter its replies will arrive on."""
        connection = connection or await self._connect()
        data = protocol.encode(msg)
        size = len(data) - protocol.HEADER_SIZE
        if size > self.frame_limit:
            # The worker would take it as a broken stream and exit: refuse it here.
            raise BadRequest(f"the request is {size} bytes, over the worker's limit of {self.frame_limit}", code="frame_too_large")
        if connection.crashed is not None:
            raise connection.crashed
        send, receive = anyio.create_memory_object_stream[Any](math.inf)
        waiter = Waiter(send, receive, connection)
        rid = msg.id  # type: ignore[attr-defined]
        connection.pending[rid] = waiter
        try:
            async with self._send_lock:
                # Whole or not at all: a frame cut short would break the stream.
                # (The worker's reader always drains stdin, so this cannot hang.)
                with anyio.CancelScope(shield=True):
                    await connection.streams.send(data)
        except _GONE:
            pass  # the reader will see the worker's death and fail the waiter
        except BaseException:
            connection.pending.pop(rid, None)  # cancelled before it was sent: nothing to wait for
            raise
        return waiter

    async def call(
        self,
        msg: msgspec.Struct,
        reply_type: type[R],
        connection: Connection | None = None,
        *,
        timeout: Timeout = USE_CLIENT_DEFAULT,
        on_event: Callable[[Any], None] | None = None,
        stall_timeout: float | None = None,
    ) -> R:
        """Send a request and wait, at most `timeout`, for its terminal reply, a `reply_type` (raising on `error`).

        Events go to `on_event`; with `stall_timeout`, a gap that long between
        two replies gives up too. A timeout or a cancellation withdraws the
        request first (see `withdraw`).
        """
        seconds = self.seconds(timeout)
        tag = msg.__struct_config__.tag
        waiter = await self.open(msg, connection)
        try:
            with anyio.fail_after(seconds):
                try:
                    reply = await self.terminal(waiter, on_event, stall_timeout)
                except anyio.get_cancelled_exc_class():
                    with anyio.CancelScope(shield=True):
                        await self.withdraw(msg, waiter)
                    raise
                except _Stalled:
                    with anyio.CancelScope(shield=True):
                        await self.withdraw(msg, waiter)
                    raise WorkerTimeout(f"the {tag} made no progress for {stall_timeout} s and was aborted") from None
        except TimeoutError:
            aborted = " and was aborted" if isinstance(msg, _WORK_REQUESTS) else ""
            raise WorkerTimeout(f"no reply to {tag} {msg.id!r} within {seconds} s{aborted}") from None  # type: ignore[attr-defined]
        if not isinstance(reply, reply_type):
            raise ProtocolViolation(f"the worker answered {tag} with {type(reply).__name__}, not {reply_type.__name__}")
        return reply

    @staticmethod
    async def terminal(waiter: Waiter, on_event: Callable[[Any], None] | None = None, stall_timeout: float | None = None) -> Any:
        """The request's terminal reply; its events go to `on_event` on the way."""
        while True:
            with anyio.move_on_after(stall_timeout) as stall:
                reply = await waiter.receive.receive()
            if stall.cancelled_caught:
                raise _Stalled
            if isinstance(reply, BaseException):
                raise reply
            if isinstance(reply, Error):
                raise error_from_frame(reply.code, reply.message, reply.retryable)
            if not isinstance(reply, EVENTS):
                return reply
            if on_event is not None:
                on_event(reply)

    async def withdraw(self, msg: msgspec.Struct, waiter: Waiter) -> None:
        """Take back a request its caller stopped waiting for (call shielded).

        Work on the model thread is aborted and its terminal reply awaited
        (up to `shutdown_timeout`), so the next request finds the worker idle
        instead of `busy`; anything else is merely forgotten.
        """
        rid = msg.id  # type: ignore[attr-defined]
        connection = waiter.connection
        if isinstance(msg, _WORK_REQUESTS) and rid in connection.pending and connection.crashed is None:
            with anyio.move_on_after(self.shutdown_timeout):
                try:
                    await self.call(protocol.Abort(id=self.next_id(), target=rid), protocol.Ok, connection, timeout=None)
                    await self.terminal(waiter)
                except LlamaWorkerError:
                    pass
        connection.pending.pop(rid, None)
