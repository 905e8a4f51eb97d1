"""The one module that touches llama-cpp-python (an upgrade changes it and this file)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from worker import llama_backend as B
from worker.model_locator import default_model_path

LONG = " ".join(f"sentence number {i} about rivers and hills." for i in range(200))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def test_installed_version_is_in_the_supported_range() -> None:
    low, high = re.findall(r"[\d.]+", B.SUPPORTED_VERSIONS)
    assert _version(low) <= _version(B.LIBRARY_VERSION) < _version(high)


def test_amx_detection_reads_cpu_flags() -> None:
    assert B.cpuinfo_has_amx("processor: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile amx_int8\n")
    assert not B.cpuinfo_has_amx("processor: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not B.cpuinfo_has_amx("")
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        assert B.cpu_has_amx() == B.cpuinfo_has_amx(f.read())


def test_threads_default_to_the_cores_we_may_use() -> None:
    assert B.usable_cores() == len(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def model() -> B.Model:
    m = B.Model(str(default_model_path()), B.ModelParams())
    yield m
    m.close()


def test_load_reports_rising_progress_and_can_be_cancelled() -> None:
    seen: list[float] = []
    m = B.Model(str(default_model_path()), B.ModelParams(use_extra_bufts=False), lambda f: seen.append(f) or True)
    m.close()
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    with pytest.raises(B.LlamaError):
        B.Model(str(default_model_path()), B.ModelParams(), lambda f: f < 0.5)


def test_failed_load_carries_llama_cpp_own_explanation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(B.LlamaError) as info:
        B.Model(str(bad), B.ModelParams())
    assert str(info.value)  # llama.cpp's error lines, not an empty message


def test_metadata_and_vocabulary(model: B.Model) -> None:
    meta = model.metadata()
    assert meta["general.architecture"] == "llama"
    assert model.chat_template() and "im_start" in model.chat_template()
    assert model.n_ctx_train == 8192 and model.n_params > 100_000_000
    assert model.single_token("<|im_start|>") is not None
    assert model.single_token("hello world") is None
    tokens = model.tokenize("Hello, world!", add_special=False, parse_special=False)
    assert b"".join(model.piece(t) for t in tokens).decode() == "Hello, world!"
    assert model.is_eog(model.eos)


def test_evaluate_reuses_the_cached_prefix(model: B.Model) -> None:
    ctx = B.Context(model, B.ContextParams(n_ctx=1024, n_threads=B.usable_cores()))
    try:
        a = model.tokenize("The first part of a prompt, and then", add_special=False, parse_special=False)
        b = a + model.tokenize(" some more words", add_special=False, parse_special=False)
        assert ctx.evaluate(a, lambda: False) == 0
        assert ctx.evaluate(b, lambda: False) == len(a)
        assert ctx.evaluate(b, lambda: False) == len(b) - 1  # the last token is evaluated again for its logits
        assert ctx.tokens == b
        c = a[:3] + model.tokenize(" different", add_special=False, parse_special=False)
        assert ctx.evaluate(c, lambda: False) == 3
        assert ctx.tokens == c
    finally:
        ctx.close()


def test_abort_callback_stops_a_prompt_evaluation_and_the_cache_stays_valid(model: B.Model) -> None:
    # One big batch: only the abort callback can stop it before it ends.
    ctx = B.Context(model, B.ContextParams(n_ctx=4096, n_batch=4096, n_threads=B.usable_cores()))
    try:
        tokens = model.tokenize(LONG, add_special=False, parse_special=False)
        assert len(tokens) > 1500
        calls = 0

        def stop_soon() -> bool:
            nonlocal calls
            calls += 1
            return calls > 50  # after the evaluation has started

        with pytest.raises(B.DecodeAborted):
            ctx.evaluate(tokens, stop_soon)
        assert calls > 50, "the callback was not consulted during the batch"
        assert len(ctx.tokens) < len(tokens)
        assert ctx.evaluate(tokens[:100], lambda: False) == 0 or ctx.tokens == tokens[:100]
        assert ctx.tokens == tokens[:100]
    finally:
        ctx.close()


def test_greedy_sampler_is_deterministic(model: B.Model) -> None:
    outs = []
    for _ in range(2):
        ctx = B.Context(model, B.ContextParams(n_ctx=512, n_threads=B.usable_cores()))
        prompt = model.tokenize("Once upon a time", add_special=False, parse_special=False)
        ctx.evaluate(prompt, lambda: False)
        with B.Sampler(model, B.SamplingParams(0.0, 1.0, 0, 0.0, 1.0, 0, 0)) as s:
            out = []
            for _ in range(10):
                tok = s.sample(ctx)
                out.append(tok)
                ctx.decode_one(tok)
        outs.append(out)
        ctx.close()
    assert outs[0] == outs[1]


def test_context_shift_reuses_what_follows_a_dropped_span(model: B.Model) -> None:
    from llama_cpp import llama_cpp as C

    def toks(text: str) -> list[int]:
        return model.tokenize(text, add_special=False, parse_special=False)

    system, old, kept, new = toks("System: be brief."), toks(" the old turn" * 30), toks(" a later turn that stays" * 20), toks(" and now?")
    ctx = B.Context(model, B.ContextParams(n_ctx=1024, n_threads=B.usable_cores()))
    try:
        ctx.evaluate(system + old + kept, lambda: False)
        assert ctx.evaluate(system + kept + new, lambda: False) <= len(system) + 1  # no shift unless allowed
        ctx.evaluate(system + old + kept, lambda: False)
        reused = ctx.evaluate(system + kept + new, lambda: False, allow_shift=True)
        # The kept turn came from the cache, moved back over the dropped one: only the new part was evaluated.
        assert reused >= len(system) + len(kept) - 1
        assert ctx.tokens == system + kept + new
        memory = C.llama_get_memory(ctx.ptr)
        assert C.llama_memory_seq_pos_max(memory, 0) + 1 == len(ctx.tokens)
        # Decoding goes on at the right position.
        with B.Sampler(model, B.SamplingParams(0.0, 1.0, 0, 0.0, 1.0, 0, 0)) as s:
            tok = s.sample(ctx)
            ctx.decode_one(tok)
        assert C.llama_memory_seq_pos_max(memory, 0) + 1 == len(ctx.tokens) == len(system + kept + new) + 1
        # A prompt that shares too little after the cut is simply evaluated.
        reused = ctx.evaluate(system + toks(" something else entirely") * 3, lambda: False, allow_shift=True)
        assert reused <= len(system) + 1
    finally:
        ctx.close()
