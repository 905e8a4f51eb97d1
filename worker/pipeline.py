"""The generate path as a pipeline: a request goes through stages, each with one job.

    build the turn -> render -> constrain -> activate the session -> sampling
        -> evaluate the prompt (with cache reuse) -> decode (+ output filters) -> commit

Every stage reads and fills one `GenerationState`, in this order, and none
reaches back into an earlier one. A new concern is a new stage or a new
output filter (a thought splitter, a tool-call parser, a speculative drafter
in front of the decode loop), not a branch inside one long function.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, cast

import protocol
from protocol import ErrorCode, Generate

from .decode_loop import Decoded, decode
from .errors import WorkerError
from .llama_backend import DecodeAborted, LlamaError, Sampler, SamplingParams
from .loading import LoadedModel
from .output_filters import OutputFilter, StopMatcher
from .prompt import turn_prompt
from .session import ChatSession, Turn
from .session_switch import activate
from .structured import StructuredOutputError, grammar_for, is_complete_json

DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05
DEFAULT_REPEAT_PENALTY = 1.1
REPEAT_LAST_N = 64

StopReason = Literal["eos", "stop_sequence", "max_tokens", "aborted", "context_full"]


@dataclass
class GenerationState:
    """One generation as it moves through the stages."""

    request: Generate
    loaded: LoadedModel
    emit: Callable[[str], None]
    should_abort: Callable[[], bool]
    started_at: float
    # filled by the stages, in order
    session: ChatSession | None = None
    """build: the chat session (None in completion mode)."""
    turn: Turn | None = None
    """build/render: what the reply will be committed with."""
    prompt: list[int] = field(default_factory=list)
    """render: the prompt's tokens."""
    grammar: object | None = None
    """constrain: the grammar sampler prototype of `response_format`."""
    sampling: SamplingParams | None = None
    cached_tokens: int = 0
    """evaluate: prompt tokens reused from the KV cache."""
    prompt_ms: float = 0.0
    decoded: Decoded | None = None
    """decode: the text and why it stopped (an abort during evaluation sets it too)."""

    @property
    def chat(self) -> bool:
        return self.request.mode == "chat"


class Stage(Protocol):
    def run(self, state: GenerationState) -> None: ...


class BuildTurn:
    """Chat: the session and the turn the input makes. Completion: the input's tokens as they are."""

    def run(self, state: GenerationState) -> None:
        request, loaded = state.request, state.loaded
        if state.chat:
            state.session = loaded.sessions.get(request.session)
            return
        if not isinstance(request.input, str):
            raise WorkerError.invalid("input: completion mode takes a string")
        prompt = loaded.model.tokenize(request.input, add_special=loaded.model.add_bos, parse_special=True)
        if not prompt:
            raise WorkerError.invalid("input: completion mode needs some text to continue")
        if len(prompt) >= loaded.context.n_ctx:
            raise WorkerError.context_overflow(f"the prompt needs {len(prompt)} tokens but the context holds {loaded.context.n_ctx}")
        state.prompt = prompt


class Render:
    """Chat: the template renders the turn, trimmed to the context (`prompt.turn_prompt`)."""

    def run(self, state: GenerationState) -> None:
        if state.session is not None:
            state.turn, state.prompt = turn_prompt(state.loaded, state.session, state.request.input, state.request.max_tokens)


class Constrain:
    """`response_format` becomes the model's grammar sampler prototype (built once per schema, then cached)."""

    def run(self, state: GenerationState) -> None:
        fmt = state.request.response_format
        if fmt is None:
            return
        try:
            state.grammar = state.loaded.model.grammar(grammar_for(fmt.type, fmt.schema))
        except StructuredOutputError as exc:
            raise WorkerError.invalid(str(exc)) from None
        except LlamaError as exc:
            raise WorkerError.invalid(f"response_format.schema: llama.cpp refused the grammar built from it: {exc}") from None


class Activate:
    """The context goes to this session (a completion belongs to none)."""

    def run(self, state: GenerationState) -> None:
        activate(state.loaded.sessions, state.loaded.context, state.request.session if state.chat else None)


