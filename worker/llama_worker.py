"""`LlamaWorker`: the model, its context and the chat sessions, with no I/O.

It mirrors the original Electron design's class (initialize, load the model,
create the context, generate, cleanup) but knows nothing of pipes or frames:
callers pass callbacks for progress and chunks and a `should_abort`
predicate. That is what lets the stdio server, the tests and the benchmarks
drive the same object.

This class only holds the loaded model and hands each request to the module
that does the work: `loading` (load planning), `pipeline` (generation),
`session_switch` (KV state between sessions), `saved_sessions` (files),
`token_counting`. Threads: everything runs on the model thread except
`tokenize`, `detokenize`, `count` and `list_sessions`, which the server calls
from other threads; they take `_guard` (or read the session store under its
lock) so a concurrent load or cleanup never frees what they read.
Errors are raised as `WorkerError` with a protocol code.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import protocol
from protocol import ErrorCode, Generate, Load, ModelInfo

from . import __version__, saved_sessions, token_counting
from .errors import WorkerError
from .lanes import ThoughtControl
from .llama_backend import LIBRARY_VERSION, DecodeAborted, LlamaError, initialize_backend
from .loading import LoadedModel, load_model
from .pipeline import run_generation
from .prompt import as_message, turn_prompt
from .session import ChatSession, Message
from .session_switch import activate, stash_owner
from .thoughts import Kind
from .tool_calls import check_tool_messages

CAPABILITIES = [
    "load_progress",
    "load_abort",
    "prefill_abort",
    "completion_mode",
    "chat_history",
    "context_trim",
    "chat_format_detection",
    "log_frames",
    "amx_guard",
    "sessions",
    "preload",
    "session_files",
    "structured_output",
    "tokenize",
]

Abort = Callable[[], bool]


def _never() -> bool:
    return False


class LlamaWorker:
    def __init__(self) -> None:
        self._loaded: LoadedModel | None = None
        self._initialized = False
        # Held while a model is swapped or freed, and by the token-counting
        # requests that run beside the model thread, so they never touch a
        # freed vocabulary.
        self._guard = threading.Lock()

    # -- lifecycle -------------------------------------------------------

    def initialize(self) -> dict[str, object]:
        """Prepare llama.cpp; return what the `ready` reply announces."""
        initialize_backend()
        self._initialized = True
        return {
            "protocol_version": protocol.PROTOCOL_VERSION,
            "worker_version": __version__,
            "llama_cpp_version": LIBRARY_VERSION,
            "pid": os.getpid(),
            "capabilities": list(CAPABILITIES),
        }

    def load_model(self, options: Load, progress: Callable[[float], None] = lambda _f: None, should_abort: Abort = _never) -> ModelInfo:
        """Load a model and create its context, then swap it in.

        Nothing of the current model or sessions changes until the new model
        is fully ready, so a failed or aborted load leaves them as they were.
        """
        if not self._initialized:
            self.initialize()
        loaded = load_model(options, progress, should_abort)
        with self._guard:
            self._free()
            self._loaded = loaded
        progress(1.0)
        return loaded.info

    def cleanup(self) -> None:
        """Free the sessions, context and model; the worker can load again."""
        with self._guard:
            self._free()

    def _free(self) -> None:
        if self._loaded is not None:
            loaded, self._loaded = self._loaded, None
            loaded.close()

    def _require_loaded(self) -> LoadedModel:
        loaded = self._loaded  # read once: other threads call this too
        if loaded is None:
            raise WorkerError(ErrorCode.NO_MODEL, "no model is loaded: send `load` first")
        return loaded

    # -- generation ------------------------------------------------------

    def generate(
        self,
        request: Generate,
        on_chunk: Callable[[Kind, str], None] = lambda _k, _t: None,
        should_abort: Abort = _never,
        started_at: float | None = None,
        thoughts: ThoughtControl | None = None,
        on_tool_call: Callable[[int, protocol.ToolCall], None] | None = None,
    ) -> protocol.Done:
        """Run one generation (see `pipeline`); the reply (partial on abort) joins the history.

        `on_chunk(kind, text)` gets answer text ("text") and thought text ("reasoning").
        """
        started_at = time.perf_counter() if started_at is None else started_at
        return run_generation(self._require_loaded(), request, on_chunk, should_abort, started_at, thoughts, on_tool_call)

    # -- sessions ----------------------------------------------------------

    def reset(self, system_prompt: str | None = None, session: str = protocol.DEFAULT_SESSION, history: list[protocol.ChatMessage] | None = None) -> None:
        """Clear a session's history, or set it (`history`: user/assistant messages, no generation)."""
        messages: list[Message] = []
        for i, m in enumerate(history or []):
            if m.role == "system":
                raise WorkerError.invalid(f"history[{i}]: a system prompt goes in `system_prompt`, not the history")
            messages.append(as_message(m))
        check_tool_messages(messages)
        store = self._require_loaded().sessions
        chat = store.get(session)
        with store.lock:
            chat.reset(system_prompt)
            chat.history = messages

    def idle(self, after: protocol.Request | None = None) -> None:
        """Between requests: copy the active session's KV state to RAM when several sessions exist.

        That way switching to another session does not have to copy it out
        while the user waits. Not after a preload: a generate of the same
        session normally follows it.
        """
        if isinstance(after, protocol.Preload):
            return
        loaded = self._loaded
        if loaded is not None and len(loaded.sessions.names()) > 1:
            stash_owner(loaded.sessions, loaded.context)

    def preload(self, request: protocol.Preload, should_abort: Abort = _never) -> protocol.Preloaded:
        """Evaluate a session's prompt for `input` without generating or changing the session."""
        loaded = self._require_loaded()
        session = loaded.sessions.get(request.session)
        turn, prompt = turn_prompt(loaded, session, request.input, request.max_tokens)
        if should_abort():  # replaced before it began: do not disturb the context for nothing
            return protocol.Preloaded(id=request.id, session=request.session, prompt_tokens=len(prompt), cached_tokens=0, complete=False)
        activate(loaded.sessions, loaded.context, request.session)
        complete = True
        try:
            loaded.context.evaluate(prompt, should_abort, allow_shift=turn.truncated > 0)
        except DecodeAborted:
            complete = False
        except LlamaError as exc:
            raise WorkerError(ErrorCode.GENERATION_FAILED, f"preload failed: {exc}") from None
        loaded.sessions.set_tokens(request.session, len(loaded.context.tokens))
        return protocol.Preloaded(
            id=request.id, session=request.session, prompt_tokens=len(prompt), cached_tokens=loaded.context.last_reused, complete=complete
        )

    def list_sessions(self, request_id: protocol.RequestId) -> protocol.SessionList:
        """Safe from any thread: the store is locked, the token count read atomically."""
        loaded = self._require_loaded()
        listing, used = loaded.sessions.listing(len(loaded.context.tokens))
        return protocol.SessionList(id=request_id, sessions=listing, cache_bytes=used, cache_budget_bytes=loaded.sessions.cache_budget)

    def close_session(self, name: str) -> None:
        self._require_loaded().sessions.close(name)

    def save_session(self, request: protocol.SaveSession, should_abort: Abort = _never) -> protocol.Saved:
        return saved_sessions.save_session(self._require_loaded(), request, should_abort)

    def restore_session(self, request: protocol.RestoreSession) -> protocol.Restored:
        return saved_sessions.restore_session(self._require_loaded(), request)

    # -- token counting (any thread: these never touch the context) ---------

    def tokenize(self, request: protocol.Tokenize) -> protocol.Tokens:
        with self._guard:
            return token_counting.tokenize(self._require_loaded(), request)

    def detokenize(self, request: protocol.Detokenize) -> protocol.Text:
        with self._guard:
            return token_counting.detokenize(self._require_loaded(), request)

    def count(self, request: protocol.Count) -> protocol.TokenCount:
        with self._guard:
            return token_counting.count(self._require_loaded(), request)

    # -- introspection for tests and benchmarks ---------------------------

    @property
    def session(self) -> ChatSession | None:
        """The default session (None before a load)."""
        return self._loaded.sessions.get(protocol.DEFAULT_SESSION) if self._loaded else None
