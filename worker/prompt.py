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


def as_message(m: protocol.ChatMessage) -> Message:
    """A protocol message as the session holds it (thoughts only where there are some)."""
    message = {"role": m.role, "content": m.content}
    if m.reasoning:
        message["reasoning"] = m.reasoning
    return message


def as_messages(user_input: str | list[protocol.ChatMessage]) -> str | list[Message]:
    """A `generate`/`preload`/`count` input as the session works with it."""
    if isinstance(user_input, str):
        return user_input
    return [as_message(m) for m in user_input]


#: Stands in for a prefill's content while rendering, to find where the content goes.
_PREFILL_MARK = "\x00PREFILL\x00"


@dataclass(frozen=True)
class Rendering:
    """How a turn is rendered: template variables, and text after the generation prompt."""

    variables: Mapping[str, Any] = field(default_factory=dict)
    suffix: str = ""


def render_text(loaded: LoadedModel, messages: list[Message], prefill: str | None = None, rendering: Rendering = Rendering(), add_generation_prompt: bool = True) -> str:
    """The prompt text of `messages`; with a `prefill`, cut where that assistant message's content begins, then the prefill."""
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
