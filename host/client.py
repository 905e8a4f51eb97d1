"""The async host client: spawn a worker, route its frames, survive its death.

One `AsyncClient` owns one worker process at a time. A reader task decodes the
worker's stdout and routes each frame by request id to the waiter of that
request (a small in-memory stream), so any number of calls can be in flight
(`ping` during a generation, an `abort` from another task). A second task
drains stderr and keeps its tail, which is what a `WorkerCrashed` carries.

Works under asyncio and trio (anyio). `host.sync.Client` is the blocking face
of this same class, not a second implementation.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, TypeVar

import anyio
import anyio.abc
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import protocol
from protocol import (
    DEFAULT_SESSION,
    ChatMessage,
    Chunk,
    Done,
    Error,
    Loaded,
    ModelInfo,
    Preloaded,
    Progress,
    Ready,
    ResponseFormat,
    Restored,
    Saved,
    SessionInfo,
    SessionList,
    TokenCount,
    Tokens,
)

from .exceptions import (
    BadRequest,
    IncompleteOutput,
    LlamaWorkerError,
    ProtocolViolation,
    WorkerCrashed,
    WorkerTimeout,
    error_from_frame,
)

log = logging.getLogger("llama_worker.host")

Message = Mapping[str, str]
ChatInput = str | Sequence[Message] | Sequence[ChatMessage]
Result = Done

PARENT_ENV_VAR = "LLAMA_WORKER_PARENT_PID"

T = TypeVar("T")


class _UseClientDefault(enum.Enum):
    TOKEN = "USE_CLIENT_DEFAULT"


#: A call's `timeout` when not given: the client's `request_timeout` (as httpx does).
USE_CLIENT_DEFAULT: Final = _UseClientDefault.TOKEN
Timeout = float | None | _UseClientDefault

#: Requests that start work on the worker's model thread: cancelling one, or
#: its timeout, aborts it and waits for its terminal reply, so that the
#: worker is idle (never `busy` because of it) when control returns.
_WORK_REQUESTS = (protocol.Load, protocol.Generate, protocol.Preload, protocol.SaveSession, protocol.RestoreSession, protocol.Reset, protocol.CloseSession)
#: Replies that are events of a request, not its end.
_EVENTS = (Chunk, Progress)


class _Stalled(Exception):
    """No reply for a request's stall timeout (a load that stopped making progress)."""


def response_format(value: Any) -> ResponseFormat | None:
    """What `generate(response_format=...)` accepts, as the wire's `ResponseFormat`.

    None; "json" (any JSON object); a `ResponseFormat`; a dict with "type"
    ("json" or "json_schema", plus "schema"); a bare JSON Schema dict; or a
    type msgspec can describe (a `msgspec.Struct`, a dataclass, a TypedDict...),
    whose JSON Schema is generated.
    """
    if value is None or isinstance(value, ResponseFormat):
        return value
    if value == "json":
        return ResponseFormat(type="json")
    if isinstance(value, Mapping):
        if value.get("type") in ("json", "json_schema") and set(value) <= {"type", "schema"}:
            return msgspec.convert(dict(value), ResponseFormat)
        return ResponseFormat(type="json_schema", schema=dict(value))
    if isinstance(value, type) or hasattr(value, "__origin__"):
        return ResponseFormat(type="json_schema", schema=msgspec.json.schema(value))
    raise TypeError(f"response_format: expected 'json', a JSON Schema dict or a type, not {value!r}")


def default_worker_command() -> list[str]:
    """This interpreter running the worker package."""
    return [sys.executable, "-m", "worker"]


# ---------------------------------------------------------------------------
# one worker process
# ---------------------------------------------------------------------------


@dataclass
class _Mirror:
    """A session's conversation as this client knows it: what a restart restores."""

    system_prompt: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Waiter:
    send: MemoryObjectSendStream[Any]
    receive: MemoryObjectReceiveStream[Any]
    worker: _WorkerProcess


@dataclass
class _WorkerProcess:
    process: anyio.abc.Process
    stderr_tail: deque[bytes] = field(default_factory=lambda: deque(maxlen=64))
    pending: dict[int | str, _Waiter] = field(default_factory=dict)
    crashed: WorkerCrashed | None = None
    closing: bool = False
    violation: ProtocolViolation | None = None
    """Set when the client killed the worker for an unreadable frame."""
    gone: anyio.Event = field(default_factory=anyio.Event)
    """Set once the reader has seen the end of the worker's output and failed what was pending."""

    def stderr_text(self, limit: int = 8192) -> str:
        return b"".join(self.stderr_tail)[-limit:].decode("utf-8", errors="replace")

    def fail_all(self, exc: WorkerCrashed) -> None:
        self.crashed = exc
        for waiter in self.pending.values():
            try:
                waiter.send.send_nowait(exc)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock):
                pass
        self.pending.clear()


