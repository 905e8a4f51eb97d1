"""A streaming generation: chunks as they come, the `done` result at the end, abort on the way out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, NamedTuple

import anyio

import protocol
from protocol import Chunk, Done, Error, ToolCall, ToolCallEvent

from ._core import Waiter
from .exceptions import LlamaWorkerError, WorkerTimeout, error_from_frame


class Part(NamedTuple):
    """A piece of a reply: `kind` "text" (the answer) or "reasoning" (a thought)."""

    kind: Literal["text", "reasoning"]
    text: str


class Generation:
    """An in-flight generation: iterate it for text chunks; `.result` at the end.

    Iteration yields the answer only. A reasoning model's thoughts come through
    `parts()` (every piece, with its kind) and `.reasoning`; `end_reasoning()`
    makes the model stop thinking and answer.

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

    def __init__(
        self,
        request: protocol.Generate,
        waiter: Waiter,
        *,
        abort: Callable[[int | str], Awaitable[None]],
        end_reasoning: Callable[[int | str], Awaitable[None]],
        on_done: Callable[[protocol.Generate, Done], None],
        shutdown_timeout: float,
        timeout: float | None = None,
    ) -> None:
        self.request = request
        self._waiter = waiter
        self._send_abort = abort
        self._send_end_reasoning = end_reasoning
        self._on_done = on_done
        self._shutdown_timeout = shutdown_timeout
        self._timeout = timeout
        self._deadline = None if timeout is None else anyio.current_time() + timeout
        self.result: Done | None = None
        self._error: BaseException | None = None
        self._chunks: list[str] = []
        self._thoughts: list[str] = []
        self.tool_calls: list[ToolCall] = []
        """Tool calls received so far (each as its `tool_call` event arrived)."""
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
    def reasoning(self) -> str:
        """Thought text received so far."""
        return "".join(self._thoughts)

    @property
    def finished(self) -> bool:
        """True once the generation ended: with a result, or with an error."""
        return self.result is not None or self._error is not None

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> str:
        while True:
            part = await self._next_part()
            if part.kind == "text":
                return part.text

    async def parts(self) -> AsyncIterator[Part]:
        """Every piece of the reply as it comes, thoughts (`kind` "reasoning") and answer ("text")."""
        while True:
            try:
                yield await self._next_part()
            except StopAsyncIteration:
                return

    async def end_reasoning(self) -> None:
        """Make the model stop thinking and answer; raises `NotReasoning` when it is not thinking."""
        await self._send_end_reasoning(self.id)

    async def _next_part(self) -> Part:
        while True:
            part = await self._next_event()
            if part is not None:
                return part

    async def _next_event(self) -> Part | None:
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

    def _take(self, msg: Any) -> Part | None:
        if isinstance(msg, ToolCallEvent):
            self.tool_calls.append(msg.call)
            return None
        if isinstance(msg, Chunk):
            if msg.reasoning:
                self._thoughts.append(msg.reasoning)
                return Part("reasoning", msg.reasoning)
            self._chunks.append(msg.text)
            return Part("text", msg.text)
        if isinstance(msg, Done):
            self.result = msg
            self._on_done(self.request, msg)
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
            await self._send_abort(self.id)
        return await self.final()

    async def _abort_shielded(self) -> None:
        """Abort, then wait for the worker's terminal reply (or give up after a while)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._shutdown_timeout):
            try:
                if not self.finished:
                    await self._send_abort(self.id)
                async with self._lock:
                    while not self.finished:
                        self._take(await self._waiter.receive.receive())
            except (LlamaWorkerError, StopAsyncIteration):
                pass

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self.finished:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._shutdown_timeout), contextlib.suppress(LlamaWorkerError):
                await self.abort()
