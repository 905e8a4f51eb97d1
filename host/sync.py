"""The blocking face of `AsyncClient`, for scripts and notebooks.

It runs the async client on an event loop in a background thread (an anyio
blocking portal) and forwards each call, so there is one implementation of
the protocol, not two.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

from anyio.from_thread import BlockingPortal, start_blocking_portal

import protocol
from protocol import DEFAULT_SESSION, ChatMessage, Done, LogLevel, ModelInfo, Preloaded, Ready, Saved, SessionInfo, SessionList, TokenCount, ToolCall

from .client import AsyncClient
from .generation import Generation, Part
from .options import USE_CLIENT_DEFAULT, ActOptions, ChatInput, GenerateOptions, LoadOptions, Message, SessionGenerateOptions, Timeout
from .session import Session
from .tools import ToolLike
from .transport import Transport

T = TypeVar("T")
R = TypeVar("R")


class SyncGeneration:
    """Iterate for text chunks; `.result` holds the final result at the end.

    Leaving the loop early (break, an exception, Ctrl-C) aborts the
    generation on the worker when used as a context manager or closed.
    """

    def __init__(self, portal: BlockingPortal, generation: Generation) -> None:
        self._portal = portal
        self._generation = generation

    @property
    def result(self) -> Done | None:
        return self._generation.result

    @property
    def text(self) -> str:
        return self._generation.text

    @property
    def reasoning(self) -> str:
        """Thought text received so far."""
        return self._generation.reasoning

    @property
    def tool_calls(self) -> list[ToolCall]:
        """Tool calls received so far."""
        return self._generation.tool_calls

    def __iter__(self) -> Iterator[str]:
        return self

    def parts(self) -> Iterator[Part]:
        """Every piece of the reply as it comes, thoughts (`kind` "reasoning") and answer ("text")."""
        while True:
            try:
                yield self._portal.call(self._generation._next_part)
            except StopAsyncIteration:
                return
            except KeyboardInterrupt:
                self.abort()
                raise

    def end_reasoning(self) -> None:
        """Make the model stop thinking and answer; raises `NotReasoning` when it is not thinking."""
        self._portal.call(self._generation.end_reasoning)

    def __next__(self) -> str:
        try:
            return self._portal.call(self._generation.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None
        except KeyboardInterrupt:
            self.abort()
            raise

    def abort(self) -> Done:
        """Stop the generation and return its partial result."""
        return self._portal.call(self._generation.abort)

    def final(self) -> Done:
        return self._portal.call(self._generation.final)

    def close(self) -> None:
        if not self._generation.finished:
            self.abort()

    def __enter__(self) -> SyncGeneration:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Client:
    """Blocking client: `with Client() as client: client.load(); client.chat("Hi")`.

    Takes `AsyncClient`'s arguments; every method is `AsyncClient`'s, run to
    completion on the portal's event loop.
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
        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        try:
            self._async = AsyncClient(
                command,
                env=env,
                cwd=cwd,
                transport=transport,
                handshake_timeout=handshake_timeout,
                load_stall_timeout=load_stall_timeout,
                shutdown_timeout=shutdown_timeout,
                request_timeout=request_timeout,
                max_frame_size=max_frame_size,
                auto_restart=auto_restart,
                log_level=log_level,
                on_log=on_log,
                on_callback_error=on_callback_error,
            )
            self._client_cm = self._portal.wrap_async_context_manager(self._async)
            self._client_cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self._closed = False

    @property
    def async_client(self) -> AsyncClient:
        return self._async

    # -- state (read on the caller's thread: plain attributes of the async client) --

    @property
    def ready(self) -> Ready | None:
        return self._async.ready

    @property
    def model(self) -> ModelInfo | None:
        return self._async.model

    @property
    def pid(self) -> int | None:
        return self._async.pid

    @property
    def alive(self) -> bool:
        return self._async.alive

    @property
    def stderr_tail(self) -> str:
        return self._async.stderr_tail

    @property
    def history(self) -> list[dict[str, Any]]:
        return self._async.history

    def _run(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        return self._portal.call(functools.partial(fn, *args, **kwargs))

    # -- requests ---------------------------------------------------------------

    def ping(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> float:
        return self._run(self._async.ping, timeout=timeout)

    def load(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        on_progress: Callable[[float], None] | None = None,
        timeout: float | None = None,
        **options: Unpack[LoadOptions],
    ) -> ModelInfo:
        return self._run(self._async.load, model_path, on_progress=on_progress, timeout=timeout, **options)

    def generate(self, input: ChatInput, *, timeout: float | None = None, **options: Unpack[GenerateOptions]) -> SyncGeneration:
        return SyncGeneration(self._portal, self._run(self._async.generate, input, timeout=timeout, **options))

    def chat(
        self,
        input: ChatInput,
        *,
        on_chunk: Callable[[str], None] | None = None,
        on_reasoning: Callable[[str], None] | None = None,
        timeout: float | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Done:
        with self.generate(input, timeout=timeout, **options) as stream:
            for part in stream.parts():
                if part.kind == "text" and on_chunk is not None:
                    self._async._callback("on_chunk", on_chunk, part.text)
                elif part.kind == "reasoning" and on_reasoning is not None:
                    self._async._callback("on_reasoning", on_reasoning, part.text)
        assert stream.result is not None
        return stream.result

    def act(
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
        """`AsyncClient.act`: sync tools run on worker threads, async ones on the client's event loop."""
        return self._run(
            self._async.act,
            input,
            tools=tools,
            max_rounds=max_rounds,
            on_chunk=on_chunk,
            on_reasoning=on_reasoning,
            on_tool_call=on_tool_call,
            on_tool_result=on_tool_result,
            timeout=timeout,
            **options,
        )

    def chat_as(self, input: ChatInput, type: type[T], *, timeout: float | None = None, **options: Unpack[GenerateOptions]) -> T:
        decoded: T = self._run(self._async.chat_as, input, type, timeout=timeout, **options)
        return decoded

    def tokenize(self, text: str, *, special: bool = False, timeout: Timeout = USE_CLIENT_DEFAULT) -> list[int]:
        return self._run(self._async.tokenize, text, special=special, timeout=timeout)

    def detokenize(self, ids: Sequence[int], *, special: bool = False, timeout: Timeout = USE_CLIENT_DEFAULT) -> str:
        return self._run(self._async.detokenize, ids, special=special, timeout=timeout)

    def count_tokens(self, input: ChatInput | None = None, *, session: str = DEFAULT_SESSION, timeout: Timeout = USE_CLIENT_DEFAULT) -> TokenCount:
        return self._run(self._async.count_tokens, input, session=session, timeout=timeout)

    def abort(self, target: int | str | None = None, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        self._run(self._async.abort, target, timeout=timeout)

    def end_reasoning(self, target: int | str | None = None, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        self._run(self._async.end_reasoning, target, timeout=timeout)

    def reset(
        self,
        system_prompt: str | None = None,
        *,
        session: str = DEFAULT_SESSION,
        history: Sequence[Message] | Sequence[ChatMessage] | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> None:
        self._run(self._async.reset, system_prompt, session=session, history=history, timeout=timeout)

    def session(self, name: str = DEFAULT_SESSION) -> SyncSession:
        return SyncSession(self, self._async.session(name))

    def session_history(self, session: str) -> list[dict[str, Any]]:
        return self._async.session_history(session)

    def sessions(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> SessionList:
        return self._run(self._async.sessions, timeout=timeout)

    def preload(
        self, input: ChatInput, *, session: str = DEFAULT_SESSION, max_tokens: int = 512, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> Preloaded:
        return self._run(self._async.preload, input, session=session, max_tokens=max_tokens, timeout=timeout)

    def close_session(self, session: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        self._run(self._async.close_session, session, timeout=timeout)

    def save_session(self, path: str | os.PathLike[str], *, session: str = DEFAULT_SESSION, timeout: Timeout = USE_CLIENT_DEFAULT) -> Saved:
        return self._run(self._async.save_session, path, session=session, timeout=timeout)

    def restore_session(
        self, path: str | os.PathLike[str], *, session: str = DEFAULT_SESSION, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> SessionInfo:
        return self._run(self._async.restore_session, path, session=session, timeout=timeout)

    def cleanup(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        self._run(self._async.cleanup, timeout=timeout)

    def restart(self) -> Ready:
        return self._run(self._async.restart)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._client_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class SyncSession:
    """The blocking face of `host.Session`: `client.session("notes").chat("Hi")`."""

    def __init__(self, client: Client, session: Session) -> None:
        self._client = client
        self._session = session
        self.name = session.name

    @property
    def history(self) -> list[dict[str, Any]]:
        return self._session.history

    def generate(self, input: ChatInput, *, timeout: float | None = None, **options: Unpack[SessionGenerateOptions]) -> SyncGeneration:
        return self._client.generate(input, timeout=timeout, session=self.name, **options)

    def chat(
        self,
        input: ChatInput,
        *,
        on_chunk: Callable[[str], None] | None = None,
        on_reasoning: Callable[[str], None] | None = None,
        timeout: float | None = None,
        **options: Unpack[SessionGenerateOptions],
    ) -> Done:
        return self._client.chat(input, on_chunk=on_chunk, on_reasoning=on_reasoning, timeout=timeout, session=self.name, **options)

    def act(
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
        return self._client._run(
            self._session.act,
            input,
            tools=tools,
            max_rounds=max_rounds,
            on_chunk=on_chunk,
            on_reasoning=on_reasoning,
            on_tool_call=on_tool_call,
            on_tool_result=on_tool_result,
            timeout=timeout,
            **options,
        )

    def chat_as(self, input: ChatInput, type: type[T], *, timeout: float | None = None, **options: Unpack[SessionGenerateOptions]) -> T:
        return self._client.chat_as(input, type, timeout=timeout, session=self.name, **options)

    def count_tokens(self, input: ChatInput | None = None, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> TokenCount:
        return self._client.count_tokens(input, session=self.name, timeout=timeout)

    def reset(
        self,
        system_prompt: str | None = None,
        *,
        history: Sequence[Message] | Sequence[ChatMessage] | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> None:
        self._client.reset(system_prompt, session=self.name, history=history, timeout=timeout)

    def preload(self, input: ChatInput, *, max_tokens: int = 512, timeout: Timeout = USE_CLIENT_DEFAULT) -> Preloaded:
        return self._client.preload(input, session=self.name, max_tokens=max_tokens, timeout=timeout)

    def save(self, path: str | os.PathLike[str], *, timeout: Timeout = USE_CLIENT_DEFAULT) -> Saved:
        return self._client.save_session(path, session=self.name, timeout=timeout)

    def restore(self, path: str | os.PathLike[str], *, timeout: Timeout = USE_CLIENT_DEFAULT) -> SessionInfo:
        return self._client.restore_session(path, session=self.name, timeout=timeout)

    def close(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        self._client.close_session(self.name, timeout=timeout)

    def info(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> SessionInfo:
        return self._client._run(self._session.info, timeout=timeout)
