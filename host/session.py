"""A chat session of a worker, as a handle: the client's calls bound to one session name."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from protocol import ChatMessage, Done, Preloaded, Saved, SessionInfo, TokenCount, ToolCall

from .generation import Generation
from .options import USE_CLIENT_DEFAULT, ActOptions, ChatInput, Message, SessionGenerateOptions, Timeout
from .tools import ToolLike

if TYPE_CHECKING:
    from .client import AsyncClient

T = TypeVar("T")


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
    def history(self) -> list[dict[str, Any]]:
        """This session's conversation as the client knows it (restored after a crash)."""
        return self.client.session_history(self.name)

    async def generate(self, input: ChatInput, *, timeout: float | None = None, **options: Unpack[SessionGenerateOptions]) -> Generation:
        return await self.client.generate(input, timeout=timeout, session=self.name, **options)

    async def chat(
        self,
        input: ChatInput,
        *,
        on_chunk: Callable[[str], None] | None = None,
        on_reasoning: Callable[[str], None] | None = None,
        timeout: float | None = None,
        **options: Unpack[SessionGenerateOptions],
    ) -> Done:
        return await self.client.chat(input, on_chunk=on_chunk, on_reasoning=on_reasoning, timeout=timeout, session=self.name, **options)

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
        """`AsyncClient.act` in this session."""
        return await self.client._act(input, self.name, tools, max_rounds, on_chunk, on_reasoning, on_tool_call, on_tool_result, timeout, dict(options))

    async def chat_as(self, input: ChatInput, type: type[T], *, timeout: float | None = None, **options: Unpack[SessionGenerateOptions]) -> T:
        return await self.client.chat_as(input, type, timeout=timeout, session=self.name, **options)

    async def count_tokens(self, input: ChatInput | None = None, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> TokenCount:
        return await self.client.count_tokens(input, session=self.name, timeout=timeout)

    async def reset(
        self,
        system_prompt: str | None = None,
        *,
        history: Sequence[Message] | Sequence[ChatMessage] | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> None:
        await self.client.reset(system_prompt, session=self.name, history=history, timeout=timeout)

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
