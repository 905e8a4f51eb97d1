"""The generate path as a pipeline: a request goes through stages, each with one job.

    build the turn -> plan the thinking -> render -> constrain -> activate the session
        -> sampling -> evaluate the prompt (with cache reuse) -> decode (+ output filters) -> commit

Every stage reads and fills one `GenerationState`, in this order, and none
reaches back into an earlier one. A new concern is a new stage or a new
output filter (a thought splitter, a tool-call parser, a speculative drafter
in front of the decode loop), not a branch inside one long function.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, cast

import protocol
from protocol import ErrorCode, Generate

from .chat_families import ThoughtPlan
from .decode_loop import Calling, Decoded, Thinking, decode
from .errors import WorkerError
from .lanes import ThoughtControl
from .llama_backend import DecodeAborted, LlamaError, Sampler, SamplingParams
from .loading import LoadedModel
from .output_filters import StopMatcher
from .prompt import Rendering, as_messages, fit_turn, prefill_tail
from .session import ChatSession, Turn
from .session_switch import activate
from .structured import StructuredOutputError, grammar_for, is_complete_json
from .thoughts import Kind
from .tool_calls import ToolPlan, plan_tools

DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05
DEFAULT_REPEAT_PENALTY = 1.1
REPEAT_LAST_N = 64

StopReason = Literal["eos", "stop_sequence", "max_tokens", "aborted", "context_full", "tool_calls"]


@dataclass
class GenerationState:
    """One generation as it moves through the stages."""

    request: Generate
    loaded: LoadedModel
    emit: Callable[[Kind, str], None]
    should_abort: Callable[[], bool]
    started_at: float
    thoughts: ThoughtControl = field(default_factory=ThoughtControl)
    # filled by the stages, in order
    session: ChatSession | None = None
    """build: the chat session (None in completion mode)."""
    turn: Turn | None = None
    """build/render: what the reply will be committed with."""
    plan: ThoughtPlan = field(default_factory=ThoughtPlan)
    """plan: how this request thinks (a model that does not: the template variables only)."""
    on_call: Callable[[int, protocol.ToolCall], None] = lambda _index, _call: None
    tools: ToolPlan | None = None
    """plan: the tools the model may call now."""
    lazy_grammar: object | None = None
    """constrain: under tool_choice "auto", the call grammar that joins when a call begins."""
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
            state.turn = state.session.next_turn(as_messages(request.input))
            return
        if not isinstance(request.input, str):
            raise WorkerError.invalid("input: completion mode takes a string")
        prompt = loaded.model.tokenize(request.input, add_special=loaded.model.add_bos, parse_special=True)
        if not prompt:
            raise WorkerError.invalid("input: completion mode needs some text to continue")
        if len(prompt) >= loaded.context.n_ctx:
            raise WorkerError.context_overflow(f"the prompt needs {len(prompt)} tokens but the context holds {loaded.context.n_ctx}")
        state.prompt = prompt


class PlanTools:
    """Chat with tools: check them, build the call grammars (`tool_calls.plan_tools`)."""

    def run(self, state: GenerationState) -> None:
        if state.turn is not None:
            state.tools = plan_tools(state.request, state.loaded.tool_family)


class PlanThoughts:
    """Chat: how a reasoning model thinks for this request (`chat_families`): template variables,
    what to append to the prompt, where the reply starts. A prefill decides where the reply starts."""

    def run(self, state: GenerationState) -> None:
        if state.turn is None:
            return
        request, profile = state.request, state.loaded.reasoning
        forced_call = state.tools is not None and state.tools.forced
        plan = profile.plan(request.reasoning, constrained=request.response_format is not None or forced_call)
        if state.turn.prefill is not None and plan.family is not None:
            tail = prefill_tail(state.loaded, state.turn.prefill, Rendering(plan.variables))
            plan = replace(plan, suffix="", state=plan.family.prompt_state(tail))
        state.plan = plan


class Render:
    """Chat: the template renders the turn, trimmed to the context (`prompt.fit_turn`)."""

    def run(self, state: GenerationState) -> None:
        if state.turn is not None:
            tools = state.tools
            variables = {**state.plan.variables, "tools": tools.template_tools()} if tools is not None else state.plan.variables
            rendering = Rendering(variables, state.plan.suffix, tools.system_addition() if tools is not None else "")
            state.prompt = fit_turn(state.loaded, state.turn, state.request.max_tokens, rendering)


class Constrain:
    """`response_format` becomes the model's grammar sampler prototype (built once per schema, then cached)."""

    def run(self, state: GenerationState) -> None:
        tools = state.tools
        if tools is not None:
            try:
                if tools.forced:
                    state.grammar = state.loaded.model.grammar(tools.full_grammar)
                elif tools.lazy_grammar is not None:
                    state.lazy_grammar = state.loaded.model.grammar(tools.lazy_grammar)
            except LlamaError as exc:
                raise WorkerError.invalid(f"tools: llama.cpp refused the grammar built from them: {exc}") from None
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
    """The token loop, with the output filters (end of turn, thoughts, stop sequences) between the text and the host."""

    def run(self, state: GenerationState) -> None:
        if state.decoded is not None:
            return  # aborted while the prompt was evaluated
        loaded, request, sampling = state.loaded, state.request, state.sampling
        assert sampling is not None
        splitter = state.plan.splitter()
        with ExitStack() as samplers:

            def sampler(grammar: object | None) -> Sampler:
                # The repetition penalty sees the context's tail as if it had sampled it.
                window = loaded.context.tokens[-sampling.repeat_last_n :] if sampling.repeat_last_n > 0 else []
                return samplers.enter_context(Sampler(loaded.model, sampling, window, grammar))  # type: ignore[arg-type]

            thinking = None
            if splitter is not None:
                control = state.thoughts
                thinking = Thinking(
                    splitter,
                    state.plan.budget_tokens,
                    control.end.is_set,
                    lambda now: setattr(control, "thinking", now),
                    # A grammar constrains the answer, not the thought: it joins when the answer begins.
                    (lambda: sampler(state.grammar)) if state.grammar is not None else None,
                )
            first = sampler(state.grammar if thinking is None or thinking.answer_sampler is None else None)
            calling = None
            if state.tools is not None:
                made: list[protocol.ToolCall] = []

                def on_call(call: protocol.ToolCall) -> None:
                    state.on_call(len(made), call)
                    made.append(call)

                lazy = state.lazy_grammar
                parser = state.tools.parser()
                if state.turn is not None and state.turn.prefill:
                    # A prefill may open a call (`<tool_call>`): the parser starts where it ends,
                    # and the history keeps only the prefill's text before the call.
                    shown, _ = parser.feed(state.turn.prefill)
                    state.turn.prefill = shown if parser.in_call else state.turn.prefill
                calling = Calling(parser, on_call, (lambda: sampler(lazy)) if lazy is not None else None)
            state.decoded = decode(
                loaded.model,
                loaded.context,
                first,
                request.max_tokens,
                loaded.context.n_ctx - len(state.prompt),
                loaded.stop_tokens if state.chat else frozenset(),
                StopMatcher(loaded.stop_strings if state.chat else ()),
                StopMatcher(request.stop),
                state.emit,
                state.should_abort,
                state.started_at,
                thinking,
                loaded.marker_pieces,
                calling,
            )


