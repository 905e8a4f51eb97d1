"""The worker process through real pipes with the real default model (issue 3)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import protocol as P
from tests.harness import REPO_ROOT, RawWorker, pid_alive, wait_until
from tests.models import with_template, without_template

LONG_TEXT = " ".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog near the river bank." for i in range(90))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


# ---------------------------------------------------------------------------
# handshake and state
# ---------------------------------------------------------------------------


class TestHandshake:
    def test_ready_describes_the_worker(self, raw_worker: RawWorker) -> None:
        ready = raw_worker.init()
        assert ready.protocol_version == 1
        assert ready.pid == raw_worker.proc.pid
        assert ready.llama_cpp_version.startswith("0.3.")
        assert {"prefill_abort", "load_progress", "completion_mode"} <= set(ready.capabilities)

    def test_unknown_protocol_version_is_refused(self, raw_worker: RawWorker) -> None:
        err = raw_worker.error_for(P.Init(id="v", protocol_version=2))
        assert err.code == "protocol_mismatch" and err.id == "v" and not err.retryable
        raw_worker.init()  # and a correct init still works

    def test_before_init_only_ping_is_served(self, raw_worker: RawWorker) -> None:
        rid = raw_worker.request(P.Ping)
        assert raw_worker.terminal(rid)[0] == P.Pong(id=rid)
        for msg in (
            P.Load(id=10),
            P.Generate(id=11, input="hi"),
            P.Reset(id=12),
            P.Abort(id=13),
            P.Cleanup(id=14),
        ):
            err = raw_worker.error_for(msg)
            assert err.code == "not_initialized" and err.id == msg.id

    def test_unknown_type_is_answered_in_any_state(self, raw_worker: RawWorker) -> None:
        raw_worker.send_raw(P.frame(b'{"type":"teleport","id":"t1"}'))
        err, _ = raw_worker.terminal("t1")
        assert err.code == "unknown_type"
        raw_worker.init()
        raw_worker.send_raw(P.frame(b'{"type":"teleport","id":"t2"}'))
        err, _ = raw_worker.terminal("t2")
        assert err.code == "unknown_type"

    def test_requests_without_a_model_get_no_model(self, raw_worker: RawWorker) -> None:
        raw_worker.init()
        assert raw_worker.error_for(P.Generate(id=1, input="hi")).code == "no_model"
        assert raw_worker.error_for(P.Reset(id=2)).code == "no_model"


# ---------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------


class TestLoad:
    def test_progress_rises_then_loaded_with_defaults(self, raw_worker: RawWorker) -> None:
        raw_worker.init()
        rid = raw_worker.request(P.Load)
        loaded, before = raw_worker.terminal(rid)
        assert isinstance(loaded, P.Loaded), loaded
        fractions = [m.fraction for m in before if isinstance(m, P.Progress)]
        assert fractions and fractions[-1] == 1.0
        assert all(a < b for a, b in zip(fractions, fractions[1:], strict=False)), fractions
        model = loaded.model
        assert model.n_ctx_train == 8192 and model.n_ctx == 4096
        assert model.n_threads == len(os.sched_getaffinity(0))
        assert model.n_gpu_layers == 0
        assert model.chat_format == "gguf" and model.architecture == "llama"
        assert model.size_bytes == Path(model.path).stat().st_size

    def test_missing_file_is_model_not_found_and_worker_survives(self, worker: RawWorker) -> None:
        err = worker.error_for(P.Load(id="m", model_path="/nonexistent/model.gguf"))
        assert err.code == "model_not_found" and "/nonexistent/model.gguf" in err.message
        done, _ = worker.generate("Say hi", max_tokens=4)
        assert done.stop_reason in ("max_tokens", "eos")

    @pytest.mark.parametrize("kind", ["folder", "empty", "garbage", "truncated", "gguf-header-junk"])
    def test_bad_files_are_load_failed(self, raw_worker: RawWorker, tmp_path: Path, kind: str) -> None:
        from worker.model_locator import default_model_path

        path = tmp_path / f"{kind}.gguf"
        if kind == "folder":
            path.mkdir()
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "garbage":
            path.write_bytes(os.urandom(4096))
        elif kind == "truncated":
            path.write_bytes(default_model_path().read_bytes()[: 3 * 1024 * 1024])
        else:
            path.write_bytes(b"GGUF" + os.urandom(8192))
        raw_worker.init()
        err = raw_worker.error_for(P.Load(id=kind, model_path=str(path)))
        assert err.code == "load_failed", err
        assert str(path) in err.message
        raw_worker.load()  # still serving

    def test_failed_load_keeps_previous_model_and_session(self, worker: RawWorker) -> None:
        worker.generate("My name is Ada.", max_tokens=8)
        err = worker.error_for(P.Load(id="x", model_path="/nope.gguf"))
        assert err.code == "model_not_found"
        done, _ = worker.generate("What is my name?", max_tokens=8)
        # The session still holds turn one: the prompt reuses its cached tokens.
        assert done.usage.cached_tokens > 0

    def test_load_replaces_model_and_starts_fresh_session(self, worker: RawWorker) -> None:
        worker.generate("Remember: blue.", max_tokens=8)
        loaded = worker.load(n_ctx=1024, system_prompt="You are terse.")
        assert loaded.model.n_ctx == 1024
        done, _ = worker.generate("Hi", max_tokens=4)
        assert done.usage.cached_tokens == 0

    def test_abort_a_load(self, raw_worker: RawWorker) -> None:
        raw_worker.init()
        rid = raw_worker.request(P.Load)
        raw_worker.request(P.Abort, target=rid)
        reply, _ = raw_worker.terminal(rid)
        # A load this small may finish before the abort lands; both are valid,
        # but an aborted one must say so and leave no model behind.
        if isinstance(reply, P.Error):
            assert reply.code == "aborted" and reply.retryable
            assert raw_worker.error_for(P.Generate(id="g", input="hi")).code == "no_model"
        else:
            assert isinstance(reply, P.Loaded)

    def test_abort_during_load_progress(self, raw_worker: RawWorker) -> None:
        raw_worker.init()
        # Wait for the first progress event, then abort: the load is then
        # certainly running, and its progress callback must cancel it.
        rid = raw_worker.request(P.Load, use_extra_bufts=False)
        first, _ = raw_worker.until(lambda m: getattr(m, "id", None) == rid)
        if isinstance(first, P.Progress) and first.fraction < 1.0:
            raw_worker.request(P.Abort, target=rid)
            reply, _ = raw_worker.terminal(rid)
            assert isinstance(reply, (P.Error, P.Loaded))
            if isinstance(reply, P.Error):
                assert reply.code == "aborted"
        raw_worker.load()

    def test_template_less_model_gets_a_detected_format(self, raw_worker: RawWorker, model_dir: Path) -> None:
        path = without_template(model_dir)
        raw_worker.init()
        loaded = raw_worker.load(model_path=str(path), system_prompt="Always answer in one short sentence.")
        assert loaded.model.chat_format == "chatml"
        assert loaded.model.chat_format_source == "detected"
        assert loaded.model.system_prompt_mode == "native"
        done, chunks = raw_worker.generate("What is the capital of France?", max_tokens=40)
        assert done.stop_reason == "eos", done  # it knows where its turn ends
        assert "".join(chunks) == done.text and done.text.strip()
        assert "<|im_" not in done.text

    def test_broken_template_is_load_failed(self, raw_worker: RawWorker, model_dir: Path) -> None:
        path = with_template(model_dir, "broken.gguf", "{% for m in messages %}{{ m.content | nosuchfilter }}{% endfor %}")
        raw_worker.init()
        err = raw_worker.error_for(P.Load(id="b", model_path=str(path)))
        assert err.code == "load_failed" and "template" in err.message

    def test_template_injection_runs_no_code(self, raw_worker: RawWorker, model_dir: Path, tmp_path: Path) -> None:
        marker = tmp_path / "pwned"
        evil = (
            "{{ ''.__class__.__mro__[1].__subclasses__() }}"
            "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}"
            "{% for m in messages %}{{ m.content }}{% endfor %}"
        )
        path = with_template(model_dir, "evil.gguf", evil)
        raw_worker.init()
        err = raw_worker.error_for(P.Load(id="e", model_path=str(path)))
        assert err.code == "load_failed"
        assert not marker.exists()
        raw_worker.load()

    def test_system_refusing_template_merges_system_prompt(self, raw_worker: RawWorker, model_dir: Path) -> None:
        template = (
            "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
            "{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        )
        path = with_template(model_dir, "nosystem.gguf", template)
        raw_worker.init()
        loaded = raw_worker.load(model_path=str(path), system_prompt="Reply with the word OK.")
        assert loaded.model.system_prompt_mode == "merged"
        done, _ = raw_worker.generate("Hello", max_tokens=8)
        assert done.stop_reason in ("eos", "max_tokens")


# ---------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------


class TestGenerate:
    def test_chunks_join_to_text_and_usage_is_reported(self, worker: RawWorker) -> None:
        done, chunks = worker.generate("Write one sentence about the sea.", max_tokens=48)
        assert chunks and "".join(chunks) == done.text
        assert done.usage.prompt_tokens > 5 and done.usage.cached_tokens == 0
        assert 0 < done.usage.completion_tokens <= 48
        assert done.timings.ttft_ms > 0 and done.timings.total_ms >= done.timings.ttft_ms
        assert done.seed is None  # greedy

    def test_max_tokens_stops_generation(self, worker: RawWorker) -> None:
        done, _ = worker.generate(LONG_TEXT[:300] + " Continue the list.", max_tokens=5)
        assert done.stop_reason == "max_tokens" and done.usage.completion_tokens == 5

    def test_history_is_kept_and_follow_up_reuses_the_cache(self, worker: RawWorker) -> None:
        first, _ = worker.generate("My favourite colour is green. Say OK.", max_tokens=16)
        second, _ = worker.generate("What did I say my favourite colour was?", max_tokens=16)
        # Turn two's prompt contains turn one; only the new part is evaluated.
        assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens - 2
        assert second.usage.cached_tokens >= first.usage.prompt_tokens
        assert second.usage.prompt_tokens - second.usage.cached_tokens < 40

    def test_message_list_replaces_history(self, worker: RawWorker) -> None:
        worker.generate("Remember the number 7.", max_tokens=8)
        done, _ = worker.generate(
            [
                {"role": "system", "content": "You are a pirate."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Arr!"},
                {"role": "user", "content": "Who are you?"},
            ],
            max_tokens=8,
        )
        replaced_prompt = done.usage.prompt_tokens
        # A string follows the replaced history: its prompt extends it.
        follow, _ = worker.generate("And then?", max_tokens=4)
        assert follow.usage.cached_tokens >= replaced_prompt
        assert follow.usage.prompt_tokens > replaced_prompt

    def test_bad_message_lists_are_invalid_and_session_survives(self, worker: RawWorker) -> None:
        first, _ = worker.generate("Hello there.", max_tokens=8)
        for bad in (
            [],
            [{"role": "assistant", "content": "b"}],
            [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "user", "content": "c"}],
        ):
            err = worker.error_for(P.Generate(id="bad", input=[P.ChatMessage(**m) for m in bad]))
            assert err.code == "invalid_request", err
        err = worker.error_for(P.Generate(id="bad2", input=[P.ChatMessage(role="user", content="x")], mode="completion"))
        assert err.code == "invalid_request"
        follow, _ = worker.generate("Again.", max_tokens=4)
        assert follow.usage.cached_tokens >= first.usage.prompt_tokens

    def test_wrong_field_types_name_the_field(self, worker: RawWorker) -> None:
        worker.send_raw(P.frame(b'{"type":"generate","id":"w","input":"hi","max_tokens":"many"}'))
        err, _ = worker.terminal("w")
        assert err.code == "invalid_request" and "max_tokens" in err.message
        worker.send_raw(P.frame(b'{"type":"generate","id":"w2","input":"hi","temperature":-1}'))
        err, _ = worker.terminal("w2")
        assert err.code == "invalid_request" and "temperature" in err.message

    def test_stop_sequences_are_not_emitted(self, worker: RawWorker) -> None:
        question = "Write a sentence about autumn leaves."
        probe, _ = worker.generate(question, max_tokens=40)
        assert len(probe.text) > 24, probe.text
        stop = probe.text[12:16]  # greedy output repeats, so this will come again
        worker.request(P.Reset)
        worker.terminal(worker._next_id)
        done, chunks = worker.generate(question, max_tokens=40, stop=["@@never@@", stop])
        assert done.stop_reason == "stop_sequence"
        assert done.text == probe.text[: probe.text.index(stop)]
        assert "".join(chunks) == done.text and stop not in done.text

    def test_temperature_zero_is_deterministic_across_processes(self, worker: RawWorker) -> None:
        # Same cache state, same output. (A cache-reusing evaluation may differ
        # from a fresh one: llama.cpp's batched and single-token kernels round
        # differently, as llama-server documents for cache_prompt.)
        a, _ = worker.generate("Name three fruits.", max_tokens=20)
        other = RawWorker()
        try:
            other.init()
            other.load()
            b, _ = other.generate("Name three fruits.", max_tokens=20)
        finally:
            other.close()
        assert a.text == b.text

    def test_seed_reproduces_and_no_seed_differs(self, worker: RawWorker) -> None:
        texts = []
        for seed in (1234, 1234):
            worker.request(P.Reset)
            worker.terminal(worker._next_id)
            done, _ = worker.generate("Invent a name for a cat.", temperature=1.0, seed=seed, max_tokens=24)
            assert done.seed == seed
            texts.append(done.text)
        assert texts[0] == texts[1]
        seeds = set()
        for _ in range(3):
            worker.request(P.Reset)
            worker.terminal(worker._next_id)
            done, _ = worker.generate("Invent a name for a cat.", temperature=1.0, max_tokens=24)
            seeds.add(done.seed)
        assert len(seeds) == 3

    def test_fresh_processes_sample_differently(self) -> None:
        outputs = set()
        for _ in range(2):
            w = RawWorker()
            try:
                w.init()
                w.load()
                done, _ = w.generate("Write a random word.", temperature=1.5, max_tokens=16)
                outputs.add((done.seed, done.text))
            finally:
                w.close()
        assert len({s for s, _ in outputs}) == 2

    def test_completion_mode_leaves_the_session_alone(self, worker: RawWorker) -> None:
        chat1, _ = worker.generate("Hello!", max_tokens=8)
        comp, chunks = worker.generate("The capital of France is", mode="completion", max_tokens=8)
        assert comp.usage.prompt_tokens < 10 and "".join(chunks) == comp.text
        chat2, _ = worker.generate("How are you?", max_tokens=8)
        # The chat prompt still holds turn one (and not the completion text).
        assert chat2.usage.prompt_tokens > chat1.usage.prompt_tokens + chat1.usage.completion_tokens - 2

    def test_reset_clears_history_and_sets_system_prompt(self, worker: RawWorker) -> None:
        worker.generate("Remember the word banana.", max_tokens=16)
        before, _ = worker.generate("Okay?", max_tokens=4)
        rid = worker.request(P.Reset, system_prompt="You are a helpful robot.")
        assert worker.terminal(rid)[0] == P.Ok(id=rid)
        after, _ = worker.generate("Okay?", max_tokens=4)
        assert after.usage.prompt_tokens < before.usage.prompt_tokens

    def test_cleanup_frees_and_load_works_again(self, worker: RawWorker) -> None:
        rid = worker.request(P.Cleanup)
        assert worker.terminal(rid)[0] == P.Ok(id=rid)
        assert worker.error_for(P.Generate(id="g", input="hi")).code == "no_model"
        worker.load()
        done, _ = worker.generate("Hi", max_tokens=4)
        assert done.usage.completion_tokens > 0


# ---------------------------------------------------------------------------
# context management
# ---------------------------------------------------------------------------


class TestContext:
    def test_long_conversation_trims_oldest_turns(self, raw_worker: RawWorker) -> None:
        raw_worker.init()
        raw_worker.load(n_ctx=512, system_prompt="You are a patient assistant.")
        truncated_total = 0
        shifted = 0
        for i in range(14):
            done, _ = raw_worker.generate(f"Turn {i}: " + LONG_TEXT[:200], max_tokens=48)
            assert done.usage.prompt_tokens + 48 <= 512
            truncated_total += done.truncated_messages
            if done.truncated_messages:
                # Context shift: the turns that stayed came from the cache, not evaluated again.
                shifted += done.usage.cached_tokens > done.usage.prompt_tokens // 2
        assert truncated_total > 0 and shifted > 0
        # The system prompt survived trimming: the prompt still starts with it,
        # so a later turn reuses at least its tokens from the cache.
        done, _ = raw_worker.generate("Last question.", max_tokens=8)
        assert done.usage.cached_tokens > 5

    def test_input_that_cannot_fit_is_context_overflow(self, raw_worker: RawWorker) -> None:
        raw_worker.init()
        raw_worker.load(n_ctx=256)
        err = raw_worker.error_for(P.Generate(id="big", input=LONG_TEXT, max_tokens=8))
        assert err.code == "context_overflow" and not err.retryable
        done, _ = raw_worker.generate("Short question?", max_tokens=4)
        assert done.usage.completion_tokens > 0

    def test_hitting_the_context_end_is_context_full(self, raw_worker: RawWorker) -> None:
        raw_worker.init()
        n_ctx = raw_worker.load(n_ctx=256).model.n_ctx
        done, _ = raw_worker.generate(LONG_TEXT[:150], mode="completion", max_tokens=1000, repeat_penalty=1.3)
        assert done.stop_reason in ("context_full", "eos")
        if done.stop_reason == "context_full":
            assert done.usage.prompt_tokens + done.usage.completion_tokens == n_ctx


# ---------------------------------------------------------------------------
# abort, busy, ping
# ---------------------------------------------------------------------------


class TestConcurrency:
    def test_abort_during_decode_returns_partial_text(self, worker: RawWorker) -> None:
        rid = worker.request(P.Generate, input="Tell me a very long story about dragons.", max_tokens=400, temperature=0.0)
        worker.until(lambda m: isinstance(m, P.Chunk) and m.id == rid)
        aid = worker.request(P.Abort, target=rid)
        frames = []
        while True:
            m = worker.recv()
            frames.append(m)
            if any(isinstance(f, P.Ok) and f.id == aid for f in frames) and any(isinstance(f, P.Done) for f in frames):
                break
        done = next(f for f in frames if isinstance(f, P.Done))
        assert done.stop_reason == "aborted" and done.usage.completion_tokens < 400
        # The partial reply joined the history: the next turn reuses it.
        follow, _ = worker.generate("Go on.", max_tokens=4)
        assert follow.usage.cached_tokens >= done.usage.prompt_tokens

    def test_abort_is_idempotent_and_targetless(self, worker: RawWorker) -> None:
        rid = worker.request(P.Generate, input="Tell me a story.", max_tokens=400)
        worker.until(lambda m: isinstance(m, P.Chunk) and m.id == rid)
        a1 = worker.request(P.Abort)
        a2 = worker.request(P.Abort, target=rid)
        a3 = worker.request(P.Abort, target="not-running")
        done, before = worker.terminal(rid)
        assert done.stop_reason == "aborted"
        for aid in (a1, a2, a3):
            if not any(isinstance(m, P.Ok) and m.id == aid for m in before):
                assert worker.terminal(aid)[0] == P.Ok(id=aid)

    def test_abort_interrupts_a_long_prompt_evaluation(self, raw_worker: RawWorker) -> None:
        raw_worker.init(log_level="debug")
        # One batch for the whole prompt: only llama.cpp's abort callback can stop it midway.
        raw_worker.load(n_batch=4096)
        prompt = LONG_TEXT * 1
        rid = raw_worker.request(P.Generate, input=prompt, max_tokens=8)
        raw_worker.until(lambda m: isinstance(m, P.Log) and "evaluating" in m.message)
        raw_worker.request(P.Abort, target=rid)
        done, _ = raw_worker.terminal(rid)
        assert done.stop_reason == "aborted" and done.usage.completion_tokens == 0
        # Had the evaluation finished, its tokens would be cached now.
        retry, _ = raw_worker.generate(prompt, max_tokens=1)
        assert retry.usage.prompt_tokens > 1000
        assert retry.usage.cached_tokens < retry.usage.prompt_tokens // 2

    def test_busy_while_generating_and_ping_answers(self, worker: RawWorker) -> None:
        rid = worker.request(P.Generate, input="Tell me a long story about a castle.", max_tokens=120)
        worker.until(lambda m: isinstance(m, P.Chunk) and m.id == rid)
        busy_ids = [
            worker.send(P.Generate(id="g2", input="x")),
            worker.send(P.Load(id="l2")),
            worker.send(P.Reset(id="r2")),
        ]
        pid = worker.request(P.Ping)
        replies = {}
        done = None
        while done is None or len(replies) < 4:
            m = worker.recv()
            if isinstance(m, P.Done):
                done = m
            elif isinstance(m, (P.Error, P.Pong)):
                replies[m.id] = m
        assert isinstance(replies[pid], P.Pong)
        for bid in busy_ids:
            assert replies[bid].code == "busy" and replies[bid].retryable
        assert done.id == rid and done.stop_reason in ("max_tokens", "eos")

    def test_next_request_right_after_done_is_never_busy(self, worker: RawWorker) -> None:
        for _ in range(5):
            rid = worker.request(P.Generate, input="Hi", max_tokens=2)
            reply, _ = worker.terminal(rid)
            assert isinstance(reply, P.Done), reply

    def test_cleanup_aborts_what_runs(self, worker: RawWorker) -> None:
        rid = worker.request(P.Generate, input="Tell me a long story.", max_tokens=400)
        worker.until(lambda m: isinstance(m, P.Chunk) and m.id == rid)
        cid = worker.request(P.Cleanup)
        done, _ = worker.terminal(rid)
        assert done.stop_reason == "aborted"
        assert worker.terminal(cid)[0] == P.Ok(id=cid)
        assert worker.error_for(P.Generate(id="after", input="hi")).code == "no_model"


# ---------------------------------------------------------------------------
# frames and process life
# ---------------------------------------------------------------------------


class TestFramesAndLifecycle:
    def test_malformed_frames_never_cost_the_session(self, worker: RawWorker) -> None:
        first, _ = worker.generate("Remember: seven.", max_tokens=8)
        worker.send_raw(P.frame(b"{not json"))
        assert worker.recv().code == "bad_frame"
        worker.send_raw(P.frame(b"\xff\xfe\x00"))
        assert worker.recv().code == "bad_frame"
        worker.send_raw(P.frame(b'"a string"'))
        err = worker.recv()
        assert err.code == "invalid_request" and err.id is None
        worker.send_raw(P.frame(b'{"id": 5}'))
        err = worker.recv()
        assert err.code == "invalid_request" and err.id == 5
        worker.send_raw(P.frame(b'{"type":"ping","id":"extra","surplus":{"a":[1,2]}}'))
        assert worker.recv() == P.Pong(id="extra")
        follow, _ = worker.generate("What number?", max_tokens=4)
        assert follow.usage.cached_tokens >= first.usage.prompt_tokens

    def test_oversized_frame_is_fatal_with_documented_exit_code(self) -> None:
        w = RawWorker("--max-frame-size", "1024")
        try:
            w.init()
            w.send_raw((5000).to_bytes(4, "big"))
            err = w.recv()
            assert err.code == "frame_too_large" and err.id is None
            assert w.proc.wait(10) == 3
        finally:
            w.kill()
        assert not w.stdout_violations

    def test_exits_promptly_on_stdin_eof_even_mid_generation(self, worker: RawWorker) -> None:
        rid = worker.request(P.Generate, input="Tell me a long story.", max_tokens=2000)
        worker.until(lambda m: isinstance(m, P.Chunk) and m.id == rid)
        assert worker.close(timeout=10) == 0

    def test_stdout_stays_pure_while_the_process_prints(self) -> None:
        polluter = textwrap.dedent(
            """
            import ctypes, os, sys, threading
            def pollute():
                libc = ctypes.CDLL(None)
                while "worker.llama_worker" not in sys.modules:
                    threading.Event().wait(0.001)
                for i in range(2000):
                    print("python print to stdout", i)
                    sys.stdout.flush()
                    os.write(1, b"raw write to fd 1\\n")
                    libc.printf(b"C printf to stdout\\n")
                    libc.fflush(None)
                    threading.Event().wait(0.002)
            threading.Thread(target=pollute, daemon=True).start()
            from worker.cli import main
            main()
            """
        )
        w = RawWorker(cmd=[sys.executable, "-c", polluter])
        try:
            w.init()
            w.load()
            done, chunks = w.generate("Tell me a story about a lighthouse.", max_tokens=120)
            assert "".join(chunks) == done.text
        finally:
            w.close()
        assert not w.stdout_violations, w.stdout_violations
        assert "python print to stdout" in w.stderr and "raw write to fd 1" in w.stderr

    def _spawn_parent(self, stdin_mode: str) -> tuple[subprocess.Popen[bytes], int]:
        script = textwrap.dedent(
            f"""
            import os, subprocess, sys, time
            sys.path.insert(0, {str(REPO_ROOT)!r})
            import protocol as P
            stdin = subprocess.PIPE if {stdin_mode!r} == "pipe" else None
            w = subprocess.Popen([sys.executable, "-m", "worker"], stdin=stdin, stdout=subprocess.PIPE, cwd={str(REPO_ROOT)!r})
            reader = P.reply_reader()
            def wait_for(kind):
                while True:
                    data = os.read(w.stdout.fileno(), 65536)
                    if not data:
                        sys.exit("worker closed stdout")
                    if any(isinstance(m, kind) for m in reader.feed(data)):
                        return
            if stdin is not None:
                w.stdin.write(P.encode(P.Init(id=1, protocol_version=1)) + P.encode(P.Load(id=2)))
                w.stdin.flush()
                wait_for(P.Loaded)
                w.stdin.write(P.encode(P.Generate(id=3, input="Tell me a very long story.", max_tokens=5000)))
                w.stdin.flush()
                wait_for(P.Chunk)
            else:
                wait_for(P.Ready)
            print(w.pid, flush=True)
            time.sleep(600)
            """
        )
        # With stdin_mode "inherit" the worker reads the parent's stdin: a pipe
        # the test keeps open, so the worker never sees end of input and only
        # its parent watch can notice the parent is gone.
        parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert parent.stdin is not None and parent.stdout is not None
        if stdin_mode == "inherit":
            parent.stdin.write(P.encode(P.Init(id=1, protocol_version=1)))
            parent.stdin.flush()
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"parent script failed: {line!r}"
        return parent, int(line)

    @pytest.mark.parametrize("stdin_mode", ["pipe", "inherit"])
    def test_worker_exits_when_its_parent_is_killed(self, stdin_mode: str) -> None:
        parent, worker_pid = self._spawn_parent(stdin_mode)
        try:
            assert pid_alive(worker_pid)
            parent.send_signal(signal.SIGKILL)
            parent.wait(10)
            assert wait_until(lambda: not pid_alive(worker_pid), timeout=20), "worker outlived its parent"
        finally:
            if pid_alive(worker_pid):
                os.kill(worker_pid, signal.SIGKILL)
            if parent.stdin:
                parent.stdin.close()
