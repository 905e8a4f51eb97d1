"""`LlamaWorker`: the model, its context and the chat session, with no I/O.

It mirrors the original Electron design's class (initialize, load the model,
create the context, ensure the chat session, generate, cleanup) but knows
nothing of pipes or frames: callers pass callbacks for progress and chunks
and a `should_abort` predicate. That is what lets the stdio loop, the tests
and the benchmarks drive the same object.

Every method must be called from one thread (llama.cpp is not thread-safe).
Errors are raised as `WorkerError` with a protocol code.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import protocol
from protocol import ErrorCode, Generate, Load, ModelInfo

from . import __version__
from . import generation
from .chat_format import (
    BUILTIN_FORMATS,
    ChatFormatError,
    ChatFormatter,
    detect_builtin_format,
    formatter_for_builtin,
)
from .errors import WorkerError
from .llama_backend import (
    LIBRARY_VERSION,
    Context,
    ContextParams,
    DecodeAborted,
    LlamaError,
    Model,
    ModelParams,
    SamplingParams,
    backends,
    cpu_has_amx,
    supports_gpu_offload,
    initialize_backend,
    usable_cores,
)
from .model_locator import resolve_model_path
from . import session_file
from .session import ChatSession, Message, Turn, fit_to_context
from .session_file import SessionFileError
from .sessions import KvSnapshot, SessionStore, default_cache_budget
from .structured import StructuredOutputError, grammar_for, is_complete_json

DEFAULT_N_CTX = 4096
DEFAULT_N_BATCH = 512
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05
DEFAULT_REPEAT_PENALTY = 1.1
REPEAT_LAST_N = 64

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

log = logging.getLogger("worker")


def _never() -> bool:
    return False


@dataclass
class _Loaded:
    model: Model
    context: Context
    formatter: ChatFormatter
    info: ModelInfo
    stop_tokens: frozenset[int]
    stop_strings: tuple[str, ...]
    seeds: random.Random
    sessions: SessionStore
    fingerprint: dict[str, object]


class LlamaWorker:
    def __init__(self) -> None:
        self._loaded: _Loaded | None = None
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

    @property
    def model_info(self) -> ModelInfo | None:
        return self._loaded.info if self._loaded else None

    @property
    def context(self) -> Context | None:
        return self._loaded.context if self._loaded else None

    def load_model(
        self,
        options: Load,
        progress: Callable[[float], None] = lambda _f: None,
        should_abort: Abort = _never,
    ) -> ModelInfo:
        """Load a model and create its context, then swap it in.

        Nothing of the current model or session changes until the new model
        is fully ready, so a failed or aborted load leaves them as they were.
        """
        if not self._initialized:
            self.initialize()
        requested_format = (options.chat_format or "auto").strip()
        if requested_format not in ("auto", "gguf", *BUILTIN_FORMATS):
            names = ", ".join(["auto", "gguf", *BUILTIN_FORMATS])
            raise WorkerError.invalid(f"chat_format: unknown format {requested_format!r} (known: {names})")
        path = resolve_model_path(options.model_path)
        _check_gguf_file(path)
        use_extra_bufts = options.use_extra_bufts if options.use_extra_bufts is not None else not cpu_has_amx()
        n_gpu_layers = options.n_gpu_layers or 0

        def on_progress(fraction: float) -> bool:
            if should_abort():
                return False
            # llama.cpp reports 1.0 once the weights are read; the context and
            # the template check still follow, so 1.0 is ours to send on success.
            progress(fraction * 0.95)
            return True

        try:
            model = Model(str(path), ModelParams(n_gpu_layers=n_gpu_layers, use_extra_bufts=use_extra_bufts), on_progress)
        except LlamaError as exc:
            if should_abort():
                raise WorkerError(ErrorCode.ABORTED, "the load was aborted") from None
            raise WorkerError(ErrorCode.LOAD_FAILED, f"could not load {path}: {exc}") from None
        context: Context | None = None
        try:
            formatter = _choose_formatter(model, requested_format)
            n_ctx_train = model.n_ctx_train or DEFAULT_N_CTX
            if options.n_ctx is None:
                n_ctx = min(DEFAULT_N_CTX, n_ctx_train)
            elif options.n_ctx == 0:
                n_ctx = n_ctx_train
            else:
                n_ctx = options.n_ctx
            n_threads = options.n_threads or usable_cores()
            cache_budget = options.session_cache_bytes if options.session_cache_bytes is not None else default_cache_budget()
            flash_attn = options.flash_attn if options.flash_attn is not None else (None if n_gpu_layers else False)
            try:
                context = Context(
                    model,
                    ContextParams(n_ctx=n_ctx, n_batch=options.n_batch or DEFAULT_N_BATCH, n_threads=n_threads, flash_attn=flash_attn),
                )
            except LlamaError as exc:
                raise WorkerError(ErrorCode.LOAD_FAILED, f"could not create a context for {path}: {exc}") from None
            if should_abort():
                raise WorkerError(ErrorCode.ABORTED, "the load was aborted")
            stop_tokens: set[int] = set()
            stop_strings: list[str] = []
            for marker in formatter.stop:
                tok = model.single_token(marker)
                if tok is not None:
                    stop_tokens.add(tok)
                else:
                    stop_strings.append(marker)
            meta = model.metadata()
            info = ModelInfo(
                path=str(path),
                name=meta.get("general.name") or path.stem,
                architecture=meta.get("general.architecture", "unknown"),
                size_bytes=path.stat().st_size,
                n_ctx=context.n_ctx,
                n_ctx_train=model.n_ctx_train,
                chat_format=formatter.name,
                chat_format_source=formatter.source,  # type: ignore[arg-type]
                n_params=model.n_params,
                n_threads=n_threads,
                n_gpu_layers=n_gpu_layers,
                use_extra_bufts=use_extra_bufts,
                system_prompt_mode="merged" if formatter.merge_system else "native",
                session_cache_bytes=cache_budget,
                backends=backends(),
                n_layer=model.n_layer,
                gpu_layers_offloaded=gpu_layers_offloaded(n_gpu_layers, model.n_layer),
            )
            fingerprint = model.fingerprint(meta, info.size_bytes)
        except BaseException:
            if context is not None:
                context.close()
            model.close()
            raise
        seeds: random.Random = random.Random(options.seed) if options.seed is not None else random.SystemRandom()
        sessions = SessionStore(options.system_prompt or None, cache_budget)
        with self._guard:
            self._free()
            self._loaded = _Loaded(model, context, formatter, info, frozenset(stop_tokens), tuple(stop_strings), seeds, sessions, fingerprint)
        progress(1.0)
        return info

    def _require_loaded(self) -> _Loaded:
        loaded = self._loaded  # read once: other threads call this too
        if loaded is None:
            raise WorkerError(ErrorCode.NO_MODEL, "no model is loaded: send `load` first")
        return loaded

    def ensure_chat_session(self, name: str = protocol.DEFAULT_SESSION) -> ChatSession:
        return self._require_loaded().sessions.get(name)

    def reset(self, system_prompt: str | None = None, session: str = protocol.DEFAULT_SESSION, history: list[protocol.ChatMessage] | None = None) -> None:
        """Clear a session's history, or set it (`history`: user/assistant messages, no generation)."""
        messages: list[Message] = []
        for i, m in enumerate(history or []):
            if m.role == "system":
                raise WorkerError.invalid(f"history[{i}]: a system prompt goes in `system_prompt`, not the history")
            messages.append({"role": m.role, "content": m.content})
        store = self._require_loaded().sessions
        chat = store.get(session)
        with store.lock:
            chat.reset(system_prompt)
            chat.history = messages

    def cleanup(self) -> None:
        """Free the sessions, context and model; the worker can load again."""
        with self._guard:
            self._free()

    def _free(self) -> None:
        if self._loaded is not None:
            loaded, self._loaded = self._loaded, None
            loaded.context.close()
            loaded.model.close()

    # -- generation ------------------------------------------------------

    def generate(
        self,
        request: Generate,
        on_chunk: Callable[[str], None] = lambda _t: None,
        should_abort: Abort = _never,
        started_at: float | None = None,
    ) -> protocol.Done:
        """Run one generation; the reply (partial on abort) joins the history."""
        started_at = time.perf_counter() if started_at is None else started_at
        loaded = self._require_loaded()
        turn = None
        session_name = request.session if request.mode == "chat" else None
        if request.mode == "completion":
            if not isinstance(request.input, str):
                raise WorkerError.invalid("input: completion mode takes a string")
            prompt = loaded.model.tokenize(request.input, add_special=loaded.model.add_bos, parse_special=True)
            if not prompt:
                raise WorkerError.invalid("input: completion mode needs some text to continue")
            if len(prompt) >= loaded.context.n_ctx:
                raise WorkerError.context_overflow(
                    f"the prompt needs {len(prompt)} tokens but the context holds {loaded.context.n_ctx}"
                )
        else:
            session = loaded.sessions.get(request.session)
            turn, prompt = self._turn_prompt(session, request.input, request.max_tokens)
        grammar = self._grammar(request.response_format) if request.response_format is not None else None
        self._activate(session_name)
        seed = request.seed if request.seed is not None else loaded.seeds.randrange(0, 0xFFFFFFFF)
        greedy = request.temperature <= 0.0
        sampling = SamplingParams(
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=DEFAULT_TOP_K if request.top_k is None else request.top_k,
            min_p=DEFAULT_MIN_P if request.min_p is None else request.min_p,
            repeat_penalty=DEFAULT_REPEAT_PENALTY if request.repeat_penalty is None else request.repeat_penalty,
            repeat_last_n=REPEAT_LAST_N,
            seed=seed,
        )
        try:
            outcome = generation.generate(
                loaded.model,
                loaded.context,
                prompt,
                sampling,
                request.max_tokens,
                [*request.stop, *loaded.stop_strings] if turn is not None else list(request.stop),
                loaded.stop_tokens if turn is not None else frozenset(),
                on_chunk,
                should_abort,
                started_at,
                grammar,
                allow_shift=turn is not None and turn.truncated > 0,
            )
        except LlamaError as exc:
            raise WorkerError(ErrorCode.GENERATION_FAILED, f"generation failed: {exc}") from None
        # An abort before any text means the turn did not happen: the session
        # stays as it was, so the host can simply send the input again.
        if turn is not None:
            if not (outcome.stop_reason == "aborted" and not outcome.text):
                with loaded.sessions.lock:
                    session.commit(turn, outcome.text)
            loaded.sessions.set_tokens(request.session, len(loaded.context.tokens))
        return protocol.Done(
            id=request.id,
            text=outcome.text,
            stop_reason=outcome.stop_reason,  # type: ignore[arg-type]
            usage=protocol.Usage(
                prompt_tokens=outcome.prompt_tokens,
                cached_tokens=outcome.cached_tokens,
                completion_tokens=outcome.completion_tokens,
            ),
            timings=protocol.Timings(
                ttft_ms=round(outcome.ttft_ms, 3),
                total_ms=round((time.perf_counter() - started_at) * 1000, 3),
                tokens_per_second=round(outcome.tokens_per_second, 3),
                prompt_ms=round(outcome.prompt_ms, 3),
            ),
            truncated_messages=turn.truncated if turn is not None else 0,
            seed=None if greedy else seed,
            incomplete=grammar is not None and outcome.stop_reason != "eos" and not is_complete_json(outcome.text),
        )

    def _grammar(self, fmt: protocol.ResponseFormat) -> object:
        """The model's grammar sampler prototype for a response format (built once, then cached)."""
        loaded = self._require_loaded()
        try:
            return loaded.model.grammar(grammar_for(fmt.type, fmt.schema))
        except StructuredOutputError as exc:
            raise WorkerError.invalid(str(exc)) from None
        except LlamaError as exc:
            raise WorkerError.invalid(f"response_format.schema: llama.cpp refused the grammar built from it: {exc}") from None

    def _turn_prompt(self, session: ChatSession, user_input: str | list[protocol.ChatMessage], max_tokens: int) -> tuple[Turn, list[int]]:
        """The turn a generate (or preload) of `user_input` renders, and its prompt tokens."""
        loaded = self._require_loaded()
        turn = session.next_turn(_as_dicts(user_input))
        return turn, fit_to_context(turn, self._render_tokens, loaded.context.n_ctx, max_tokens)

    # -- sessions ----------------------------------------------------------

    def _activate(self, name: str | None) -> None:
        """Give the context to session `name` (None: a completion, nobody's).

        The outgoing session's KV state is kept in RAM (unless an identical
        copy is already there); the incoming one's is copied in when cached.
        Without a cached copy the context keeps what it holds: prefix
        matching still reuses whatever the two conversations share.
        """
        loaded = self._require_loaded()
        store, ctx = loaded.sessions, loaded.context
        if store.owner == name:
            return
        self._stash_owner()
        snap = store.snapshot(name) if name is not None else None
        if snap is not None:
            try:
                ctx.load_state(snap.data, snap.tokens)
                store.touch(name)  # type: ignore[arg-type]
            except LlamaError as exc:  # the cache is empty now: evaluation takes over
                log.warning("could not restore session %r from RAM: %s", name, exc)
                store.take_snapshot(name)  # type: ignore[arg-type]
        store.owner = name

    def _stash_owner(self, current: KvSnapshot | None = None) -> None:
        """Keep the context's state in RAM for its owner (`current`: that state, already copied)."""
        loaded = self._require_loaded()
        store, ctx = loaded.sessions, loaded.context
        owner = store.owner
        if owner is None or not ctx.tokens or store.cache_budget <= 0:
            return
        snap = store.snapshot(owner)
        if snap is not None and len(snap.tokens) == len(ctx.tokens) and snap.tokens == tuple(ctx.tokens):
            return
        try:
            store.keep_snapshot(owner, current or KvSnapshot(tuple(ctx.tokens), ctx.save_state()))
        except LlamaError as exc:  # only a cache: the session will be evaluated again if needed
            log.warning("could not keep session %r's KV state in RAM: %s", owner, exc)

    def idle(self, after: protocol.Request | None = None) -> None:
        """Between requests: copy the active session's KV state to RAM when several sessions exist.

        That way switching to another session does not have to copy it out
        while the user waits. Not after a preload: a generate of the same
        session normally follows it.
        """
        if isinstance(after, protocol.Preload):
            return
        if self._loaded is not None and len(self._loaded.sessions.names()) > 1:
            self._stash_owner()

    def preload(self, request: protocol.Preload, should_abort: Abort = _never) -> protocol.Preloaded:
        """Evaluate a session's prompt for `input` without generating or changing the session."""
        loaded = self._require_loaded()
        session = loaded.sessions.get(request.session)
        turn, prompt = self._turn_prompt(session, request.input, request.max_tokens)
        if should_abort():  # replaced before it began: do not disturb the context for nothing
            return protocol.Preloaded(id=request.id, session=request.session, prompt_tokens=len(prompt), cached_tokens=0, complete=False)
        self._activate(request.session)
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

    def session_info(self, name: str) -> protocol.SessionInfo:
        loaded = self._require_loaded()
        return loaded.sessions.info(name, len(loaded.context.tokens))

    def list_sessions(self, request_id: protocol.RequestId) -> protocol.SessionList:
        """Safe from any thread: the store is locked, the token count read atomically."""
        loaded = self._require_loaded()
        listing, used = loaded.sessions.listing(len(loaded.context.tokens))
        return protocol.SessionList(id=request_id, sessions=listing, cache_bytes=used, cache_budget_bytes=loaded.sessions.cache_budget)

    def close_session(self, name: str) -> None:
        self._require_loaded().sessions.close(name)

    def save_session(self, request: protocol.SaveSession, should_abort: Abort = _never) -> protocol.Saved:
        """Evaluate the session's conversation if its KV state is not at hand, then write both."""
        loaded = self._require_loaded()
        session = loaded.sessions.get(request.session)
        path = Path(request.path).expanduser()
        if path.is_dir():
            raise WorkerError.invalid(f"path: {path} is a folder")
        if not path.parent.is_dir():
            raise WorkerError.invalid(f"path: the folder {path.parent} does not exist")
        with loaded.sessions.lock:
            turn = Turn(session.system_prompt, [dict(m) for m in session.history])
        messages = turn.messages()
        tokens = self._render_tokens(messages, add_generation_prompt=False) if messages else []
        if len(tokens) >= loaded.context.n_ctx:
            raise WorkerError.context_overflow(f"the conversation needs {len(tokens)} tokens but the context holds {loaded.context.n_ctx}")
        self._activate(request.session)
        kv = b""
        if tokens:
            try:
                loaded.context.evaluate(tokens, should_abort)
            except DecodeAborted:
                raise WorkerError(ErrorCode.ABORTED, "the save was aborted") from None
            except LlamaError as exc:
                raise WorkerError(ErrorCode.GENERATION_FAILED, f"evaluating the conversation failed: {exc}") from None
            kv = loaded.context.save_state()
        loaded.sessions.set_tokens(request.session, len(tokens))
        header = session_file.Header(
            model=loaded.fingerprint,
            layout=loaded.context.layout,
            n_ctx=loaded.context.n_ctx,
            system_prompt=turn.system_prompt,
            history=[session_file.SavedMessage(m["role"], m["content"]) for m in turn.history],
            tokens=tokens,
            kv_bytes=len(kv),
            kv_sha256=session_file.digest(tokens, kv),
        )
        try:
            size = session_file.write(path, header, kv)
        except OSError as exc:
            raise WorkerError.invalid(f"path: cannot write {path}: {exc.strerror}") from None
        return protocol.Saved(id=request.id, path=str(path), bytes=size, session=self.session_info(request.session))

    def restore_session(self, request: protocol.RestoreSession) -> protocol.Restored:
        """Replace a session with a saved one; on any failure the session stays as it was."""
        loaded = self._require_loaded()
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
        self._stash_owner(previous)
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
            ChatSession(system_prompt=header.system_prompt, history=[{"role": m.role, "content": m.content} for m in header.history]),
            len(header.tokens),
        )
        store.owner = request.session
        return protocol.Restored(
            id=request.id,
            session=self.session_info(request.session),
            history=[protocol.ChatMessage(role=m.role, content=m.content) for m in header.history],  # type: ignore[arg-type]
        )

    def _render_tokens(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        loaded = self._require_loaded()
        try:
            text = loaded.formatter.render(messages, add_generation_prompt)
        except ChatFormatError as exc:
            raise WorkerError.invalid(f"the chat template refused these messages: {exc}") from None
        model = loaded.model
        tokens = model.tokenize(text, add_special=False, parse_special=True)
        if model.add_bos and model.bos >= 0 and (not tokens or tokens[0] != model.bos):
            tokens.insert(0, model.bos)
        return tokens

    # -- token counting (any thread: these never touch the context) ---------

    def tokenize(self, request: protocol.Tokenize) -> protocol.Tokens:
        with self._guard:
            model = self._require_loaded().model
            ids = model.tokenize(request.text, add_special=request.special and model.add_bos, parse_special=request.special)
        return protocol.Tokens(id=request.id, ids=ids, count=len(ids))

    def detokenize(self, request: protocol.Detokenize) -> protocol.Text:
        with self._guard:
            try:
                text = self._require_loaded().model.detokenize(request.ids, render_special=request.special)
            except ValueError as exc:
                raise WorkerError.invalid(f"ids: {exc}") from None
        return protocol.Text(id=request.id, text=text)

    def count(self, request: protocol.Count) -> protocol.TokenCount:
        """Prompt tokens of a generate of `input` in `session`, before trimming (no session is created)."""
        with self._guard:
            loaded = self._require_loaded()
            session = loaded.sessions.peek(request.session)
            if request.input is None:
                messages = Turn(session.system_prompt, session.history).messages()
                tokens = self._render_tokens(messages, add_generation_prompt=False) if messages else []
            else:
                tokens = self._render_tokens(session.next_turn(_as_dicts(request.input)).messages())
            return protocol.TokenCount(id=request.id, session=request.session, tokens=len(tokens), n_ctx=loaded.context.n_ctx)

    # -- introspection for tests and benchmarks ---------------------------

    @property
    def session(self) -> ChatSession | None:
        """The default session (None before a load)."""
        return self._loaded.sessions.get(protocol.DEFAULT_SESSION) if self._loaded else None


def _as_dicts(user_input: str | list[protocol.ChatMessage]) -> str | list[Message]:
    """A `generate`/`preload`/`count` input as the session works with it."""
    if isinstance(user_input, str):
        return user_input
    return [{"role": m.role, "content": m.content} for m in user_input]


def gpu_layers_offloaded(requested: int, n_layer: int) -> int:
    """Layers llama.cpp puts on a GPU for `n_gpu_layers` (the output layer counts as one more)."""
    if requested == 0 or not supports_gpu_offload():
        return 0
    return n_layer + 1 if requested < 0 else min(requested, n_layer + 1)


def _check_gguf_file(path: Path) -> None:
    """Fail fast, with a clear message, on what is obviously not a GGUF model."""
    if path.is_dir():
        raise WorkerError(ErrorCode.LOAD_FAILED, f"{path} is a folder, not a GGUF model file")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise WorkerError(ErrorCode.LOAD_FAILED, f"cannot read {path}: {exc.strerror}") from None
    if magic != b"GGUF":
        raise WorkerError(ErrorCode.LOAD_FAILED, f"{path} is not a GGUF file (it does not start with the GGUF magic)")


def _choose_formatter(model: Model, requested: str) -> ChatFormatter:
    """`requested` is "auto", "gguf" or a built-in name (validated before the load)."""
    bos = model.token_text(model.bos) if model.bos >= 0 else ""
    eos = model.token_text(model.eos) if model.eos >= 0 else ""
    try:
        if requested in ("auto", "gguf"):
            template = model.chat_template()
            if template:
                formatter = ChatFormatter(name="gguf", template_source=template, bos_token=bos, eos_token=eos, source="gguf")
            elif requested == "gguf":
                raise WorkerError(ErrorCode.LOAD_FAILED, "chat_format 'gguf' was asked for but the model has no chat template")
            else:
                fmt = detect_builtin_format(
                    lambda text: model.single_token(text) is not None,
                    model.meta("general.architecture") or "",
                    model.meta("general.name") or "",
                )
                formatter = formatter_for_builtin(fmt, bos, eos, "detected")
        else:
            formatter = formatter_for_builtin(BUILTIN_FORMATS[requested], bos, eos, "requested")
        formatter.probe()
    except ChatFormatError as exc:
        raise WorkerError(ErrorCode.LOAD_FAILED, f"the model's chat template does not work: {exc}") from None
    return formatter
