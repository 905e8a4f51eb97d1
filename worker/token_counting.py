"""`tokenize`, `detokenize` and `count`: answered beside the model thread.

They read the vocabulary and the chat template, never the context, so the
server runs them on a thread of their own while a generation streams. The
caller holds the worker's guard lock around each call, which keeps a
concurrent load or cleanup from freeing the vocabulary under them.
"""

from __future__ import annotations

import protocol

from .errors import WorkerError
from .loading import LoadedModel
from .prompt import as_messages, conversation_tokens, render_tokens
from .session import Turn


def tokenize(loaded: LoadedModel, request: protocol.Tokenize) -> protocol.Tokens:
    model = loaded.model
    ids = model.tokenize(request.text, add_special=request.special and model.add_bos, parse_special=request.special)
    return protocol.Tokens(id=request.id, ids=ids, count=len(ids))


def detokenize(loaded: LoadedModel, request: protocol.Detokenize) -> protocol.Text:
    try:
        text = loaded.model.detokenize(request.ids, render_special=request.special)
    except ValueError as exc:
        raise WorkerError.invalid(f"ids: {exc}") from None
    return protocol.Text(id=request.id, text=text)


def count(loaded: LoadedModel, request: protocol.Count) -> protocol.TokenCount:
    """Prompt tokens of a generate of `input` in `session`, before trimming (no session is created)."""
    session = loaded.sessions.peek(request.session)
    if request.input is None:
        tokens = conversation_tokens(loaded, Turn(session.system_prompt, session.history))
    else:
        turn = session.next_turn(as_messages(request.input))
        tokens = render_tokens(loaded, turn.messages(), prefill=turn.prefill)
    return protocol.TokenCount(id=request.id, session=request.session, tokens=len(tokens), n_ctx=loaded.context.n_ctx)