class Commit:
    """The reply joins the session's history, unless it was aborted before any text (then the turn never happened)."""

    def run(self, state: GenerationState) -> None:
        decoded, sessions = state.decoded, state.loaded.sessions
        assert decoded is not None
        if state.session is None or state.turn is None:
            return
        if not (decoded.stop_reason == "aborted" and not decoded.text):
            kept = decoded.reasoning if state.plan.keep_in_history else None
            calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in decoded.tool_calls or []]
            with sessions.lock:
                state.session.commit(state.turn, decoded.text, kept, calls)
        sessions.set_tokens(state.request.session, len(state.loaded.context.tokens))


STAGES: tuple[Stage, ...] = (BuildTurn(), PlanTools(), PlanThoughts(), Render(), Constrain(), Activate(), ChooseSampling(), Evaluate(), Decode(), Commit())


def run_generation(
    loaded: LoadedModel,
    request: Generate,
    emit: Callable[[Kind, str], None],
    should_abort: Callable[[], bool],
    started_at: float,
    thoughts: ThoughtControl | None = None,
    on_call: Callable[[int, protocol.ToolCall], None] | None = None,
) -> protocol.Done:
    """Run every stage; return the `done` reply (partial on abort)."""
    state = GenerationState(request, loaded, emit, should_abort, started_at, thoughts or ThoughtControl())
    if on_call is not None:
        state.on_call = on_call
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
            reasoning_tokens=decoded.reasoning_tokens,
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
        reasoning=decoded.reasoning or None,
        tool_calls=decoded.tool_calls,
    )