# ---------------------------------------------------------------------------
# streaming generation
# ---------------------------------------------------------------------------


class Generation:
    """An in-flight generation: iterate it for text chunks; `.result` at the end.

    Use it as an async context manager so that leaving early (break, an
    exception, a cancelled task) aborts the generation on the worker:

        async with await client.generate("Hi") as stream:
            async for text in stream:
                print(text, end="")
        print(stream.result.usage)

    A cancelled iteration (a timeout, a cancelled task) aborts it too, and
    waits (shielded, up to `shutdown_timeout`) for the worker to end it, so
    the worker is idle again when the cancellation propagates. So does the
    generation's own `timeout`, which then raises `WorkerTimeout` (the partial
    result stays in `.result`).
    """

    def __init__(self, client: AsyncClient, request: protocol.Generate, waiter: _Waiter, timeout: float | None = None) -> None:
        self._client = client
        self.request = request
        self._waiter = waiter
        self._timeout = timeout
        self._deadline = None if timeout is None else anyio.current_time() + timeout
        self.result: Done | None = None
        self._error: BaseException | None = None
        self._chunks: list[str] = []
        # One receiver at a time: a blocking caller interrupted by Ctrl-C
        # leaves its receive running while it aborts and drains.
        self._lock = anyio.Lock()

    @property
    def id(self) -> int | str:
        return self.request.id

    @property
    def text(self) -> str:
        """Text received so far."""
        return "".join(self._chunks)

    @property
    def finished(self) -> bool:
        """True once the generation ended: with a result, or with an error."""
        return self.result is not None or self._error is not None

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> str:
        try:
            async with self._lock:
                if self.result is not None:
                    raise StopAsyncIteration
                if self._error is not None:
                    raise self._error
                remaining = None if self._deadline is None else self._deadline - anyio.current_time()
                with anyio.fail_after(remaining):
                    msg = await self._waiter.receive.receive()
        except anyio.get_cancelled_exc_class():
            await self._abort_shielded()
            raise
        except TimeoutError:
            await self._abort_shielded()
            self._error = WorkerTimeout(f"the generation did not finish within its timeout of {self._timeout} s and was aborted")
            raise self._error from None
        return self._take(msg)

    def _take(self, msg: Any) -> str:
        if isinstance(msg, Chunk):
            self._chunks.append(msg.text)
            return msg.text
        if isinstance(msg, Done):
            self.result = msg
            self._client._after_generation(self.request, msg)
            raise StopAsyncIteration
        if isinstance(msg, Error):
            self._error = error_from_frame(msg.code, msg.message, msg.retryable)
            raise self._error
        if isinstance(msg, BaseException):
            self._error = msg
            raise msg
        raise LlamaWorkerError(f"unexpected frame for a generation: {msg!r}")

    async def final(self) -> Done:
        """Consume what is left and return the final result."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def abort(self) -> Done:
        """Stop the generation; return its (partial) result."""
        if not self.finished:
            await self._client.abort(self.id)
        return await self.final()

    async def _abort_shielded(self) -> None:
        """Abort, then wait for the worker's terminal reply (or give up after a while)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._client.shutdown_timeout):
            try:
                if not self.finished:
                    await self._client.abort(self.id)
                async with self._lock:
                    while not self.finished:
                        self._take(await self._waiter.receive.receive())
            except (LlamaWorkerError, StopAsyncIteration):
                pass

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self.finished:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._client.shutdown_timeout):
                try:
                    await self.abort()
                except LlamaWorkerError:
                    pass


# ---------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------