class ChooseSampling:
    """The sampler's parameters: the request's, else the defaults; a seed from the load's sequence if none is given."""

    def run(self, state: GenerationState) -> None:
        r = state.request
        seed = r.seed if r.seed is not None else state.loaded.seeds.randrange(0, 0xFFFFFFFF)
        state.sampling = SamplingParams(
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=DEFAULT_TOP_K if r.top_k is None else r.top_k,
            min_p=DEFAULT_MIN_P if r.min_p is None else r.min_p,
            repeat_penalty=DEFAULT_REPEAT_PENALTY if r.repeat_penalty is None else r.repeat_penalty,
            repeat_last_n=REPEAT_LAST_N,
            seed=seed,
        )


class Evaluate:
    """The prompt into the KV cache, reusing its longest matching prefix (shifting the context when turns were trimmed)."""

    def run(self, state: GenerationState) -> None:
        t0 = time.perf_counter()
        allow_shift = state.turn is not None and state.turn.truncated > 0
        try:
            state.cached_tokens = state.loaded.context.evaluate(state.prompt, state.should_abort, allow_shift)
        except DecodeAborted:
            state.decoded = Decoded("", "aborted", 0, 0.0, 0.0)
        state.prompt_ms = (time.perf_counter() - t0) * 1000


class Decode:
    """The token loop, with the output filters (stop sequences) between the text and the host."""

    def run(self, state: GenerationState) -> None:
        if state.decoded is not None:
            return  # aborted while the prompt was evaluated
        loaded, request = state.loaded, state.request
        assert state.sampling is not None
        stops = [*request.stop, *loaded.stop_strings] if state.chat else list(request.stop)
        filters: list[OutputFilter] = [StopMatcher(stops)]
        # The prompt's tail, as the repetition penalty would have seen it.
        repeat_window = state.prompt[-state.sampling.repeat_last_n :] if state.sampling.repeat_last_n > 0 else []
        with Sampler(loaded.model, state.sampling, repeat_window, state.grammar) as sampler:  # type: ignore[arg-type]
            state.decoded = decode(
                loaded.model,
                loaded.context,
                sampler,
                request.max_tokens,
                loaded.context.n_ctx - len(state.prompt),
                loaded.stop_tokens if state.chat else frozenset(),
                filters,
                state.emit,
                state.should_abort,
                state.started_at,
            )


class Commit:
    """The reply joins the session's history, unless it was aborted before any text (then the turn never happened)."""

    def run(self, state: GenerationState) -> None:
        decoded, sessions = state.decoded, state.loaded.sessions
        assert decoded is not None
        if state.session is None or state.turn is None:
            return
        if not (decoded.stop_reason == "aborted" and not decoded.text):
            with sessions.lock:
                state.session.commit(state.turn, decoded.text)
        sessions.set_tokens(state.request.session, len(state.loaded.context.tokens))


STAGES: tuple[Stage, ...] = (BuildTurn(), Render(), Constrain(), Activate(), ChooseSampling(), Evaluate(), Decode(), Commit())


def run_generation(
    loaded: LoadedModel,
    request: Generate,
    emit: Callable[[str], None],
    should_abort: Callable[[], bool],
    started_at: float,
) -> protocol.Done:
    """Run every stage; return the `done` reply (partial on abort)."""
    state = GenerationState(request, loaded, emit, should_abort, started_at)
    for stage in STAGES:
        try:
            stage.run(state)
        except LlamaError as exc:
            raise WorkerError(ErrorCode.GENERATION_FAILED, f"generation failed: {exc}") from None
    return _done(state)


def _done(state: GenerationState) -> protocol.Done:
    decoded, request, sampling = state.decoded, state.request, state.sampling
    assert decoded is not None and sampling is not None
    return protocol.Done(
        id=request.id,
        text=decoded.text,
        stop_reason=cast(StopReason, decoded.stop_reason),
        usage=protocol.Usage(
            prompt_tokens=len(state.prompt),
            cached_tokens=state.cached_tokens,
            completion_tokens=decoded.completion_tokens,
        ),
        timings=protocol.Timings(
            ttft_ms=round(decoded.ttft_ms, 3),
            total_ms=round((time.perf_counter() - state.started_at) * 1000, 3),
            tokens_per_second=round(decoded.tokens_per_second, 3),
            prompt_ms=round(state.prompt_ms, 3),
        ),
        truncated_messages=state.turn.truncated if state.turn is not None else 0,
        seed=None if request.temperature <= 0.0 else sampling.seed,
        incomplete=state.grammar is not None and decoded.stop_reason != "eos" and not is_complete_json(decoded.text),
    )
