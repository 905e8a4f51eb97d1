"""The decode loop: the per-token path of a generation, kept short and visible.

Sample (native), check end of generation, turn bytes into text, pass it
through the output filters, emit, decode the token (native). The filters run
in this order: the template's end-of-turn strings on the raw text, then the
thought splitter of a reasoning model (thought text goes out as such; only
the answer goes on), then the request's stop sequences on the answer.

A thought is also where the worker may write for the model: when the thought
budget is spent or `end_reasoning` asks, the model's own end-of-thought marker
goes into the context and the model answers; a grammar (`response_format`)
takes over sampling once the answer begins.

Prompt evaluation happens before (the pipeline's evaluate stage); what becomes
of the text after (the session, the reply) is the commit stage's.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import protocol

from .llama_backend import Context, Model, Sampler
from .output_filters import StopMatcher
from .thoughts import Kind, Segment, ThoughtSplitter
from .tool_calls import ToolCallParser


@dataclass
class Decoded:
    """What the loop produced."""

    text: str
    stop_reason: str
    completion_tokens: int
    ttft_ms: float
    """From `started_at` to the first emitted text."""
    decode_s: float
    """From the first sampled token to the end (a reply of tool calls emits no text, yet has a rate)."""
    reasoning: str = ""
    reasoning_tokens: int = 0
    tool_calls: list[protocol.ToolCall] | None = None

    @property
    def tokens_per_second(self) -> float:
        # The first token's time is prompt evaluation, so rate = (n - 1) / time after it.
        if self.completion_tokens < 2 or self.decode_s <= 0:
            return 0.0
        return (self.completion_tokens - 1) / self.decode_s


@dataclass
class Thinking:
    """A reasoning model's side of the loop."""

    splitter: ThoughtSplitter
    budget_tokens: int | None
    end_requested: Callable[[], bool]
    report: Callable[[bool], None]
    """Told whether the model is thinking, after every token (`end_reasoning` reads it)."""
    answer_sampler: Callable[[], Sampler] | None = None
    """The grammar's sampler, made when the answer begins."""

    def must_close(self, reasoning_tokens: int) -> bool:
        if not self.splitter.in_thought:
            return False
        return (self.budget_tokens is not None and reasoning_tokens >= self.budget_tokens) or self.end_requested()


@dataclass
class Calling:
    """Tool calls: the parser in the answer's path, and the grammar that joins when a call begins."""

    parser: ToolCallParser
    on_call: Callable[[protocol.ToolCall], None]
    lazy_sampler: Callable[[], Sampler] | None = None


class _Output:
    """Where text goes: thought text out at once; answer text through the tool-call parser, then the stop sequences."""

    def __init__(self, emit: Callable[[Kind, str], None], stops: StopMatcher, started_at: float, calling: Calling | None = None) -> None:
        self._emit = emit
        self._stops = stops
        self._calling = calling
        self._started_at = started_at
        self.answer: list[str] = []
        self.reasoning: list[str] = []
        self.t_first = 0.0
        self.ttft_ms = 0.0

    def _send(self, kind: Kind, text: str) -> None:
        if not text:
            return
        if not self.t_first:
            self.t_first = time.perf_counter()
            self.ttft_ms = (self.t_first - self._started_at) * 1000
        (self.reasoning if kind == "reasoning" else self.answer).append(text)
        self._emit(kind, text)

    def segment(self, kind: Kind, text: str) -> bool:
        """Pass one segment on; True when a stop sequence ended the answer."""
        if kind == "reasoning":
            self._send(kind, text)
            return False
        if self._calling is not None:
            text, calls = self._calling.parser.feed(text)
            for call in calls:
                self._calling.on_call(call)
        text, stopped = self._stops.feed(text)
        self._send("text", text)
        return stopped

    def flush_answer(self) -> None:
        if self._calling is not None:
            self._send("text", self._stops.feed(self._calling.parser.flush())[0])
        self._send("text", self._stops.flush())


