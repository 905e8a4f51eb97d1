"""The async host client: the public API over the request core.

One `AsyncClient` owns one worker at a time, started by its transport (a
child process unless told otherwise). Requests go through the request core
(`_core.py`), so any number of calls can be in flight (`ping` during a
generation, an `abort` from another task). The client adds what a caller of
a model needs: loading, generations, sessions, and a restart that puts the
model and every conversation back after a crash (`_mirror.py`).

Works under asyncio and trio (anyio). `host.sync.Client` is the blocking face
of this same class, not a second implementation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

import anyio
import anyio.abc
import msgspec

import protocol
from protocol import (
    DEFAULT_SESSION,
    ChatMessage,
    Done,
    Error,
    Loaded,
    LogLevel,
    ModelInfo,
    Ok,
    Pong,
    Preloaded,
    Progress,
    Ready,
    Restored,
    Saved,
    SessionInfo,
    SessionList,
    Text,
    TokenCount,
    Tokens,
    ToolCall,
)

from ._core import Connection, RequestCore
from ._mirror import Mirrors
from .exceptions import IncompleteOutput, LlamaWorkerError, WorkerCrashed, WorkerTimeout
from .generation import Generation
from .options import (
    USE_CLIENT_DEFAULT,
    ActOptions,
    ChatInput,
    GenerateOptions,
    LoadOptions,
    Message,
    Timeout,
    reasoning,
    response_format,
    tool_choice,
    wire_input,
    wire_messages,
)
from .session import Session
from .tools import Tool, ToolLike, as_tool, definition
from .transport import ProcessTransport, Transport, default_worker_command

log = logging.getLogger("llama_worker.host")

T = TypeVar("T")


class AsyncClient:
    """Drive one llama-worker process. Use as `async with AsyncClient() as client:`.

    No call waits forever: every request but `generate` and `load` gives up
    after `request_timeout` seconds unless its own `timeout` says otherwise
    (None: no limit); those two take a `timeout` too. A timed-out or
    cancelled call that started work in the worker aborts it first.

    Callbacks (`on_log`, `on_progress`, `on_chunk`) are user code the client
    fences off: an exception in one goes to `on_callback_error(exc, name)`
    (by default: logged) and the client carries on.

    `command`, `env` and `cwd` say how to spawn the worker process; a
    `transport` replaces that whole step (see `host.transport`).
    """

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        transport: Transport | None = None,
        handshake_timeout: float = 60.0,
        load_stall_timeout: float = 120.0,
        shutdown_timeout: float = 5.0,
        request_timeout: float | None = 60.0,
        max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE,
        auto_restart: bool = False,
        log_level: LogLevel | None = None,
        on_log: Callable[[str, str], None] | None = None,
        on_callback_error: Callable[[BaseException, str], None] | None = None,
    ) -> None:
        if max_frame_size < protocol.MIN_FRAME_SIZE:
            raise ValueError(f"max_frame_size must be at least {protocol.MIN_FRAME_SIZE} bytes")
        if transport is not None and (command is not None or env is not None or cwd is not None):
            raise ValueError("give either a transport or command/env/cwd, not both")
        self.transport: Transport = transport or ProcessTransport(command, env=env, cwd=cwd)
        self.handshake_timeout = handshake_timeout
        self.load_stall_timeout = load_stall_timeout
        self.max_frame_size = max_frame_size
        self.auto_restart = auto_restart
        self.log_level = log_level
        self.on_log = on_log
        self.on_callback_error = on_callback_error
        self.ready: Ready | None = None
        self.model: ModelInfo | None = None
        self._core = RequestCore(self._connection, request_timeout=request_timeout, shutdown_timeout=shutdown_timeout)
        self._tg: anyio.abc.TaskGroup | None = None
        self._conn: Connection | None = None
        self._start_lock = anyio.Lock()
        # What we need to rebuild the worker's state after a crash.
        self._load_request: dict[str, Any] | None = None
        self._mirrors = Mirrors()
        self._sessions: dict[str, Session] = {}

    @property
    def request_timeout(self) -> float | None:
        """Seconds a call waits for its reply when it gives no `timeout` (None: no limit)."""
        return self._core.request_timeout

    @request_timeout.setter
    def request_timeout(self, value: float | None) -> None:
        self._core.request_timeout = value

    @property
    def shutdown_timeout(self) -> float:
        """Seconds each shutdown step, and each abort of a withdrawn request, may take."""
        return self._core.shutdown_timeout

    @shutdown_timeout.setter
    def shutdown_timeout(self, value: float) -> None:
        self._core.shutdown_timeout = value

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
                if self._conn is not None and self._conn.streams.returncode is None:
                    await self._conn.kill()
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
        return self._conn.pid if self._conn else None

    @property
    def alive(self) -> bool:
        return self._conn is not None and self._conn.alive

    @property
    def stderr_tail(self) -> str:
        return self._conn.stderr_text() if self._conn else ""

    @property
    def history(self) -> list[dict[str, Any]]:
        """The default session's conversation as this client knows it (restored after a crash)."""
        return self._mirrors.history(DEFAULT_SESSION)

    def session_history(self, session: str) -> list[dict[str, Any]]:
        """A session's conversation as this client knows it (restored after a crash)."""
        return self._mirrors.history(session)

    def session(self, name: str = DEFAULT_SESSION) -> Session:
        """A chat session of this worker: its own history and system prompt, sharing the model."""
        handle = self._sessions.get(name)
        if handle is None:
            handle = self._sessions[name] = Session(self, name)
        return handle

    async def _spawn(self) -> Ready:
        assert self._tg is not None, "use the client as an async context manager"
        streams = await self.transport.start()
        conn = Connection(streams, self.max_frame_size, self._unrouted)
        self._conn = conn
        self._core.frame_limit = protocol.DEFAULT_MAX_FRAME_SIZE
        self._tg.start_soon(conn.drain_stderr)
        self._tg.start_soon(conn.read_frames)
        init = protocol.Init(id=self._core.next_id(), protocol_version=protocol.PROTOCOL_VERSION, log_level=self.log_level, max_frame_size=self.max_frame_size)
        try:
            ready = await self._core.call(init, Ready, conn, timeout=self.handshake_timeout)
        except WorkerTimeout:
            await conn.kill()
            raise WorkerTimeout(f"the worker did not answer init within {self.handshake_timeout} s; stderr: {conn.stderr_text(2000)}") from None
        self.ready = ready
        self._core.frame_limit = ready.max_frame_size or protocol.DEFAULT_MAX_FRAME_SIZE
        return ready

    async def restart(self) -> Ready:
        """Replace the worker with a fresh one, reload its model, restore the conversation.

        Idempotent for concurrent callers: all who call it while one restart
        runs (say, several tasks that saw the same crash) get that restart's
        result; none kills the worker another one has just brought up.
        Raises `WorkerCrashed` (with the crash as `__cause__`) if the new
        worker dies while it is being set up.
        """
        seen = self._conn
        async with self._start_lock:
            if self._conn is not seen and self.alive and self.ready is not None:
                return self.ready  # another caller restarted it while we waited
            old = self._conn
            if old is not None and old.streams.returncode is None:
                await old.kill()
            sessions = self._mirrors.sessions
            ready = await self._spawn()
            conn = self._conn
            assert conn is not None
            try:
                if self._load_request is not None:
                    await self._load(dict(self._load_request), connection=conn)
                    # Put every conversation back at once (nothing is evaluated until
                    # it is used), so that everything the new worker is asked sees it.
                    for name, mirror in sessions.items():
                        reset = protocol.Reset(
                            id=self._core.next_id(), session=name, system_prompt=mirror.system_prompt or "", history=wire_messages(mirror.history)
                        )
                        await self._core.call(reset, Ok, conn)
                    self._mirrors.sessions = sessions
            except WorkerCrashed as exc:
                raise WorkerCrashed(
                    f"the worker crashed while restarting: {exc.message}", exit_code=exc.exit_code, signal=exc.signal, stderr_tail=exc.stderr_tail
                ) from exc
            return ready

    async def close(self) -> None:
        """Shut down in order: cleanup, close stdin, wait, terminate, kill."""
        conn = self._conn
        if conn is None or conn.closing:
            return
        conn.closing = True
        if conn.alive:
            with contextlib.suppress(LlamaWorkerError):
                await self._core.call(protocol.Cleanup(id=self._core.next_id()), Ok, conn, timeout=self.shutdown_timeout)
        await conn.stop(self.shutdown_timeout)

    # -- plumbing ---------------------------------------------------------------

    async def _connection(self) -> Connection:
        """The connection for a new request: restarted first when it crashed and `auto_restart` is on."""
        conn = self._conn
        if conn is not None and conn.crashed is None and not conn.closing:
            return conn
        if conn is not None and conn.closing:
            raise LlamaWorkerError("the client is closed", code="closed")
        if self.auto_restart:
            await self.restart()
            assert self._conn is not None
            return self._conn
        assert conn is not None and conn.crashed is not None
        raise conn.crashed

    def _unrouted(self, msg: Any) -> None:
        if isinstance(msg, protocol.Log):
            if self.on_log:
                self._callback("on_log", self.on_log, msg.level, msg.message)
            else:
                log.log(logging.getLevelName(msg.level.upper()), "worker: %s", msg.message)
        elif isinstance(msg, Error):
            log.warning("worker error without a waiter: %s: %s", msg.code, msg.message)

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

    # -- requests -----------------------------------------------------------------
    #
    # `timeout` (seconds) bounds each call; USE_CLIENT_DEFAULT means the
    # client's `request_timeout`, None means no limit.

    async def ping(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> float:
        """Round trip time in seconds."""
        t0 = time.perf_counter()
        await self._core.call(protocol.Ping(id=self._core.next_id()), Pong, timeout=timeout)
        return time.perf_counter() - t0

    async def load(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        on_progress: Callable[[float], None] | None = None,
        timeout: float | None = None,
        **options: Unpack[LoadOptions],
    ) -> ModelInfo:
        """Load a model (None: the default); `on_progress` gets fractions 0..1.

        Raises `WorkerTimeout` when no progress arrives for `load_stall_timeout`,
        or the whole load takes longer than `timeout`; the load is aborted first.
        """
        path = os.fspath(model_path) if model_path is not None else None
        return await self._load({"model_path": path, **options}, on_progress=on_progress, timeout=timeout)

    async def _load(
        self,
        fields: dict[str, Any],
        *,
        on_progress: Callable[[float], None] | None = None,
        timeout: float | None = None,
        connection: Connection | None = None,
    ) -> ModelInfo:
        request = protocol.Load(id=self._core.next_id(), **fields)

        def progress(event: Progress) -> None:
            if on_progress is not None:
                self._callback("on_progress", on_progress, event.fraction)

        # Every progress event restarts the stall timer.
        reply = await self._core.call(request, Loaded, connection, timeout=timeout, on_event=progress, stall_timeout=self.load_stall_timeout)
        self.model = reply.model
        self._load_request = fields
        self._mirrors.loaded(request.system_prompt)
        return reply.model

    async def generate(self, input: ChatInput, *, timeout: float | None = None, **options: Unpack[GenerateOptions]) -> Generation:
        """Start a generation; iterate the result for chunks (see `Generation`).

        `input` is the next user turn (str) or a whole conversation (list of
        {"role", "content"} messages). Options are the protocol's (see
        `GenerateOptions`). `timeout` bounds the whole generation (it is then
        aborted).
        """
        # Get the worker first: an automatic restart happens here, before anything is sent.
        conn = await self._connection()
        fields: dict[str, Any] = dict(options)
        if "response_format" in fields:
            fields["response_format"] = response_format(fields["response_format"])
        if "reasoning" in fields:
            fields["reasoning"] = reasoning(fields["reasoning"])
        if "tools" in fields:
            fields["tools"] = [definition(as_tool(t)) for t in fields["tools"]]
        if "tool_choice" in fields:
            fields["tool_choice"] = tool_choice(fields["tool_choice"])
        request = protocol.Generate(id=self._core.next_id(), input=wire_input(input), **fields)
        waiter = await self._core.open(request, conn)
        return Generation(
            request,
            waiter,
            abort=self.abort,
            end_reasoning=self.end_reasoning,
            on_done=self._mirrors.generated,
            shutdown_timeout=self.shutdown_timeout,
            timeout=timeout,
        )

    async def chat(
        self,
        input: ChatInput,
        *,
        on_chunk: Callable[[str], None] | None = None,
        on_reasoning: Callable[[str], None] | None = None,
        timeout: float | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Done:
        """One turn, returning the final result (answer chunks go to `on_chunk`, thought chunks to `on_reasoning`)."""
        async with await self.generate(input, timeout=timeout, **options) as stream:
            async for part in stream.parts():
                if part.kind == "text" and on_chunk is not None:
                    self._callback("on_chunk", on_chunk, part.text)
                elif part.kind == "reasoning" and on_reasoning is not None:
                    self._callback("on_reasoning", on_reasoning, part.text)
        assert stream.result is not None
        return stream.result

    async def act(
        self,
        input: ChatInput,
        *,
        tools: Sequence[ToolLike],
        max_rounds: int = 8,
        on_chunk: Callable[[str], None] | None = None,
        on_reasoning: Callable[[str], None] | None = None,
        on_tool_call: Callable[[ToolCall], None] | None = None,
        on_tool_result: Callable[[ToolCall, str], None] | None = None,
        timeout: float | None = None,
        **options: Unpack[ActOptions],
    ) -> Done:
        """A turn that may call tools: generate, run the calls, feed the results back, until an answer.

        `tools` are plain functions (sync or async; their parameters' type hints
        become the JSON Schema), `host.Tool`s, or definitions. The calls of one
        round run concurrently; an exception in one becomes its result
        (`{"error": ...}`) for the model to read. After `max_rounds` rounds of
        calls, a last round forbids calls, so the model answers. Returns the
        final round's result; `on_tool_call` and `on_tool_result` report each
        call and what it returned.
        """
        return await self._act(input, DEFAULT_SESSION, tools, max_rounds, on_chunk, on_reasoning, on_tool_call, on_tool_result, timeout, dict(options))

    async def _act(
        self,
        input: ChatInput,
        session: str,
        tools: Sequence[ToolLike],
        max_rounds: int,
        on_chunk: Callable[[str], None] | None,
        on_reasoning: Callable[[str], None] | None,
        on_tool_call: Callable[[ToolCall], None] | None,
        on_tool_result: Callable[[ToolCall, str], None] | None,
        timeout: float | None,
        options: dict[str, Any],
    ) -> Done:
        runnable = [as_tool(t) for t in tools]
        by_name = {definition(t).name: t for t in runnable}
        current: ChatInput = input
        for round_ in range(max_rounds + 1):
            choice = options.get("tool_choice", "auto") if round_ < max_rounds else "none"
            result = await self.chat(
                current,
                on_chunk=on_chunk,
                on_reasoning=on_reasoning,
                timeout=timeout,
                **{**options, "session": session, "tools": runnable, "tool_choice": choice},
            )
            if not result.tool_calls:
                return result
            outputs = [""] * len(result.tool_calls)
            async with anyio.create_task_group() as group:
                for index, call in enumerate(result.tool_calls):
                    if on_tool_call is not None:
                        self._callback("on_tool_call", on_tool_call, call)
                    group.start_soon(_run_tool, by_name.get(call.name), call, outputs, index)
            results = []
            for call, output in zip(result.tool_calls, outputs, strict=True):
                if on_tool_result is not None:
                    self._callback("on_tool_result", on_tool_result, call, output)
                results.append({"role": "tool", "content": output, "tool_call_id": call.id, "name": call.name})
            current = [*self._mirrors.history(session), *results]
        return result

    async def chat_as(self, input: ChatInput, type: type[T], *, timeout: float | None = None, **options: Unpack[GenerateOptions]) -> T:
        """One turn whose reply is JSON constrained to `type`'s schema, decoded into `type`.

        Raises `IncompleteOutput` (with `.result`) when the reply ended before
        its JSON was complete (raise `max_tokens`), and msgspec's
        `ValidationError` if it breaks a rule the grammar cannot express.
        """
        options["response_format"] = type
        result = await self.chat(input, timeout=timeout, **options)
        if result.incomplete:
            raise IncompleteOutput(f"the reply ended ({result.stop_reason}) before its JSON was complete", result=result)
        return msgspec.json.decode(result.text, type=type)

    async def tokenize(self, text: str, *, special: bool = False, timeout: Timeout = USE_CLIENT_DEFAULT) -> list[int]:
        """The model's token ids for `text` (answered even while a generation runs).

        Raises `ReplyTooLarge` when the ids would not fit one frame
        (`max_frame_size`): tokenize a long text in parts.
        """
        reply = await self._core.call(protocol.Tokenize(id=self._core.next_id(), text=text, special=special), Tokens, timeout=timeout)
        return reply.ids

    async def detokenize(self, ids: Sequence[int], *, special: bool = False, timeout: Timeout = USE_CLIENT_DEFAULT) -> str:
        reply = await self._core.call(protocol.Detokenize(id=self._core.next_id(), ids=list(ids), special=special), Text, timeout=timeout)
        return reply.text

    async def count_tokens(
        self, input: ChatInput | None = None, *, session: str = DEFAULT_SESSION, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> TokenCount:
        """Prompt tokens a `generate` of `input` would evaluate in `session` (None: its conversation so far)."""
        await self._connection()
        wire = None if input is None else wire_input(input)
        return await self._core.call(protocol.Count(id=self._core.next_id(), session=session, input=wire), TokenCount, timeout=timeout)

    async def abort(self, target: int | str | None = None, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """Stop `target` (a request id), or whatever runs."""
        conn = self._conn
        if conn is None or not conn.alive:
            return
        with contextlib.suppress(WorkerCrashed):
            await self._core.call(protocol.Abort(id=self._core.next_id(), target=target), Ok, conn, timeout=timeout)

    async def end_reasoning(self, target: int | str | None = None, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """Make generation `target` (None: whatever runs) stop thinking and answer.

        Raises `NotReasoning` when it is not thinking (answering already, never thought, finished).
        """
        await self._core.call(protocol.EndReasoning(id=self._core.next_id(), target=target), Ok, timeout=timeout)

    async def reset(
        self,
        system_prompt: str | None = None,
        *,
        session: str = DEFAULT_SESSION,
        history: Sequence[Message] | Sequence[ChatMessage] | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> None:
        """Clear a session's conversation, or replace it with `history`; system prompt None keeps it, "" removes it."""
        wire = None if history is None else wire_messages(history)
        await self._core.call(protocol.Reset(id=self._core.next_id(), system_prompt=system_prompt, session=session, history=wire), Ok, timeout=timeout)
        self._mirrors.reset(session, system_prompt, wire)

    async def cleanup(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """Free the model, context and sessions (the worker stays up)."""
        await self._core.call(protocol.Cleanup(id=self._core.next_id()), Ok, timeout=timeout)
        self.model = None
        self._load_request = None
        self._mirrors.loaded(None)

    # -- sessions -------------------------------------------------------------------

    async def sessions(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> SessionList:
        """Every session of the worker, with its size and whether its KV state is cached."""
        return await self._core.call(protocol.Sessions(id=self._core.next_id()), SessionList, timeout=timeout)

    async def preload(
        self, input: ChatInput, *, session: str = DEFAULT_SESSION, max_tokens: int = 512, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> Preloaded:
        """Evaluate the prompt of a (possibly unfinished) input ahead of `generate`.

        Call it while the user types: the coming `generate` with the same or a
        longer input then evaluates only what is new. Any later request
        interrupts it (the result then says `complete=False`).
        """
        await self._connection()  # an automatic restart first: the conversation is back before we preload
        request = protocol.Preload(id=self._core.next_id(), session=session, input=wire_input(input), max_tokens=max_tokens)
        return await self._core.call(request, Preloaded, timeout=timeout)

    async def close_session(self, session: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """Forget a session on the worker and its cached state ("default" is emptied)."""
        await self._core.call(protocol.CloseSession(id=self._core.next_id(), session=session), Ok, timeout=timeout)
        self._mirrors.closed(session)

    async def save_session(self, path: str | os.PathLike[str], *, session: str = DEFAULT_SESSION, timeout: Timeout = USE_CLIENT_DEFAULT) -> Saved:
        """Write a session's history and KV state to `path` (a path on the worker's machine)."""
        return await self._core.call(protocol.SaveSession(id=self._core.next_id(), session=session, path=os.fspath(path)), Saved, timeout=timeout)

    async def restore_session(
        self, path: str | os.PathLike[str], *, session: str = DEFAULT_SESSION, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> SessionInfo:
        """Replace a session with a saved one; raises `SessionFileError` (session unchanged) when it cannot."""
        request = protocol.RestoreSession(id=self._core.next_id(), session=session, path=os.fspath(path))
        reply = await self._core.call(request, Restored, timeout=timeout)
        self._mirrors.restored(session, reply)  # so that a restart can restore it
        return reply.session


async def _run_tool(tool: Tool | protocol.Tool | None, call: ToolCall, outputs: list[str], index: int) -> None:
    """Run one call into `outputs[index]` (a tool without a function answers with an error)."""
    if isinstance(tool, Tool):
        outputs[index] = await tool.call(call.arguments)
    else:
        outputs[index] = json.dumps({"error": f"no function runs the tool {call.name!r}"})


__all__ = ["AsyncClient", "default_worker_command"]
