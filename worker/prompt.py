"""From a request's input to prompt tokens: the turn, the template, the tokenizer.

A chat request's input becomes a `Turn` of the session (the next user
message, or a whole conversation), the chat format renders it, and the
tokenizer turns the text into tokens, trimming the oldest exchanges when the
context is too small. Generation, preload, count and save all render through
here, so they agree on every token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import protocol

from .chat_format import ChatFormatError
from .errors import WorkerError
from .loading import LoadedModel
from .session import ChatSession, Message, Turn, fit_to_context
from .tool_calls import template_message


def as_message(m: protocol.ChatMessage) -> Message:
    """A protocol message as the session holds it (thoughts, calls and call ids only where there are some)."""
    message: Message = {"role": m.role, "content": m.content}
    if m.reasoning:
        message["reasoning"] = m.reasoning
    if m.tool_calls:
        message["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in m.tool_calls]
    if m.tool_call_id is not None:
        message["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        message["name"] = m.name
    return message


def as_chat_message(m: Message) -> protocol.ChatMessage:
    """A session message as the protocol carries it."""
    calls = m.get("tool_calls")
    return protocol.ChatMessage(
        role=m["role"],
        content=m["content"],
        reasoning=m.get("reasoning"),
        tool_calls=[protocol.ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"]) for c in calls] if calls else None,
        tool_call_id=m.get("tool_call_id"),
        name=m.get("name"),
    )


def as_messages(user_input: str | list[protocol.ChatMessage]) -> str | list[Message]:
    """A `generate`/`preload`/`count` input as the session works with it."""
    if isinstance(user_input, str):
        return user_input
    return [as_message(m) for m in user_input]


#: Stands in for a prefill's content while rendering, to find where the content goes.
_PREFILL_MARK = "\x00PREFILL\x00"


@dataclass(frozen=True)
class Rendering:
    """How a turn is rendered: template variables, text after the generation prompt, the tools' prompt."""

    variables: Mapping[str, Any] = field(default_factory=dict)
    suffix: str = ""
    system_addition: str = ""
    """The generic tool prompt, for a template that does not render tools (joins the system prompt)."""


def _for_template(loaded: LoadedModel, messages: list[Message], rendering: Rendering) -> list[Message]:
    native = loaded.tool_family.native
    out = [template_message(m, native) if m.get("tool_calls") or m["role"] == "tool" else m for m in messages]
    if rendering.system_addition:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{rendering.system_addition}"}
        else:
            out.insert(0, {"role": "system", "content": rendering.system_addition})
    return out


def render_text(loaded: LoadedModel, messages: list[Message], prefill: str | None = None, rendering: Rendering = Rendering(), add_generation_prompt: bool = True) -> str:
    """The prompt text of `messages`; with a `prefill`, cut where that assistant message's content begins, then the prefill."""
    messages = _for_template(loaded, messages, rendering)
    try:
        if prefill is None:
            return loaded.formatter.render(messages, add_generation_prompt, rendering.variables) + rendering.suffix
        text = loaded.formatter.render([*messages, {"role": "assistant", "content": _PREFILL_MARK}], False, rendering.variables)
    except ChatFormatError as exc:
        raise WorkerError.invalid(f"the chat template refused these messages: {exc}") from None
    cut = text.rfind(_PREFILL_MARK)
    if cut == -1:
        raise WorkerError.invalid("input: this model's chat template cannot continue an assistant message (it does not show the message's text)")
    return text[:cut] + prefill


def prefill_tail(loaded: LoadedModel, prefill: str, rendering: Rendering) -> str:
    """What comes between the last user message and the model's continuation, for finding the thought's state."""
    probe: list[Message] = [{"role": "user", "content": "PROBE-USER"}]
    return render_text(loaded, probe, prefill, rendering).rsplit("PROBE-USER", 1)[-1]


def render_tokens(
    loaded: LoadedModel, messages: list[Message], add_generation_prompt: bool = True, prefill: str | None = None, rendering: Rendering = Rendering()
) -> list[int]:
    """The tokens of `messages` rendered by the model's chat format (with BOS where the model wants one)."""
    text = render_text(loaded, messages, prefill, rendering, add_generation_prompt)
    model = loaded.model
    tokens = model.tokenize(text, add_special=False, parse_special=True)
    if model.add_bos and model.bos >= 0 and (not tokens or tokens[0] != model.bos):
        tokens.insert(0, model.bos)
    return tokens


def turn_prompt(
    loaded: LoadedModel, session: ChatSession, user_input: str | list[protocol.ChatMessage], max_tokens: int, rendering: Rendering = Rendering()
) -> tuple[Turn, list[int]]:
    """The turn a generate (or preload) of `user_input` renders, and its prompt tokens, fitted to the context."""
    turn = session.next_turn(as_messages(user_input))
    return turn, fit_turn(loaded, turn, max_tokens, rendering)


def fit_turn(loaded: LoadedModel, turn: Turn, max_tokens: int, rendering: Rendering = Rendering()) -> list[int]:
    """The prompt tokens of `turn`, its oldest exchanges dropped until it fits the context with `max_tokens`."""
    return fit_to_context(
        turn, lambda messages: render_tokens(loaded, messages, prefill=turn.prefill, rendering=rendering), loaded.context.n_ctx, max_tokens
    )


def conversation_tokens(loaded: LoadedModel, turn: Turn) -> list[int]:
    """The tokens of a conversation as it stands (no generation prompt): what a saved session holds."""
    messages = turn.messages()
    return render_tokens(loaded, messages, add_generation_prompt=False) if messages else []
