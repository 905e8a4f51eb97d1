"""The chat session: a system prompt and the turns so far.

Like node-llama-cpp's LlamaChatSession, a string input is the next user turn
and the reply joins the history. The session holds text, not tokens: the
prompt is rendered from it each turn and the KV cache's prefix reuse makes
that cheap, which keeps the session correct across templates, model reloads
and history replacement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import WorkerError
from .tool_calls import check_tool_messages

Message = dict[str, Any]
"""role, content; and where present reasoning, tool_calls (id, name, arguments), tool_call_id, name."""


@dataclass
class Turn:
    """What a generate call will commit to the session once it has a reply."""

    system_prompt: str | None
    history: list[Message]
    truncated: int = 0
    prefill: str | None = None
    """The start of the reply, given as a last assistant message: the model continues it."""

    def messages(self) -> list[Message]:
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return head + self.history


@dataclass
class ChatSession:
    system_prompt: str | None = None
    history: list[Message] = field(default_factory=list)

    def reset(self, system_prompt: str | None = None) -> None:
        """Clear the history; None keeps the system prompt, "" removes it."""
        self.history = []
        if system_prompt is not None:
            self.system_prompt = system_prompt or None

    def next_turn(self, user_input: str | Sequence[Message]) -> Turn:
        """The conversation a generate call renders, without changing the session."""
        if isinstance(user_input, str):
            return Turn(self.system_prompt, [*self.history, {"role": "user", "content": user_input}])
        messages = [dict(m) for m in user_input]
        if not messages:
            raise WorkerError.invalid("input: the message list is empty")
        system = self.system_prompt
        if messages[0]["role"] == "system":
            system = messages.pop(0)["content"] or None
        for i, m in enumerate(messages):
            if m["role"] == "system":
                raise WorkerError.invalid(f"input[{i}]: a system message may only come first")
        prefill = None
        if messages and messages[-1]["role"] == "assistant" and not messages[-1].get("tool_calls"):
            prefill = messages.pop()["content"]
        if not messages or messages[-1]["role"] not in ("user", "tool"):
            raise WorkerError.invalid(
                "input: the last message must have role 'user' or 'tool' (or 'assistant' after one of those, to continue it)"
            )
        check_tool_messages(messages)
        return Turn(system, messages, prefill=prefill)

    def commit(self, turn: Turn, reply: str, reasoning: str | None = None, tool_calls: list[dict[str, Any]] | None = None) -> None:
        """The turn joins the history with its reply (after the prefill, if any), its calls and, if kept, its thoughts."""
        self.system_prompt = turn.system_prompt
        message: Message = {"role": "assistant", "content": (turn.prefill or "") + reply}
        if reasoning:
            message["reasoning"] = reasoning
        if tool_calls:
            message["tool_calls"] = tool_calls
        self.history = [*turn.history, message]


def fit_to_context(
    turn: Turn,
    count_tokens: Callable[[list[Message]], list[int]],
    n_ctx: int,
    max_tokens: int,
) -> list[int]:
    """Drop the oldest turns (never the system prompt or the new input) until
    the prompt plus `max_tokens` fits `n_ctx`; return the prompt's tokens.

    Messages go in whole user/assistant exchanges so the history still starts
    with a user turn, which strict templates require. When even the newest
    input alone leaves no room to generate one token: `context_overflow`.
    """
    tokens = count_tokens(turn.messages())
    while len(tokens) + max_tokens > n_ctx and len(turn.history) > 1:
        drop = 1
        while drop < len(turn.history) - 1 and turn.history[drop]["role"] != "user":
            drop += 1
        del turn.history[:drop]
        turn.truncated += drop
        tokens = count_tokens(turn.messages())
    if len(tokens) >= n_ctx:
        raise WorkerError.context_overflow(
            f"the prompt needs {len(tokens)} tokens but the context holds {n_ctx}; "
            "shorten the input or load the model with a larger n_ctx"
        )
    return tokens
