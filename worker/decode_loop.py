"""The decode loop: the per-token path of a generation, kept short and visible.

Sample (native), check end of generation, turn bytes into text, pass it
through the output filters (which hold back what could be the start of a stop
sequence), emit, decode the token (native). Prompt evaluation happens before
(the pipeline's evaluate stage); what becomes of the text after (the session,
the reply) is the commit stage's.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .llama_backend import Context, Model, Sampler
from .output_filters import OutputFilter


@dataclass
class Decoded:
    """What the loop produced."""

    text: str
    stop_reason: str
    completion_tokens: int
    ttft_ms: float
    """From `started_at` to the first emitted text."""
    decode_s: float
    """From the first emitted text to the end."""

    @property
    def tokens_per_second(self) -> float:
        # The first token's time is prompt evaluation, so rate = (n - 1) / time after it.
        if self.completion_tokens < 2 or self.decode_s <= 0:
            return 0.0
        return (self.completion_tokens - 1) / self.decode_s


def decode(
    model: Model,
    context: Context,
    sampler: Sampler,
    max_tokens: int,
    budget: int,
    stop_tokens: frozenset[int],
    filters: Sequence[OutputFilter],
    emit: Callable[[str], None],
    should_abort: Callable[[], bool],
    started_at: float,
) -> Decoded:
    """Generate up to `max_tokens` tokens (and at most `budget`, the room left in the context)."""
    out: list[str] = []
    t_first = 0.0
    ttft_ms = 0.0
    n_gen = 0
    reason = "max_tokens"
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def send(text: str) -> None:
        nonlocal t_first, ttft_ms
        if not out:
            t_first = time.perf_counter()
            ttft_ms = (t_first - started_at) * 1000
        out.append(text)
        emit(text)

    def through_filters(text: str) -> tuple[str, bool]:
        for f in filters:
            text, stop = f.feed(text)
            if stop:
                return text, True
        return text, False

    is_eog = model.is_eog
    piece = model.piece
    while True:
        if should_abort():
            reason = "aborted"
            break
        token = sampler.sample(context)
        if is_eog(token) or token in stop_tokens:
            reason = "eos"
            break
        n_gen += 1
        text, stopped = through_filters(utf8.decode(piece(token)))
        if text:
            send(text)
        if stopped:
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
        # What the decoder and each filter still hold, passed on down the chain.
        tail = utf8.decode(b"", final=True)
        for f in filters:
            tail = f.feed(tail)[0] + f.flush()
        if tail:
            send(tail)
    decode_s = time.perf_counter() - t_first if t_first else 0.0
    return Decoded("".join(out), reason, n_gen, ttft_ms, decode_s)
