"""`save_session` and `restore_session`: a session to a file and back, checked before anything changes.

The file format (header, checksum, fingerprint) is `session_file`'s; this
module decides what goes into a file (the conversation, its tokens, the KV
state, evaluated first if it is not at hand) and what a restore must leave
behind when llama.cpp refuses a state that passed every check: the context
exactly as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import protocol
from protocol import ErrorCode

from . import session_file
from .errors import WorkerError
from .llama_backend import DecodeAborted, LlamaError
from .loading import LoadedModel
from .prompt import as_chat_message, conversation_tokens
from .session import ChatSession, Message, Turn
from .session_file import SessionFileError
from .session_switch import activate, stash_owner
from .sessions import KvSnapshot

log = logging.getLogger("worker")


def save_session(loaded: LoadedModel, request: protocol.SaveSession, should_abort: Callable[[], bool]) -> protocol.Saved:
    """Evaluate the session's conversation if its KV state is not at hand, then write both."""
    session = loaded.sessions.get(request.session)
    path = Path(request.path).expanduser()
    if path.is_dir():
        raise WorkerError.invalid(f"path: {path} is a folder")
    if not path.parent.is_dir():
        raise WorkerError.invalid(f"path: the folder {path.parent} does not exist")
    with loaded.sessions.lock:
        turn = Turn(session.system_prompt, [dict(m) for m in session.history])
    tokens = conversation_tokens(loaded, turn)
    ctx = loaded.context
    if len(tokens) >= ctx.n_ctx:
        raise WorkerError.context_overflow(f"the conversation needs {len(tokens)} tokens but the context holds {ctx.n_ctx}")
    activate(loaded.sessions, ctx, request.session)
    kv: bytes | bytearray = b""
    if tokens:
        try:
            ctx.evaluate(tokens, should_abort)
        except DecodeAborted:
            raise WorkerError(ErrorCode.ABORTED, "the save was aborted") from None
        except LlamaError as exc:
            raise WorkerError(ErrorCode.GENERATION_FAILED, f"evaluating the conversation failed: {exc}") from None
        kv = ctx.save_state()
    loaded.sessions.set_tokens(request.session, len(tokens))
    header = session_file.Header(
        model=loaded.fingerprint,
        layout=ctx.layout,
        n_ctx=ctx.n_ctx,
        system_prompt=turn.system_prompt,
        history=[
            session_file.SavedMessage(m["role"], m["content"], m.get("reasoning"), m.get("tool_calls"), m.get("tool_call_id"), m.get("name"))
            for m in turn.history
        ],
        tokens=tokens,
        kv_bytes=len(kv),
        kv_sha256=session_file.digest(tokens, kv),
    )
    try:
        size = session_file.write(path, header, kv)
    except OSError as exc:
        raise WorkerError.invalid(f"path: cannot write {path}: {exc.strerror}") from None
    return protocol.Saved(id=request.id, path=str(path), bytes=size, session=loaded.session_info(request.session))


def restore_session(loaded: LoadedModel, request: protocol.RestoreSession) -> protocol.Restored:
    """Replace a session with a saved one; on any failure the session stays as it was."""
    path = Path(request.path).expanduser()
    try:
        header, kv = session_file.read(path)
        session_file.check_compatible(header, path, loaded.fingerprint, loaded.context.layout, loaded.context.n_ctx)
    except SessionFileError as exc:
        code = ErrorCode.SESSION_MISMATCH if exc.mismatch else ErrorCode.BAD_SESSION_FILE
        raise WorkerError(code, exc.message) from None
    for i, m in enumerate(header.history):
        if m.role not in ("user", "assistant"):
            raise WorkerError(ErrorCode.BAD_SESSION_FILE, f"{path} is damaged: history[{i}] has role {m.role!r}")
    store, ctx = loaded.sessions, loaded.context
    # Keep what the context holds, even without a RAM budget: a state that
    # passed every check can still be refused by llama.cpp, and then the
    # context must go back to exactly what it was.
    previous_owner = store.owner
    previous = KvSnapshot(tuple(ctx.tokens), ctx.save_state()) if ctx.tokens else None
    stash_owner(store, ctx, previous)
    store.owner = None
    try:
        ctx.load_state(kv, header.tokens)
    except LlamaError as exc:
        if previous is not None:
            try:
                ctx.load_state(previous.data, previous.tokens)
                store.owner = previous_owner
            except LlamaError:  # pragma: no cover - it held this very state a moment ago
                log.exception("could not put the context back after a refused restore")
        raise WorkerError(ErrorCode.SESSION_MISMATCH, f"{path}: {exc}") from None
    store.take_snapshot(request.session)
    store.replace(
        request.session,
        ChatSession(system_prompt=header.system_prompt, history=[_message(m) for m in header.history]),
        len(header.tokens),
    )
    store.owner = request.session
    return protocol.Restored(
        id=request.id,
        session=loaded.session_info(request.session),
        history=[as_chat_message(_message(m)) for m in header.history],
    )


def _message(m: session_file.SavedMessage) -> Message:
    message: Message = {"role": m.role, "content": m.content}
    for key in ("reasoning", "tool_calls", "tool_call_id", "name"):
        value = getattr(m, key)
        if value:
            message[key] = value
    return message
