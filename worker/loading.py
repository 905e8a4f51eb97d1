"""Load planning: a `load` request in, a ready model, context and chat format out.

Everything a load decides lives here: which file, which chat format, the
context size and threads, whether the extra buffer types go on (not on AMX
CPUs, where they crash), how the template's stop markers become stop tokens,
and what `loaded.model` reports. The result, `LoadedModel`, is built whole
before anyone sees it, so a failed or aborted load changes nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from protocol import ErrorCode, Load, ModelInfo, SessionInfo

from . import chat_families
from .chat_families import NO_REASONING, ReasoningProfile
from .chat_format import BUILTIN_FORMATS, ChatFormatError, ChatFormatter, detect_builtin_format, formatter_for_builtin
from .errors import WorkerError
from .llama_backend import (
    Context,
    ContextParams,
    LlamaError,
    Model,
    ModelParams,
    backends,
    cpu_has_amx,
    supports_gpu_offload,
    usable_cores,
)
from .model_locator import resolve_model_path
from .sessions import SessionStore, default_cache_budget

DEFAULT_N_CTX = 4096
DEFAULT_N_BATCH = 512

Abort = Callable[[], bool]


@dataclass
class LoadedModel:
    """A model with its context, chat format, sessions and what `loaded` reported."""

    model: Model
    context: Context
    formatter: ChatFormatter
    info: ModelInfo
    stop_tokens: frozenset[int]
    """The template's end-of-turn markers that are single tokens."""
    stop_strings: tuple[str, ...]
    """...and those that are not: matched in the text."""
    seeds: random.Random
    sessions: SessionStore
    fingerprint: dict[str, object]
    """What a saved session must match to be restored into this model."""
    reasoning: ReasoningProfile = NO_REASONING
    """How the model thinks (`chat_families`)."""
    tool_family: chat_families.ToolFamily = chat_families.TOOL_FAMILIES["generic"]
    """How the model writes tool calls (`chat_families`)."""
    marker_pieces: dict[int, bytes] = field(default_factory=dict)
    """Special tokens of the reasoning markers, with their text: the decode loop shows them to
    the thought splitter (llama.cpp renders control tokens as nothing)."""

    def session_info(self, name: str) -> SessionInfo:
        return self.sessions.info(name, len(self.context.tokens))

    def close(self) -> None:
        self.context.close()
        self.model.close()


def load_model(options: Load, progress: Callable[[float], None], should_abort: Abort) -> LoadedModel:
    """Load the model `options` names and create its context; raise `WorkerError` on failure."""
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
        reasoning = chat_families.detect(formatter, lambda text: model.single_token(text) is not None)
        tool_family = chat_families.detect_tools(formatter.template_source)
        stop_tokens: set[int] = set()
        stop_strings: list[str] = []
        for marker in (*formatter.stop, *(reasoning.family.stop_markers if reasoning.family else ())):
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
            chat_format_source=cast(Literal["gguf", "requested", "detected"], formatter.source),
            n_params=model.n_params,
            n_threads=n_threads,
            n_gpu_layers=n_gpu_layers,
            use_extra_bufts=use_extra_bufts,
            system_prompt_mode="merged" if formatter.merge_system else "native",
            session_cache_bytes=cache_budget,
            backends=backends(),
            n_layer=model.n_layer,
            gpu_layers_offloaded=gpu_layers_offloaded(n_gpu_layers, model.n_layer),
            reasoning=reasoning.format,
            tool_format=tool_family.format,
            reasoning_can_disable=reasoning.can_disable,
        )
        marker_pieces = {
            tok: marker.encode() for marker in chat_families.MARKERS if reasoning.family and (tok := model.single_token(marker)) is not None
        }
        fingerprint = model.fingerprint(meta, info.size_bytes)
    except BaseException:
        if context is not None:
            context.close()
        model.close()
        raise
    seeds: random.Random = random.Random(options.seed) if options.seed is not None else random.SystemRandom()
    sessions = SessionStore(options.system_prompt or None, cache_budget)
    return LoadedModel(
        model, context, formatter, info, frozenset(stop_tokens), tuple(stop_strings), seeds, sessions, fingerprint, reasoning, tool_family, marker_pieces
    )


def gpu_layers_offloaded(requested: int, n_layer: int) -> int:
    """Layers llama.cpp will put on a GPU for `n_gpu_layers` (the output layer counts as one more).

    Derived from the request and the build's GPU support, the way llama.cpp
    assigns layers; not read back from llama.cpp, which does not expose it.
    """
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
