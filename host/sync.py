"""The blocking face of `AsyncClient`, for scripts and notebooks.

It runs the async client on an event loop in a background thread (an anyio
blocking portal) and forwards each call, so there is one implementation of
the protocol, not two.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from protocol import DEFAULT_SESSION, Done, ModelInfo, Preloaded, Saved, SessionInfo, SessionList, TokenCount

from .client import USE_CLIENT_DEFAULT, AsyncClient, ChatInput, Generation, Session, Timeout

T = TypeVar("T")


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

    def __iter__(self) -> Iterator[str]:
        return self

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
    """Blocking client: `with Client() as client: client.load(); client.chat("Hi")`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        try:
            self._async = AsyncClient(*args, **kwargs)
            self._client_cm = self._portal.wrap_async_context_manager(self._async)
            self._client_cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self._closed = False

    @property
    def async_client(self) -> AsyncClient:
        return self._async

    def __getattr__(self, name: str) -> Any:
        # Read-only state (ready, model, pid, alive, history, stderr_tail).
        return getattr(self._async, name)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._portal.call(functools.partial(fn, *args, **kwargs))

    def ping(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> float:
        return self._call(self._async.ping, timeout=timeout)

    def load(
        self, model_path: Any = None, *, on_progress: Callable[[float], None] | None = None, timeout: float | None = None, **options: Any
    ) -> ModelInfo:
        return self._call(self._async.load, model_path, on_progress=on_progress, timeout=timeout, **options)

    def generate(self, input: ChatInput, **options: Any) -> SyncGeneration:
        return SyncGeneration(self._portal, self._call(self._async.generate, input, **options))

    def chat(self, input: ChatInput, *, on_chunk: Callable[[str], None] | None = None, **options: Any) -> Done:
        with self.generate(input, **options) as stream:
            for text in stream:
                if on_chunk is not None:
                    self._async._callback("on_chunk", on_chunk, text)
        assert stream.result is not None
        return stream.result

    def chat_as(self, input: ChatInput, type: type[T], **options: Any) -> T:
        return self._call(self._async.chat_as, input, type, **options)

    def tokenize(self, text: str, *, special: bool = False, timeout: Timeout = USE_CLIENT_DEFAULT) -> list[int]:
        return self._call(self._async.tokenize, text, special=special, timeout=timeout)

    def detokenize(self, ids: Sequence[int], *, special: bool = False, timeout: Timeout = USE_CLIENT_DEFAULT) -> str:
        return self._call(self._async.detokenize, ids, special=special, timeout=timeout)

    def count_tokens(self, input: ChatInput | None = None, *, session: str = DEFAULT_SESSION, timeout: Timeout = USE_CLIENT_DEFAULT) -> TokenCount:
        return self._call(self._async.count_tokens, input, session=session, timeout=timeout)

    def abort(self, target: int | str | None = None, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        self._call(self._async.abort, target, timeout=timeout)

    def reset(self, system_prompt: str | None = None, *, session: str = DEFAULT_SESSION, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        self._call(self._async.reset, system_prompt, session=session, timeout=timeout)

    def session(self, name: str = DEFAULT_SESSION) -> SyncSession:
        return SyncSession(self, self._async.session(name))

    def sessions(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> SessionList:
        return self._call(self._async.sessions, timeout=timeout)

    def preload(
        self, input: ChatInput, *, session: str = DEFAULT_SESSION, max_tokens: int = 512, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> Preloaded:
        return self._call(self._async.preload, input, session=session, max_tokens=max_tokens, timeout=timeout)

    def close_session(self, session: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        self._call(self._async.close_session, session, timeout=timeout)

    def save_session(self, path: Any, *, session: str = DEFAULT_SESSION, timeout: Timeout = USE_CLIENT_DEFAULT) -> Saved:
        return self._call(self._async.save_session, path, session=session, timeout=timeout)

    def restore_session(self, path: Any, *, session: str = DEFAULT_SESSION, timeout: Timeout = USE_CLIENT_DEFAULT) -> SessionInfo:
        return self._call(self._async.restore_session, path, session=session, timeout=timeout)

    def cleanup(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        self._call(self._async.cleanup, timeout=timeout)

    def restart(self) -> Any:
        return self._call(self._async.restart)

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
    def history(self) -> list[dict[str, str]]:
        return self._session.history

    def generate(self, input: ChatInput, **options: Any) -> SyncGeneration:
        return self._client.generate(input, session=self.name, **options)

    def chat(self, input: ChatInput, *, on_chunk: Callable[[str], None] | None = None, **options: Any) -> Done:
        return self._client.chat(input, on_chunk=on_chunk, session=self.name, **options)

    def chat_as(self, input: ChatInput, type: type[T], **options: Any) -> T:
        return self._client.chat_as(input, type, session=self.name, **options)

    def count_tokens(self, input: ChatInput | None = None) -> TokenCount:
        return self._client.count_tokens(input, session=self.name)

    def reset(self, system_prompt: str | None = None) -> None:
        self._client.reset(system_prompt, session=self.name)

    def preload(self, input: ChatInput, *, max_tokens: int = 512) -> Preloaded:
        return self._client.preload(input, session=self.name, max_tokens=max_tokens)

    def save(self, path: Any) -> Saved:
        return self._client.save_session(path, session=self.name)

    def restore(self, path: Any) -> SessionInfo:
        return self._client.restore_session(path, session=self.name)

    def close(self) -> None:
        self._client.close_session(self.name)

    def info(self) -> SessionInfo:
        return self._client._call(self._session.info)
