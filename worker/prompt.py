"""From a request's input to prompt tokens: the turn, the template, the tokenizer.

A chat request's input becomes a `Turn` of the session (the next user
message, or a whole conversation), the chat format renders it, and the
tokenizer turns the text into tokens, trimming the oldest exchanges when the
context is too small. Generation, preload, count and save all render through
here, so they agree on every token.
"""

from __future__ import annotations

import protocol

from .chat_format import ChatFormatError
from .errors import WorkerError
from .loading import LoadedModel
from .session import ChatSession, Message, Turn, fit_to_context


def as_messages(user_input: str | list[protocol.ChatMessage]) -> str | list[Message]:
    """A `generate`/`preload`/`count` input as the session works with it."""
    if isinstance(user_input, str):
        return user_input
    return [{"role": m.role, "content": m.content} for m in user_input]


def render_tokens(loaded: LoadedModel, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
    """The tokens of `messages` rendered by the model's chat format (with BOS where the model wants one)."""
    try:
        text = loaded.formatter.render(messages, add_generation_prompt)
    except ChatFormatError as exc:
        raise WorkerError.invalid(f"the chat template refused these messages: {exc}") from None
    model = loaded.model
    tokens = model.tokenize(text, add_special=False, parse_special=True)
    if model.add_bos and model.bos >= 0 and (not tokens or tokens[0] != model.bos):
        tokens.insert(0, model.bos)
    return tokens


def turn_prompt(loaded: LoadedModel, session: ChatSession, user_input: str | list[protocol.ChatMessage], max_tokens: int) -> tuple[Turn, list[int]]:
    """The turn a generate (or preload) of `user_input` renders, and its prompt tokens, fitted to the context."""
    turn = session.next_turn(as_messages(user_input))
    return turn, fit_to_context(turn, lambda messages: render_tokens(loaded, messages), loaded.context.n_ctx, max_tokens)


def conversation_tokens(loaded: LoadedModel, turn: Turn) -> list[int]:
    """The tokens of a conversation as it stands (no generation prompt): what a saved session holds."""
    messages = turn.messages()
    return render_tokens(loaded, messages, add_generation_prompt=False) if messages else []
