"""The host's option types: what `load` and `generate` accept, spelt out for editors and type checkers.

The names and meanings are the protocol's (`protocol.Load`, `protocol.Generate`);
a test checks that every option field of the protocol's requests is reachable
from the host API under the same name.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, TypedDict

import msgspec

from protocol import ChatMessage, NamedToolChoice, Reasoning, ResponseFormat, ToolCall

Message = Mapping[str, Any]
"""{"role", "content"}, and where present "reasoning", "tool_calls", "tool_call_id", "name"."""
#: The next user turn (a string), or a whole conversation.
ChatInput = str | Sequence[Message] | Sequence[ChatMessage]


class _UseClientDefault(enum.Enum):
    TOKEN = "USE_CLIENT_DEFAULT"


#: A call's `timeout` when not given: the client's `request_timeout` (as httpx does).
USE_CLIENT_DEFAULT: Final = _UseClientDefault.TOKEN
#: Seconds; None: no limit; USE_CLIENT_DEFAULT: the client's `request_timeout`.
Timeout = float | None | _UseClientDefault

class ReasoningOptions(TypedDict, total=False):
    """`protocol.Reasoning` as a dict: how a reasoning model thinks (ignored by others)."""

    enabled: bool | None
    budget_tokens: int | None
    effort: Literal["low", "medium", "high"] | None
    keep_in_history: bool


#: What `response_format=` accepts (see `response_format()`).
ResponseFormatLike = ResponseFormat | Literal["json"] | Mapping[str, Any] | type | Any


class LoadOptions(TypedDict, total=False):
    """`protocol.Load`'s options; omitted ones take the worker's defaults."""

    n_ctx: int
    n_threads: int
    n_gpu_layers: int
    seed: int
    chat_format: str
    system_prompt: str
    use_extra_bufts: bool
    n_batch: int
    flash_attn: bool
    session_cache_bytes: int


class ActOptions(TypedDict, total=False):
    """`protocol.Generate`'s options other than the session and the tools (`act` takes those apart)."""

    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int
    mode: Literal["chat", "completion"]
    response_format: ResponseFormatLike
    reasoning: ReasoningOptions | Reasoning
    tool_choice: Literal["auto", "none", "required"] | Mapping[str, str]
    parallel_tool_calls: bool


class SessionGenerateOptions(ActOptions, total=False):
    """`protocol.Generate`'s options other than the session (a `Session` supplies its own)."""

    tools: Sequence[Any]
    """Functions (their schema from their type hints), `host.Tool`s or tool definitions (`protocol.Tool` or dicts)."""


class GenerateOptions(SessionGenerateOptions, total=False):
    """`protocol.Generate`'s options."""

    session: str


def response_format(value: ResponseFormatLike) -> ResponseFormat | None:
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


def reasoning(value: ReasoningOptions | Reasoning | Mapping[str, Any] | None) -> Reasoning | None:
    """`generate(reasoning=...)` as the wire's `Reasoning` (validated here: a typo is a clear error at once)."""
    if value is None or isinstance(value, Reasoning):
        return value
    unknown = set(value) - set(Reasoning.__struct_fields__)
    if unknown:
        raise TypeError(f"reasoning: unknown option(s) {sorted(unknown)}; known: {list(Reasoning.__struct_fields__)}")
    return msgspec.convert(dict(value), Reasoning)


def wire_input(input: ChatInput) -> str | list[ChatMessage]:
    """A `ChatInput` as the protocol's `input` (a string, or `ChatMessage`s)."""
    return input if isinstance(input, str) else wire_messages(input)


def wire_messages(messages: Sequence[Message] | Sequence[ChatMessage]) -> list[ChatMessage]:
    """Messages as the protocol's `ChatMessage`s."""
    # Not validated here: a bad role is the worker's `invalid_request`, like any other bad field.
    return [m if isinstance(m, ChatMessage) else _chat_message(m) for m in messages]


def _chat_message(m: Message) -> ChatMessage:
    calls = m.get("tool_calls")
    return ChatMessage(
        role=m["role"],
        content=m["content"],
        reasoning=m.get("reasoning"),
        tool_calls=[c if isinstance(c, ToolCall) else msgspec.convert(dict(c), ToolCall) for c in calls] if calls else None,
        tool_call_id=m.get("tool_call_id"),
        name=m.get("name"),
    )


def tool_choice(value: Literal["auto", "none", "required"] | Mapping[str, str] | NamedToolChoice | None) -> str | NamedToolChoice | None:
    """`tool_choice=` as the wire has it: a string, or {"name": ...}."""
    if isinstance(value, Mapping):
        return NamedToolChoice(name=value["name"])
    return value