class AsyncClient:
    """Drive one llama-worker process. Use as `async with AsyncClient() as client:`.

    No call waits forever: every request but `generate` and `load` gives up
    after `request_timeout` seconds unless its own `timeout` says otherwise
    (None: no limit); those two take a `timeout` too. A timed-out or
    cancelled call that started work in the worker aborts it first.

    Callbacks (`on_log`, `on_progress`, `on_chunk`) are user code the client
    fences off: an exception in one goes to `on_callback_error(exc, name)`
    (by default: logged) and the client carries on.
    """

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        handshake_timeout: float = 60.0,
        load_stall_timeout: float = 120.0,
        shutdown_timeout: float = 5.0,
        request_timeout: float | None = 60.0,
        max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE,
        auto_restart: bool = False,
        log_level: str | None = None,
        on_log: Callable[[str, str], None] | None = None,
        on_callback_error: Callable[[BaseException, str], None] | None = None,
    ) -> None:
        if max_frame_size < protocol.MIN_FRAME_SIZE:
            raise ValueError(f"max_frame_size must be at least {protocol.MIN_FRAME_SIZE} bytes")
        self.command = list(command) if command else default_worker_command()
        self.env = dict(env or {})
        self.cwd = cwd
        self.handshake_timeout = handshake_timeout
        self.load_stall_timeout = load_stall_timeout
        self.shutdown_timeout = shutdown_timeout
        self.request_timeout = request_timeout
        self.max_frame_size = max_frame_size
        self.auto_restart = auto_restart
        self.log_level = log_level
        self.on_log = on_log
        self.on_callback_error = on_callback_error
        self.ready: Ready | None = None
        self.model: ModelInfo | None = None
        self._ids = itertools.count(1)
        self._tg: anyio.abc.TaskGroup | None = None
        self._wp: _WorkerProcess | None = None
        self._send_lock = anyio.Lock()
        self._start_lock = anyio.Lock()
        # What we need to rebuild the worker's state after a crash.
        self._load_options: dict[str, Any] | None = None
        self._mirrors: dict[str, _Mirror] = {}
        self._sessions: dict[str, Session] = {}

    # -- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._spawn()
        except BaseException:
            # Leave no process behind, and raise the error itself (handing it
            # to the task group would wrap it in an ExceptionGroup).
            with anyio.CancelScope(shield=True):
                if self._wp is not None and self._wp.process.returncode is None:
                    await self._kill(self._wp)
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._tg = None
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        with anyio.CancelScope(shield=True):
            await self.close()
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(exc_type, exc, tb)
        self._tg = None

    @property
    def pid(self) -> int | None:
        return self._wp.process.pid if self._wp else None

    @property
    def alive(self) -> bool:
        return self._wp is not None and self._wp.crashed is None and self._wp.process.returncode is None

    @property
    def stderr_tail(self) -> str:
        return self._wp.stderr_text() if self._wp else ""

    @property
    def history(self) -> list[dict[str, str]]:
        """The default session's conversation as this client knows it (restored after a crash)."""
        return [dict(m) for m in self._mirror(DEFAULT_SESSION).history]

    def _mirror(self, session: str) -> _Mirror:
        mirror = self._mirrors.get(session)
        if mirror is None:
            default_prompt = (self._load_options or {}).get("system_prompt") or None
            mirror = self._mirrors[session] = _Mirror(system_prompt=default_prompt)
        return mirror

    def session(self, name: str = DEFAULT_SESSION) -> Session:
        """A chat session of this worker: its own history and system prompt, sharing the model."""
        handle = self._sessions.get(name)
        if handle is None:
            handle = self._sessions[name] = Session(self, name)
        return handle

    async def _spawn(self) -> Ready:
        assert self._tg is not None, "use the client as an async context manager"
        env = {**os.environ, **self.env, PARENT_ENV_VAR: str(os.getpid())}
        process = await anyio.open_process(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.cwd,
        )
        wp = _WorkerProcess(process)
        self._wp = wp
        self._tg.start_soon(self._drain_stderr, wp)
        self._tg.start_soon(self._read_frames, wp)
        init = protocol.Init(id=self._next_id(), protocol_version=protocol.PROTOCOL_VERSION, log_level=self.log_level, max_frame_size=self.max_frame_size)
        try:
            reply = await self._call(init, wp, timeout=self.handshake_timeout)
        except WorkerTimeout:
            await self._kill(wp)
            raise WorkerTimeout(f"the worker did not answer init within {self.handshake_timeout} s; stderr: {wp.stderr_text(2000)}") from None
        assert isinstance(reply, Ready)
        self.ready = reply
        return reply

    async def restart(self) -> Ready:
        """Replace the worker with a fresh one, reload its model, restore the conversation.

        Idempotent for concurrent callers: all who call it while one restart
        runs (say, several tasks that saw the same crash) get that restart's
        result; none kills the worker another one has just brought up.
        Raises `WorkerCrashed` (with the crash as `__cause__`) if the new
        worker dies while it is being set up.
        """
        seen = self._wp
        async with self._start_lock:
            if self._wp is not seen and self.alive and self.ready is not None:
                return self.ready  # another caller restarted it while we waited
            old = self._wp
            if old is not None and old.process.returncode is None:
                await self._kill(old)
            mirrors = self._mirrors
            ready = await self._spawn()
            wp = self._wp
            assert wp is not None
            try:
                if self._load_options is not None:
                    options = dict(self._load_options)
                    await self._load(options.pop("model_path"), options, wp=wp)
                    # Put every conversation back at once (nothing is evaluated until
                    # it is used), so that everything the new worker is asked sees it.
                    for name, mirror in mirrors.items():
                        history = self._wire_input(mirror.history)
                        reset = protocol.Reset(id=self._next_id(), session=name, system_prompt=mirror.system_prompt or "", history=history)  # type: ignore[arg-type]
                        await self._call(reset, wp, timeout=self.request_timeout)
                    self._mirrors = mirrors
            except WorkerCrashed as exc:
                raise WorkerCrashed(
                    f"the worker crashed while restarting: {exc.message}", exit_code=exc.exit_code, signal=exc.signal, stderr_tail=exc.stderr_tail
                ) from exc
            return ready

    async def close(self) -> None:
        """Shut down in order: cleanup, close stdin, wait, terminate, kill."""
        wp = self._wp
        if wp is None or wp.closing:
            return
        wp.closing = True
        if wp.process.returncode is None and wp.crashed is None:
            try:
                await self._call(protocol.Cleanup(id=self._next_id()), wp, timeout=self.shutdown_timeout)
            except LlamaWorkerError:
                pass
        await self._stop(wp)

    async def _stop(self, wp: _WorkerProcess) -> None:
        try:
            if wp.process.stdin is not None:
                await wp.process.stdin.aclose()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        for escalate in (None, wp.process.terminate, wp.process.kill):
            if escalate is not None:
                try:
                    escalate()
                except ProcessLookupError:
                    pass
            with anyio.move_on_after(self.shutdown_timeout):
                await wp.process.wait()
                break
        await wp.process.wait()

    async def _kill(self, wp: _WorkerProcess) -> None:
        wp.closing = True
        try:
            wp.process.kill()
        except ProcessLookupError:
            pass
        await wp.process.wait()

    # -- plumbing ---------------------------------------------------------------

    def _next_id(self) -> int:
        return next(self._ids)

    async def _drain_stderr(self, wp: _WorkerProcess) -> None:
        assert wp.process.stderr is not None
        try:
            async for data in wp.process.stderr:
                wp.stderr_tail.append(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    async def _read_frames(self, wp: _WorkerProcess) -> None:
        assert wp.process.stdout is not None
        reader = protocol.reply_reader(self.max_frame_size)
        try:
            async for data in wp.process.stdout:
                for item in reader.feed(data):
                    if isinstance(item, protocol.ProtocolError):
                        self._unreadable(wp, item)
                    else:
                        self._route(wp, item)
                if wp.violation is not None:
                    break
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        # stdout closed: the worker is exiting or dead. Report within a second.
        with anyio.move_on_after(1.0):
            await wp.process.wait()
        code = wp.process.returncode
        sig = -code if code is not None and code < 0 else None
        if not wp.closing or wp.pending:
            cause = f"killed by signal {signal.Signals(sig).name}" if sig else f"exited with code {code}" if code is not None else "closed its output"
            if wp.violation is not None:
                cause = f"sent an unreadable frame and was killed by the client ({wp.violation.message})"
            exc = WorkerCrashed(
                f"the worker (pid {wp.process.pid}) {cause}",
                exit_code=code if sig is None else None,
                signal=sig,
                stderr_tail=wp.stderr_text(),
            )
            exc.__cause__ = wp.violation
            if not wp.closing:
                log.error("%s; stderr tail:\n%s", exc.message, exc.stderr_tail[-2000:])
            wp.fail_all(exc)
        wp.gone.set()

    def _unreadable(self, wp: _WorkerProcess, error: protocol.ProtocolError) -> None:
        """A reply that cannot be read: fail its call if it names one, else treat the worker as broken.

        A bad length prefix, garbage or a payload without a readable id means
        the stream can no longer be trusted (and some call's reply may be the
        one lost): kill the worker, so that every pending call fails at once
        with `WorkerCrashed` and `auto_restart` applies.
        """
        violation = ProtocolViolation(f"unreadable frame from the worker: {error.code}: {error.message}")
        waiter = wp.pending.pop(error.request_id, None) if error.request_id is not None and not error.fatal else None
        if waiter is not None:
            log.error("%s (request %r)", violation.message, error.request_id)
            waiter.send.send_nowait(violation)
            return
        log.error("%s; killing the worker", violation.message)
        if wp.violation is None:
            wp.violation = violation
            try:
                wp.process.kill()
            except ProcessLookupError:
                pass

    def _route(self, wp: _WorkerProcess, msg: Any) -> None:
        rid = getattr(msg, "id", None)
        waiter = wp.pending.get(rid) if rid is not None else None
        if waiter is None:
            if isinstance(msg, protocol.Log):
                if self.on_log:
                    self._callback("on_log", self.on_log, msg.level, msg.message)
                else:
                    log.log(logging.getLevelName(msg.level.upper()), "worker: %s", msg.message)
            elif isinstance(msg, Error):
                log.warning("worker error without a waiter: %s: %s", msg.code, msg.message)
            return
        if not isinstance(msg, _EVENTS):
            del wp.pending[rid]
        waiter.send.send_nowait(msg)

    def _callback(self, name: str, fn: Callable[..., object], *args: Any) -> None:
        """Call user code; whatever it raises is reported, never propagated."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - user code must not break the client
            self._report_callback_error(exc, name)

    def _report_callback_error(self, exc: BaseException, name: str) -> None:
        if self.on_callback_error is not None:
            try:
                self.on_callback_error(exc, name)
                return
            except Exception:  # noqa: BLE001
                log.exception("on_callback_error raised while reporting an error in %s", name)
        log.error("the %s callback raised %s: %s", name, type(exc).__name__, exc, exc_info=exc)

    async def _process(self) -> _WorkerProcess:
        wp = self._wp
        if wp is not None and wp.crashed is None and not wp.closing:
            return wp
        if wp is not None and wp.closing:
            raise LlamaWorkerError("the client is closed", code="closed")
        if self.auto_restart:
            await self.restart()
            assert self._wp is not None
            return self._wp
        assert wp is not None and wp.crashed is not None
        raise wp.crashed

    async def _open(self, msg: msgspec.Struct, wp: _WorkerProcess | None = None) -> _Waiter:
        wp = wp or await self._process()
        data = protocol.encode(msg)
        limit = (self.ready.max_frame_size if self.ready is not None else None) or protocol.DEFAULT_MAX_FRAME_SIZE
        if len(data) - protocol.HEADER_SIZE > limit:
            # The worker would take it as a broken stream and exit: refuse it here.
            raise BadRequest(f"the request is {len(data) - protocol.HEADER_SIZE} bytes, over the worker's limit of {limit}", code="frame_too_large")
        if wp.crashed is not None:
            raise wp.crashed
        send, receive = anyio.create_memory_object_stream[Any](math.inf)
        waiter = _Waiter(send, receive, wp)
        rid = msg.id  # type: ignore[attr-defined]
        wp.pending[rid] = waiter
        try:
            async with self._send_lock:
                assert wp.process.stdin is not None
                # Whole or not at all: a frame cut short would break the stream.
                # (The worker's reader always drains stdin, so this cannot hang.)
                with anyio.CancelScope(shield=True):
                    await wp.process.stdin.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            # The reader will see the worker's death and fail the waiter.
            pass
        except BaseException:
            wp.pending.pop(rid, None)  # cancelled before it was sent: nothing to wait for
            raise
        return waiter

    def _timeout(self, timeout: Timeout) -> float | None:
        return self.request_timeout if isinstance(timeout, _UseClientDefault) else timeout

    async def _call(
        self,
        msg: msgspec.Struct,
        wp: _WorkerProcess | None = None,
        *,
        timeout: Timeout = USE_CLIENT_DEFAULT,
        on_event: Callable[[Any], None] | None = None,
        stall_timeout: float | None = None,
    ) -> Any:
        """Send a request and wait, at most `timeout`, for its terminal reply (raising on `error`).

        Events go to `on_event`; with `stall_timeout`, a gap that long between
        two replies gives up too. A timeout or a cancellation withdraws the
        request first (see `_withdraw`).
        """
        seconds = self._timeout(timeout)
        tag = msg.__struct_config__.tag
        waiter = await self._open(msg, wp)
        try:
            with anyio.fail_after(seconds):
                try:
                    return await self._terminal(waiter, on_event, stall_timeout)
                except anyio.get_cancelled_exc_class():
                    with anyio.CancelScope(shield=True):
                        await self._withdraw(msg, waiter)
                    raise
                except _Stalled:
                    with anyio.CancelScope(shield=True):
                        await self._withdraw(msg, waiter)
                    raise WorkerTimeout(f"the {tag} made no progress for {stall_timeout} s and was aborted") from None
        except TimeoutError:
            aborted = " and was aborted" if isinstance(msg, _WORK_REQUESTS) else ""
            raise WorkerTimeout(f"no reply to {tag} {msg.id!r} within {seconds} s{aborted}") from None  # type: ignore[attr-defined]

    @staticmethod
    async def _terminal(waiter: _Waiter, on_event: Callable[[Any], None] | None = None, stall_timeout: float | None = None) -> Any:
        while True:
            with anyio.move_on_after(stall_timeout) as stall:
                reply = await waiter.receive.receive()
            if stall.cancelled_caught:
                raise _Stalled
            if isinstance(reply, BaseException):
                raise reply
            if isinstance(reply, Error):
                raise error_from_frame(reply.code, reply.message, reply.retryable)
            if not isinstance(reply, _EVENTS):
                return reply
            if on_event is not None:
                on_event(reply)

    async def _withdraw(self, msg: msgspec.Struct, waiter: _Waiter) -> None:
        """Take back a request its caller stopped waiting for (call shielded).

        Work on the model thread is aborted and its terminal reply awaited
        (up to `shutdown_timeout`), so the next request finds the worker idle
        instead of `busy`; anything else is merely forgotten.
        """
        rid = msg.id  # type: ignore[attr-defined]
        wp = waiter.worker
        if isinstance(msg, _WORK_REQUESTS) and rid in wp.pending and wp.crashed is None:
            with anyio.move_on_after(self.shutdown_timeout):
                try:
                    await self._call(protocol.Abort(id=self._next_id(), target=rid), wp, timeout=None)
                    await self._terminal(waiter)
                except LlamaWorkerError:
                    pass
        wp.pending.pop(rid, None)

    # -- requests -----------------------------------------------------------------
    #
    # `timeout` (seconds) bounds each call; USE_CLIENT_DEFAULT means the
    # client's `request_timeout`, None means no limit.

    async def ping(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> float:
        """Round trip time in seconds."""
        t0 = time.perf_counter()
        await self._call(protocol.Ping(id=self._next_id()), timeout=timeout)
        return time.perf_counter() - t0

    async def load(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        on_progress: Callable[[float], None] | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> ModelInfo:
        """Load a model (None: the default); `on_progress` gets fractions 0..1.

        Raises `WorkerTimeout` when no progress arrives for `load_stall_timeout`,
        or the whole load takes longer than `timeout`; the load is aborted first.
        """
        path = os.fspath(model_path) if model_path is not None else None
        return await self._load(path, options, on_progress=on_progress, timeout=timeout)

    async def _load(
        self,
        path: str | None,
        options: dict[str, Any],
        *,
        on_progress: Callable[[float], None] | None = None,
        timeout: float | None = None,
        wp: _WorkerProcess | None = None,
    ) -> ModelInfo:
        request = protocol.Load(id=self._next_id(), model_path=path, **options)

        def progress(event: Progress) -> None:
            if on_progress is not None:
                self._callback("on_progress", on_progress, event.fraction)

        # Every progress event restarts the stall timer.
        reply = await self._call(request, wp, timeout=timeout, on_event=progress, stall_timeout=self.load_stall_timeout)
        assert isinstance(reply, Loaded)
        self.model = reply.model
        self._load_options = {"model_path": path, **options}
        self._mirrors = {}  # a load starts every session afresh
        return reply.model

    async def generate(self, input: ChatInput, *, timeout: float | None = None, **options: Any) -> Generation:
        """Start a generation; iterate the result for chunks (see `Generation`).

        `input` is the next user turn (str) or a whole conversation (list of
        {"role", "content"} messages). Options are the protocol's: max_tokens,
        temperature, top_p, stop, top_k, min_p, repeat_penalty, seed, mode.
        `timeout` bounds the whole generation (it is then aborted).
        """
        # Get the worker first: an automatic restart happens here, before anything is sent.
        wp = await self._process()
        wire_input = self._wire_input(input)
        if "response_format" in options:
            options["response_format"] = response_format(options["response_format"])
        request = protocol.Generate(id=self._next_id(), input=wire_input, **options)
        waiter = await self._open(request, wp)
        return Generation(self, request, waiter, timeout)

    async def chat(
        self, input: ChatInput, *, on_chunk: Callable[[str], None] | None = None, timeout: float | None = None, **options: Any
    ) -> Done:
        """One turn, returning the final result (chunks go to `on_chunk` if given)."""
        async with await self.generate(input, timeout=timeout, **options) as stream:
            async for text in stream:
                if on_chunk is not None:
                    self._callback("on_chunk", on_chunk, text)
        assert stream.result is not None
        return stream.result

    async def chat_as(self, input: ChatInput, type: type[T], *, timeout: float | None = None, **options: Any) -> T:
        """One turn whose reply is JSON constrained to `type`'s schema, decoded into `type`.

        Raises `IncompleteOutput` (with `.result`) when the reply ended before
        its JSON was complete (raise `max_tokens`), and msgspec's
        `ValidationError` if it breaks a rule the grammar cannot express.
        """
        result = await self.chat(input, response_format=type, timeout=timeout, **options)
        if result.incomplete:
            raise IncompleteOutput(f"the reply ended ({result.stop_reason}) before its JSON was complete", result=result)
        return msgspec.json.decode(result.text, type=type)

    async def tokenize(self, text: str, *, special: bool = False, timeout: Timeout = USE_CLIENT_DEFAULT) -> list[int]:
        """The model's token ids for `text` (answered even while a generation runs).

        Raises `ReplyTooLarge` when the ids would not fit one frame
        (`max_frame_size`): tokenize a long text in parts.
        """
        reply: Tokens = await self._call(protocol.Tokenize(id=self._next_id(), text=text, special=special), timeout=timeout)
        return reply.ids

    async def detokenize(self, ids: Sequence[int], *, special: bool = False, timeout: Timeout = USE_CLIENT_DEFAULT) -> str:
        reply = await self._call(protocol.Detokenize(id=self._next_id(), ids=list(ids), special=special), timeout=timeout)
        return reply.text  # type: ignore[no-any-return]

    async def count_tokens(
        self, input: ChatInput | None = None, *, session: str = DEFAULT_SESSION, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> TokenCount:
        """Prompt tokens a `generate` of `input` would evaluate in `session` (None: its conversation so far)."""
        await self._process()
        wire = None if input is None else self._wire_input(input)
        return await self._call(protocol.Count(id=self._next_id(), session=session, input=wire), timeout=timeout)  # type: ignore[no-any-return]

    async def abort(self, target: int | str | None = None, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """Stop `target` (a request id), or whatever runs."""
        wp = self._wp
        if wp is None or wp.crashed is not None or wp.process.returncode is not None:
            return
        try:
            await self._call(protocol.Abort(id=self._next_id(), target=target), wp, timeout=timeout)
        except WorkerCrashed:
            pass

    async def reset(self, system_prompt: str | None = None, *, session: str = DEFAULT_SESSION, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """Clear a session's conversation; None keeps the system prompt, "" removes it."""
        await self._call(protocol.Reset(id=self._next_id(), system_prompt=system_prompt, session=session), timeout=timeout)
        mirror = self._mirror(session)
        mirror.history = []
        if system_prompt is not None:
            mirror.system_prompt = system_prompt or None

    async def cleanup(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """Free the model, context and sessions (the worker stays up)."""
        await self._call(protocol.Cleanup(id=self._next_id()), timeout=timeout)
        self.model = None
        self._load_options = None
        self._mirrors = {}

    # -- sessions -------------------------------------------------------------------

    async def sessions(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> SessionList:
        """Every session of the worker, with its size and whether its KV state is cached."""
        return await self._call(protocol.Sessions(id=self._next_id()), timeout=timeout)  # type: ignore[no-any-return]

    async def preload(
        self, input: ChatInput, *, session: str = DEFAULT_SESSION, max_tokens: int = 512, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> Preloaded:
        """Evaluate the prompt of a (possibly unfinished) input ahead of `generate`.

        Call it while the user types: the coming `generate` with the same or a
        longer input then evaluates only what is new. Any later request
        interrupts it (the result then says `complete=False`).
        """
        await self._process()  # an automatic restart first: the conversation is back before we preload
        wire = self._wire_input(input)
        return await self._call(protocol.Preload(id=self._next_id(), session=session, input=wire, max_tokens=max_tokens), timeout=timeout)  # type: ignore[no-any-return]

    async def close_session(self, session: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """Forget a session on the worker and its cached state ("default" is emptied)."""
        await self._call(protocol.CloseSession(id=self._next_id(), session=session), timeout=timeout)
        self._mirrors.pop(session, None)

    async def save_session(self, path: str | os.PathLike[str], *, session: str = DEFAULT_SESSION, timeout: Timeout = USE_CLIENT_DEFAULT) -> Saved:
        """Write a session's history and KV state to `path` (a path on the worker's machine)."""
        return await self._call(protocol.SaveSession(id=self._next_id(), session=session, path=os.fspath(path)), timeout=timeout)  # type: ignore[no-any-return]

    async def restore_session(
        self, path: str | os.PathLike[str], *, session: str = DEFAULT_SESSION, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> SessionInfo:
        """Replace a session with a saved one; raises `SessionFileError` (session unchanged) when it cannot."""
        reply: Restored = await self._call(protocol.RestoreSession(id=self._next_id(), session=session, path=os.fspath(path)), timeout=timeout)
        # The file's conversation is the session's now: mirror it so a restart can restore it.
        history = [{"role": m.role, "content": m.content} for m in reply.history]
        self._mirrors[session] = _Mirror(system_prompt=reply.session.system_prompt, history=history)
        return reply.session

    # -- conversation mirror --------------------------------------------------------

    @staticmethod
    def _wire_input(input: ChatInput) -> str | list[ChatMessage]:
        if isinstance(input, str):
            return input
        return [m if isinstance(m, ChatMessage) else ChatMessage(role=m["role"], content=m["content"]) for m in input]  # type: ignore[arg-type]

    def _after_generation(self, request: protocol.Generate, done: Done) -> None:
        if request.mode != "chat":
            return
        if done.stop_reason == "aborted" and not done.text:
            return  # the worker did not record the turn either
        mirror = self._mirror(request.session)
        if isinstance(request.input, str):
            history = [*mirror.history, {"role": "user", "content": request.input}]
        else:
            messages = [{"role": m.role, "content": m.content} for m in request.input]
            if messages and messages[0]["role"] == "system":
                mirror.system_prompt = messages.pop(0)["content"] or None
            history = messages
        history = history[done.truncated_messages :]
        mirror.history = [*history, {"role": "assistant", "content": done.text}]


class Session:
    """One chat session of a worker: `client.session("notes")`.

    The same calls as the client's, bound to this session's name. Sessions
    share the model; each has its own history and system prompt, and the
    worker keeps the KV state of recently used ones in RAM, so switching
    between them does not evaluate their prompts again.
    """

    def __init__(self, client: AsyncClient, name: str) -> None:
        self.client = client
        self.name = name

    @property
    def history(self) -> list[dict[str, str]]:
        return [dict(m) for m in self.client._mirror(self.name).history]

    async def generate(self, input: ChatInput, **options: Any) -> Generation:
        return await self.client.generate(input, session=self.name, **options)

    async def chat(self, input: ChatInput, *, on_chunk: Callable[[str], None] | None = None, **options: Any) -> Done:
        return await self.client.chat(input, on_chunk=on_chunk, session=self.name, **options)

    async def chat_as(self, input: ChatInput, type: type[T], **options: Any) -> T:
        return await self.client.chat_as(input, type, session=self.name, **options)

    async def count_tokens(self, input: ChatInput | None = None, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> TokenCount:
        return await self.client.count_tokens(input, session=self.name, timeout=timeout)

    async def reset(self, system_prompt: str | None = None, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        await self.client.reset(system_prompt, session=self.name, timeout=timeout)

    async def preload(self, input: ChatInput, *, max_tokens: int = 512, timeout: Timeout = USE_CLIENT_DEFAULT) -> Preloaded:
        return await self.client.preload(input, session=self.name, max_tokens=max_tokens, timeout=timeout)

    async def save(self, path: str | os.PathLike[str], *, timeout: Timeout = USE_CLIENT_DEFAULT) -> Saved:
        return await self.client.save_session(path, session=self.name, timeout=timeout)

    async def restore(self, path: str | os.PathLike[str], *, timeout: Timeout = USE_CLIENT_DEFAULT) -> SessionInfo:
        return await self.client.restore_session(path, session=self.name, timeout=timeout)

    async def close(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        await self.client.close_session(self.name, timeout=timeout)

    async def info(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> SessionInfo:
        listing = await self.client.sessions(timeout=timeout)
        for info in listing.sessions:
            if info.session == self.name:
                return info
        return SessionInfo(session=self.name, messages=0, tokens=0, kv_cached=False, active=False, kv_bytes=0)


__all__ = ["USE_CLIENT_DEFAULT", "AsyncClient", "Generation", "Result", "Session", "Timeout", "default_worker_command", "response_format"]
