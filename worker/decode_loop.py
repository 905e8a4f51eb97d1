"""The decode loop: prompt in, text chunks out, with stop sequences and abort.

Kept apart from the session and the wire so that the per-token path is short
and visible: sample (native), check end of generation, turn bytes into text,
hold back what could be the start of a stop sequence, emit, decode (native).
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .llama_backend import Context, DecodeAborted, Model, Sampler, SamplingParams


class StopMatcher:
    """Finds stop sequences in streamed text without ever emitting part of one.

    Text that could be the beginning of a stop sequence is held back until
    the next piece shows whether it is one.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return (text safe to emit, whether a stop sequence ended it)."""
        if not self._stops:
            return text, False
        buf = self._pending + text
        cut = -1
        for stop in self._stops:
            idx = buf.find(stop)
            if idx != -1 and (cut == -1 or idx < cut):
                cut = idx
        if cut != -1:
            self._pending = ""
            return buf[:cut], True
        hold = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), hold, -1):
                if buf.endswith(stop[:n]):
                    hold = n
                    break
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out


@dataclass
class Outcome:
    text: str
    stop_reason: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    ttft_ms: float
    prompt_ms: float
    decode_s: float

    @property
    def tokens_per_second(self) -> float:
        # The first token's time is prompt evaluation, so rate = (n - 1) / time after it.
        if self.completion_tokens < 2 or self.decode_s <= 0:
            return 0.0
        return (self.completion_tokens - 1) / self.decode_s


def generate(
    model: Model,
    context: Context,
    prompt: Sequence[int],
    sampling: SamplingParams,
    max_tokens: int,
    stop: Sequence[str],
    stop_tokens: frozenset[int],
    emit: Callable[[str], None],
    should_abort: Callable[[], bool],
    started_at: float,
    grammar: object | None = None,
    allow_shift: bool = False,
) -> Outcome:
    """Evaluate `prompt` (reusing the cache) and stream up to `max_tokens` tokens."""
    t_prompt = time.perf_counter()
    out: list[str] = []
    ttft_ms = 0.0
    n_gen = 0
    try:
        cached = context.evaluate(prompt, should_abort, allow_shift)
    except DecodeAborted:
        return Outcome("", "aborted", len(prompt), 0, 0, 0.0, (time.perf_counter() - t_prompt) * 1000, 0.0)
    prompt_ms = (time.perf_counter() - t_prompt) * 1000
    budget = context.n_ctx - len(prompt)
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")
    matcher = StopMatcher(stop)
    t_first = 0.0
    reason = "max_tokens"

    def send(text: str) -> None:
        nonlocal t_first, ttft_ms
        if not out:
            t_first = time.perf_counter()
            ttft_ms = (t_first - started_at) * 1000
        out.append(text)
        emit(text)

    is_eog = model.is_eog
    piece = model.piece
    history = prompt[-max(sampling.repeat_last_n, 0) :] if sampling.repeat_last_n else ()
    with Sampler(model, sampling, history, grammar) as sampler:  # type: ignore[arg-type]
        while True:
            if should_abort():
                reason = "aborted"
                break
            token = sampler.sample(context)
            if is_eog(token) or token in stop_tokens:
                reason = "eos"
                break
            n_gen += 1
            text, matched = matcher.feed(utf8.decode(piece(token)))
            if text:
                send(text)
            if matched:
                reason = "stop_sequence"
                break
            if n_gen >= max_tokens:
                reason = "max_tokens"
                break
            if n_gen >= budget:
                reason = "context_full"
                break
            context.decode_one(token)
    if reason != "stop_sequence":
        tail = matcher.feed(utf8.decode(b"", final=True))[0] + matcher.flush()
        if tail:
            send(tail)
    decode_s = time.perf_counter() - t_first if t_first else 0.0
    return Outcome("".join(out), reason, len(prompt), cached, n_gen, ttft_ms, prompt_ms, decode_s)
