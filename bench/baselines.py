"""What the worker is measured against: llama-cpp-python in the same process.

(a) `Llama` at the worker's settings, (b) `Llama` with the library's defaults
(what a user gets out of the box), (c) the ceiling of this stack: a tight
ctypes loop of `llama_decode` and llama.cpp's own greedy sampler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from worker import llama_backend as B


@dataclass
class StreamTiming:
    tokens: int
    ttft_s: float
    decode_s: float

    @property
    def tokens_per_second(self) -> float:
        return (self.tokens - 1) / self.decode_s if self.tokens > 1 and self.decode_s > 0 else 0.0


def make_llama(model_path: str, **kwargs: object):  # -> llama_cpp.Llama
    from llama_cpp import Llama

    return Llama(model_path=model_path, verbose=False, **kwargs)


def llama_chat_stream(llm, messages: list[dict[str, str]], max_tokens: int) -> StreamTiming:
    """Stream one chat turn through `create_chat_completion`, timing it like a host would."""
    t0 = time.perf_counter()
    first = 0.0
    n = 0
    for chunk in llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            n += 1
            if not first:
                first = time.perf_counter()
    end = time.perf_counter()
    return StreamTiming(n, first - t0, end - first if first else 0.0)


def llama_prefill(llm, prompt: str) -> tuple[int, float]:
    """Tokens and seconds to evaluate `prompt` from an empty cache (first token of a completion)."""
    llm.reset()
    tokens = llm.tokenize(prompt.encode("utf-8"))
    t0 = time.perf_counter()
    for _ in llm.create_completion(tokens, max_tokens=1, temperature=0.0, stream=True):
        break
    return len(tokens), time.perf_counter() - t0


def tight_loop(model: B.Model, prompt_tokens: list[int], n_tokens: int, n_threads: int) -> StreamTiming:
    """llama_decode + the native greedy sampler, with nothing else per token."""
    from llama_cpp import llama_cpp as C

    ctx = B.Context(model, B.ContextParams(n_ctx=4096, n_threads=n_threads))
    try:
        t0 = time.perf_counter()
        ctx.evaluate(prompt_tokens, lambda: False)
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
        one = (C.llama_token * 1)()
        first = 0.0
        n = 0
        cptr = ctx.ptr
        for _ in range(n_tokens):
            tok = C.llama_sampler_sample(chain, cptr, -1)
            n += 1
            if not first:
                first = time.perf_counter()
            one[0] = tok
            if C.llama_decode(cptr, C.llama_batch_get_one(one, 1)) != 0:
                break
        end = time.perf_counter()
        C.llama_sampler_free(chain)
        return StreamTiming(n, first - t0, end - first)
    finally:
        ctx.close()