def decode(
    model: Model,
    context: Context,
    sampler: Sampler,
    max_tokens: int,
    budget: int,
    stop_tokens: frozenset[int],
    template_stops: StopMatcher,
    stops: StopMatcher,
    emit: Callable[[Kind, str], None],
    should_abort: Callable[[], bool],
    started_at: float,
    thinking: Thinking | None = None,
    marker_pieces: Mapping[int, bytes] | None = None,
    calling: Calling | None = None,
) -> Decoded:
    """Generate up to `max_tokens` tokens (and at most `budget`, the room left in the context)."""
    out = _Output(emit, stops, started_at, calling)
    n_gen = n_reasoning = written = 0
    t_token0 = 0.0
    reason = "max_tokens"
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")
    splitter = thinking.splitter if thinking is not None else None
    grammar_pending = thinking is not None and thinking.answer_sampler is not None

    def through(raw: str) -> bool:
        """Raw text through the filters; True when a stop sequence or end-of-turn string ended the reply."""
        text, ended = template_stops.feed(raw)
        segments: list[Segment] = splitter.feed(text) if splitter is not None else [("text", text)]
        for kind, part in segments:
            if out.segment(kind, part):
                return True
        return ended

    is_eog = model.is_eog
    piece = model.piece
    specials = marker_pieces or {}
    while True:
        if should_abort():
            reason = "aborted"
            break
        if thinking is not None:
            assert splitter is not None
            if thinking.must_close(n_reasoning):
                inject, held = splitter.close_thought()
                for kind, part in held:
                    out.segment(kind, part)
                tokens = model.tokenize(inject, add_special=False, parse_special=True)
                if n_gen + written + len(tokens) >= budget:
                    reason = "context_full"
                    break
                context.append(tokens)
                written += len(tokens)
            thinking.report(splitter.in_thought)
            if grammar_pending and splitter.answering:
                assert thinking.answer_sampler is not None
                sampler = thinking.answer_sampler()
                grammar_pending = False
        if calling is not None and calling.lazy_sampler is not None and calling.parser.in_call:
            sampler = calling.lazy_sampler()  # a call has begun: from here on it can only be a valid one
            calling.lazy_sampler = None
        token = sampler.sample(context)
        if (is_eog(token) or token in stop_tokens) and grammar_pending and splitter is not None and splitter.in_thought:
            # The model would end inside its thought, but a grammar waits for the answer (JSON, a
            # tool call): end the thought instead, and let the answer come.
            assert thinking is not None
            thinking.end_requested = lambda: True
            continue
        if is_eog(token) or token in stop_tokens:
            reason = "eos"
            break
        n_gen += 1
        if n_gen == 1:
            t_token0 = time.perf_counter()
        was_thinking = splitter is not None and splitter.in_thought
        stopped = through(utf8.decode(specials.get(token) or piece(token)))
        if was_thinking or (splitter is not None and splitter.in_thought):
            n_reasoning += 1
        if stopped:
            reason = "stop_sequence"
            break
        if n_gen >= max_tokens:
            reason = "max_tokens"
            break
        if n_gen + written >= budget:
            reason = "context_full"
            break
        context.decode_one(token)
    if thinking is not None:
        thinking.report(False)
    if reason != "stop_sequence":
        # What the decoder and each filter still hold, passed on down the chain.
        tail = template_stops.feed(utf8.decode(b"", final=True))[0] + template_stops.flush()
        rest: list[Segment] = [*splitter.feed(tail), *splitter.flush()] if splitter is not None else [("text", tail)]
        for kind, part in rest:
            out.segment(kind, part)
        out.flush_answer()
    decode_s = time.perf_counter() - t_token0 if n_gen else 0.0
    calls = calling.parser.calls if calling is not None and calling.parser.calls else None
    if calls and reason in ("eos", "stop_sequence"):
        reason = "tool_calls"
    return Decoded("".join(out.answer), reason, n_gen, out.ttft_ms, decode_s, "".join(out.reasoning), n_reasoning, calls)
