"""The Python host client against the real worker and the default model.

Every test spawns its own worker through the client (`sys.executable -m
worker`). The model is small and fast but not wise: tests check behaviour
(streaming, aborts, errors, crashes, shutdown), never what the model says.
Waits are bounded by `anyio.fail_after`, never by sleeping.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path

import anyio
import pytest

import host
from host import (
    Aborted,
    AsyncClient,
    BadRequest,
    Busy,
    Client,
    ContextOverflow,
    Done,
    LlamaWorkerError,
    LoadFailed,
    ModelNotFound,
    NoModel,
    ProtocolMismatch,
    WorkerCrashed,
)
from tests.harness import REPO_ROOT, pid_alive

TIMEOUT = 120  # generous bound for what takes a second or two on an idle machine (CI machines are not)
STORY = "Tell me a very long story about a dragon, a knight and a lost city."
LONG_TEXT = " ".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog near the river bank." for i in range(90))
INFO_LOGS = {"LLAMA_WORKER_LOG_LEVEL": "info"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def assert_error(exc: LlamaWorkerError, code: str, retryable: bool) -> None:
    assert exc.code == code
    assert isinstance(exc.message, str) and exc.message
    assert exc.retryable is retryable


# ---------------------------------------------------------------------------
# streaming, chat, load
# ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_streamed_chunks_join_to_the_final_text() -> None:
    async with AsyncClient() as client:
        await client.load()
        with anyio.fail_after(TIMEOUT):
            async with await client.generate("Name three colours.", max_tokens=24, temperature=0) as stream:
                chunks = [text async for text in stream]
        result = stream.result
        assert isinstance(result, Done)
        assert chunks and all(isinstance(c, str) and c for c in chunks)
        assert "".join(chunks) == result.text == stream.text
        assert result.stop_reason in ("max_tokens", "eos")
        assert result.usage.prompt_tokens > 0 and result.usage.cached_tokens == 0
        assert 1 <= result.usage.completion_tokens <= 24
        assert result.timings.total_ms >= result.timings.ttft_ms > 0
        assert result.timings.tokens_per_second >= 0
        assert client.history == [
            {"role": "user", "content": "Name three colours."},
            {"role": "assistant", "content": result.text},
        ]

        # chat(): the same kind of result, in one call; chunks go to on_chunk.
        pieces: list[str] = []
        with anyio.fail_after(TIMEOUT):
            reply = await client.chat("And one more?", max_tokens=8, temperature=0, on_chunk=pieces.append)
        assert isinstance(reply, Done)
        assert "".join(pieces) == reply.text and reply.text
        assert reply.stop_reason in ("max_tokens", "eos")
        assert reply.id != result.id
        # The second turn continues the session: it reuses the first from the cache.
        assert reply.usage.cached_tokens > 0
        assert reply.usage.prompt_tokens > result.usage.prompt_tokens
        assert 1 <= reply.usage.completion_tokens <= 8
        assert reply.timings.total_ms > 0
        assert len(client.history) == 4


@pytest.mark.anyio
async def test_load_reports_rising_progress_ending_at_one() -> None:
    async with AsyncClient() as client:
        assert client.ready is not None and client.ready.pid == client.pid
        assert client.model is None
        fractions: list[float] = []
        with anyio.fail_after(TIMEOUT):
            info = await client.load(on_progress=fractions.append)
        assert fractions, "no progress callback"
        assert all(0.0 <= f <= 1.0 for f in fractions)
        assert all(a < b for a, b in zip(fractions, fractions[1:], strict=False)), fractions
        assert fractions[-1] == 1.0
        assert client.model == info
        assert info.n_ctx > 0 and info.name and Path(info.path).is_file()


# ---------------------------------------------------------------------------
# cancellation
# ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["timeout-with-context", "timeout-bare-loop", "cancelled-task"])
async def test_cancelling_the_consumer_aborts_and_the_session_goes_on(how: str) -> None:
    # shutdown_timeout bounds how long a cancelled iteration waits for the worker to
    # end the generation; generous here so that a loaded machine cannot cut it short.
    async with AsyncClient(shutdown_timeout=TIMEOUT) as client:
        await client.load()
        received: list[str] = []
        stream = await client.generate(STORY, max_tokens=400, temperature=0)
        with anyio.fail_after(TIMEOUT):
            if how == "cancelled-task":
                got_some = anyio.Event()

                async def consume() -> None:
                    async with stream:
                        async for text in stream:
                            received.append(text)
                            if len(received) == 3:
                                got_some.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume)
                    await got_some.wait()
                    tg.cancel_scope.cancel()
            else:
                # A timeout around the loop, armed once some text has arrived.
                with anyio.move_on_after(math.inf) as scope:
                    if how == "timeout-with-context":
                        async with stream:
                            async for text in stream:
                                received.append(text)
                                if len(received) == 3:
                                    scope.deadline = anyio.current_time() + 0.2
                    else:
                        async for text in stream:
                            received.append(text)
                            if len(received) == 3:
                                scope.deadline = anyio.current_time() + 0.2
                assert scope.cancelled_caught

        # The abort reached the worker, and the generation's end was received.
        result = stream.result
        assert result is not None and result.stop_reason == "aborted"
        assert result.usage.completion_tokens < 400
        assert result.text.startswith("".join(received)) and result.text

        # Not left busy: the very next request is served.
        with anyio.fail_after(TIMEOUT):
            follow = await client.chat("Go on.", max_tokens=4, temperature=0)
        assert follow.stop_reason in ("max_tokens", "eos")
        # The session went on: the aborted turn is part of it and is reused.
        assert follow.usage.cached_tokens > 0
        assert follow.usage.prompt_tokens > result.usage.prompt_tokens
        assert [m["role"] for m in client.history] == ["user", "assistant", "user", "assistant"]
        assert client.history[1]["content"] == result.text


@pytest.mark.anyio
async def test_generation_abort_returns_the_partial_result() -> None:
    async with AsyncClient() as client:
        await client.load()
        with anyio.fail_after(TIMEOUT):
            stream = await client.generate(STORY, max_tokens=400, temperature=0)
            first = await stream.__anext__()
            result = await stream.abort()
        assert result.stop_reason == "aborted" and result.text.startswith(first)
        assert stream.finished and await stream.final() is result
        with anyio.fail_after(TIMEOUT):
            assert (await client.chat("Hi", max_tokens=2)).stop_reason in ("max_tokens", "eos")


# ---------------------------------------------------------------------------
# typed errors
# ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_missing_model_is_model_not_found() -> None:
    async with AsyncClient() as client:
        with pytest.raises(ModelNotFound) as info:
            with anyio.fail_after(TIMEOUT):
                await client.load("/nonexistent/model.gguf")
        assert_error(info.value, "model_not_found", retryable=False)
        assert "/nonexistent/model.gguf" in info.value.message
        assert isinstance(info.value, host.ModelError)
        assert client.model is None
        # The worker still serves.
        with anyio.fail_after(TIMEOUT):
            await client.load()
        assert client.model is not None


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["folder", "garbage"])
async def test_unloadable_file_is_load_failed(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.gguf"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(os.urandom(4096))
    async with AsyncClient() as client:
        with pytest.raises(LoadFailed) as info:
            with anyio.fail_after(TIMEOUT):
                await client.load(path)
        assert_error(info.value, "load_failed", retryable=False)
        assert str(path) in info.value.message
        assert client.model is None


@pytest.mark.anyio
async def test_generate_before_load_is_no_model() -> None:
    async with AsyncClient() as client:
        with anyio.fail_after(TIMEOUT):
            with pytest.raises(NoModel) as info:
                await client.chat("Hello?")
            assert_error(info.value, "no_model", retryable=False)
            # Through the streaming form too: the error comes out of the iteration.
            stream = await client.generate("Hello?")
            with pytest.raises(NoModel):
                async with stream:
                    async for _ in stream:
                        pass
            assert stream.finished and stream.result is None
            assert client.history == []


@pytest.mark.anyio
async def test_second_request_while_streaming_is_busy_and_retryable() -> None:
    async with AsyncClient() as client:
        await client.load()
        errors: list[LlamaWorkerError] = []
        with anyio.fail_after(TIMEOUT):
            async with await client.generate(STORY, max_tokens=24, temperature=0) as stream:
                async for _ in stream:
                    if not errors:
                        with pytest.raises(Busy) as busy_chat:
                            await client.chat("Interrupting!", max_tokens=4)
                        with pytest.raises(Busy) as busy_reset:
                            await client.reset()
                        errors += [busy_chat.value, busy_reset.value]
        for err in errors:
            assert_error(err, "busy", retryable=True)
        # The first generation was not disturbed, and the worker is free again.
        assert stream.result is not None and stream.result.stop_reason in ("max_tokens", "eos")
        with anyio.fail_after(TIMEOUT):
            again = await client.chat("Interrupting!", max_tokens=4)
        assert again.usage.completion_tokens >= 1
        assert [m["content"] for m in client.history if m["role"] == "user"] == [STORY, "Interrupting!"]


@pytest.mark.anyio
async def test_invalid_message_list_is_bad_request() -> None:
    async with AsyncClient() as client:
        await client.load()
        with anyio.fail_after(TIMEOUT):
            with pytest.raises(BadRequest) as info:
                await client.chat([{"role": "assistant", "content": "Hello!"}])  # nothing to reply to
        assert_error(info.value, "invalid_request", retryable=False)
        assert "user" in info.value.message
        with anyio.fail_after(TIMEOUT):
            ok = await client.chat([{"role": "user", "content": "Hi"}], max_tokens=2)
        assert ok.usage.completion_tokens >= 1


@pytest.mark.anyio
async def test_input_too_long_for_the_context_is_context_overflow() -> None:
    async with AsyncClient() as client:
        info = await client.load(n_ctx=256)
        assert info.n_ctx == 256
        with anyio.fail_after(TIMEOUT):
            with pytest.raises(ContextOverflow) as err:
                await client.chat(LONG_TEXT, max_tokens=8)
        assert_error(err.value, "context_overflow", retryable=False)
        assert client.history == []
        with anyio.fail_after(TIMEOUT):
            ok = await client.chat("Short question?", max_tokens=4)
        assert ok.usage.completion_tokens >= 1


@pytest.mark.anyio
async def test_aborting_a_load_is_aborted_or_loaded() -> None:
    async with AsyncClient() as client:
        started = anyio.Event()
        outcome: list[object] = []

        async def load() -> None:
            try:
                outcome.append(await client.load(on_progress=lambda f: started.set()))
            except Aborted as exc:
                outcome.append(exc)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(load)
                await started.wait()  # the load is running on the worker
                await client.abort()
        # A small model may finish loading before the abort lands: both are valid.
        [result] = outcome
        if isinstance(result, Aborted):
            assert_error(result, "aborted", retryable=True)
            assert client.model is None
            with anyio.fail_after(TIMEOUT), pytest.raises(NoModel):
                await client.chat("Hi")
        else:
            assert isinstance(result, host.ModelInfo) and client.model == result
        with anyio.fail_after(TIMEOUT):
            await client.load()
            assert (await client.chat("Hi", max_tokens=2)).usage.completion_tokens >= 1


@pytest.mark.anyio
async def test_protocol_mismatch_is_typed_and_leaves_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import protocol

    # The client announces whatever version the protocol package says; the worker refuses 99.
    monkeypatch.setattr(protocol, "PROTOCOL_VERSION", 99)
    client = AsyncClient()
    with anyio.fail_after(TIMEOUT), pytest.raises(ProtocolMismatch) as info:
        async with client:
            pass
    assert_error(info.value, "protocol_mismatch", retryable=False)
    assert "99" in info.value.message
    assert client._conn is not None and not pid_alive(client._conn.pid)


# ---------------------------------------------------------------------------
# crashes and restart
# ---------------------------------------------------------------------------


async def _kill_mid_generation(client: AsyncClient) -> WorkerCrashed:
    """SIGKILL the worker once a generation streams; return what the iteration raised."""
    pid = client.pid
    assert pid is not None
    stream = await client.generate(STORY, max_tokens=400, temperature=0)
    with anyio.fail_after(TIMEOUT):
        assert await stream.__anext__()  # it streams
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed) as info:
        with anyio.fail_after(10):
            async with stream:
                async for _ in stream:
                    pass
    assert stream.finished and stream.result is None
    assert not pid_alive(pid)
    return info.value


@pytest.mark.anyio
async def test_sigkill_mid_generation_raises_worker_crashed_and_restart_restores_the_conversation() -> None:
    first_input = "My name is Ada and I keep three llamas."
    async with AsyncClient(env=INFO_LOGS) as client:
        await client.load(n_ctx=2048)
        with anyio.fail_after(TIMEOUT):
            turn1 = await client.chat(first_input, max_tokens=12, temperature=0)
        old_pid = client.pid

        crash = await _kill_mid_generation(client)
        assert crash.signal == signal.SIGKILL and crash.exit_code is None
        assert crash.code == "worker_crashed" and crash.retryable
        assert isinstance(crash.stderr_tail, str) and crash.stderr_tail.strip()
        assert "SIGKILL" in crash.message
        assert not client.alive
        # Without auto_restart, further calls fail the same way until a restart.
        with anyio.fail_after(10), pytest.raises(WorkerCrashed):
            await client.ping()
        # The crashed turn did not join the history.
        assert client.history == [
            {"role": "user", "content": first_input},
            {"role": "assistant", "content": turn1.text},
        ]

        with anyio.fail_after(TIMEOUT):
            ready = await client.restart()
        assert client.alive and client.pid != old_pid and ready.pid == client.pid
        # Same model, same options.
        assert client.model is not None and client.model.n_ctx == 2048
        assert [m["content"] for m in client.history] == [first_input, turn1.text]

        with anyio.fail_after(TIMEOUT):
            turn2 = await client.chat("What is my name?", max_tokens=4, temperature=0)
        assert turn2.stop_reason in ("max_tokens", "eos")
        assert len(client.history) == 4
        # The restored conversation is the worker's session from then on.
        with anyio.fail_after(TIMEOUT):
            turn3 = await client.chat("Thanks.", max_tokens=2, temperature=0)
        assert turn3.usage.prompt_tokens > turn2.usage.prompt_tokens

        # The new worker saw the earlier turns: turn 2's prompt held them, so it is
        # larger than the same question as the first turn of a conversation.
        with anyio.fail_after(TIMEOUT):
            await client.reset()
            fresh = await client.chat("What is my name?", max_tokens=1, temperature=0)
        assert turn2.usage.prompt_tokens - fresh.usage.prompt_tokens >= turn1.usage.completion_tokens + 5


@pytest.mark.anyio
async def test_auto_restart_after_a_crash() -> None:
    async with AsyncClient(auto_restart=True) as client:
        await client.load(system_prompt="You are terse.")
        with anyio.fail_after(TIMEOUT):
            turn1 = await client.chat("Remember the word: blue.", max_tokens=8, temperature=0)
        old_pid = client.pid
        crash = await _kill_mid_generation(client)
        assert crash.signal == signal.SIGKILL
        # No explicit restart: the next call brings a new worker up.
        with anyio.fail_after(TIMEOUT):
            turn2 = await client.chat("Which word?", max_tokens=4, temperature=0)
        assert client.alive and client.pid != old_pid and pid_alive(client.pid)
        assert turn2.usage.completion_tokens >= 1
        assert client.model is not None
        # History (and the system prompt) reached the new worker.
        assert [m["role"] for m in client.history] == ["user", "assistant", "user", "assistant"]
        assert turn2.usage.prompt_tokens > turn1.usage.prompt_tokens + turn1.usage.completion_tokens


@pytest.mark.anyio
async def test_worker_exiting_on_its_own_mid_request_is_worker_crashed() -> None:
    async with AsyncClient([sys.executable, "-m", "tests.fake_worker", "exit"], cwd=REPO_ROOT) as client:
        assert client.ready is not None and client.ready.worker_version == "fake"
        pid = client.pid
        with anyio.fail_after(10), pytest.raises(WorkerCrashed) as info:
            await client.load()
        crash = info.value
        assert crash.exit_code == 3 and crash.signal is None
        assert "fake worker: cannot serve Load, exiting" in crash.stderr_tail
        assert "code 3" in crash.message
        assert not client.alive and not pid_alive(pid)


# ---------------------------------------------------------------------------
# shutdown
# ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_context_exit_leaves_no_process() -> None:
    async with AsyncClient() as client:
        await client.load()
        await client.chat("Hi", max_tokens=2)
        pid = client.pid
        assert pid is not None and pid_alive(pid)
    assert not pid_alive(pid)
    assert not client.alive


def test_sync_context_exit_leaves_no_process() -> None:
    with Client() as client:
        client.load()
        pid = client.pid
        assert pid_alive(pid)
        # Leave with a generation still streaming.
        stream = client.generate(STORY, max_tokens=400)
        assert next(stream)
    assert not pid_alive(pid)
    assert not client.alive


@pytest.mark.anyio
async def test_exit_with_a_generation_left_streaming_leaves_no_process() -> None:
    with anyio.fail_after(TIMEOUT):
        async with AsyncClient() as client:
            await client.load()
            pid = client.pid
            stream = await client.generate(STORY, max_tokens=400)
            async for _ in stream:
                break
    assert pid is not None and not pid_alive(pid)
    assert stream.result is None or stream.result.stop_reason == "aborted"


@pytest.mark.anyio
async def test_close_while_another_task_streams_leaves_no_process() -> None:
    outcome: list[object] = []
    async with AsyncClient() as client:
        await client.load()
        pid = client.pid
        stream = await client.generate(STORY, max_tokens=400)
        streaming = anyio.Event()

        async def consume() -> None:
            try:
                async for _ in stream:
                    streaming.set()
                outcome.append(stream.result)
            except LlamaWorkerError as exc:
                outcome.append(exc)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await streaming.wait()
                await client.close()
        assert pid is not None and not pid_alive(pid)
        assert not client.alive
    # The consumer was not left hanging: the generation ended, aborted.
    [end] = outcome
    assert isinstance(end, (Done, LlamaWorkerError))
    if isinstance(end, Done):
        assert end.stop_reason == "aborted"


# ---------------------------------------------------------------------------
# concurrency, trio, sync face
# ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_ping_answers_during_a_streaming_generation() -> None:
    async with AsyncClient() as client:
        await client.load()
        rtts: list[float] = []
        with anyio.fail_after(TIMEOUT):
            async with await client.generate(STORY, max_tokens=16, temperature=0) as stream:
                async for _ in stream:
                    if not rtts:
                        with anyio.fail_after(30):
                            rtts.append(await client.ping())
        assert len(rtts) == 1 and rtts[0] > 0
        assert stream.result is not None and stream.result.stop_reason in ("max_tokens", "eos")


def test_streaming_and_cancellation_under_trio() -> None:
    async def main() -> tuple[int, list[str], Done, Done, Done]:
        async with AsyncClient(shutdown_timeout=TIMEOUT) as client:
            pid = client.pid
            assert pid is not None
            await client.load()
            with anyio.fail_after(TIMEOUT):
                async with await client.generate("Name three colours.", max_tokens=12, temperature=0) as stream:
                    chunks = [text async for text in stream]
            assert stream.result is not None
            with anyio.move_on_after(math.inf) as scope:
                async with await client.generate(STORY, max_tokens=400, temperature=0) as story:
                    async for _ in story:
                        scope.deadline = min(scope.deadline, anyio.current_time() + 0.2)
            assert scope.cancelled_caught and story.result is not None
            with anyio.fail_after(TIMEOUT):
                follow = await client.chat("Go on.", max_tokens=4)
            return pid, chunks, stream.result, story.result, follow

    pid, chunks, result, story, follow = anyio.run(main, backend="trio")
    assert chunks and "".join(chunks) == result.text
    assert story.stop_reason == "aborted"
    assert follow.usage.cached_tokens > 0
    assert not pid_alive(pid)


def test_sync_client_load_chat_generate_abort_reset() -> None:
    with Client() as client:
        fractions: list[float] = []
        info = client.load(on_progress=fractions.append)
        assert fractions[-1] == 1.0 and client.model == info
        assert client.ping() > 0

        first = client.chat("Say hi", max_tokens=6, temperature=0)
        assert isinstance(first, Done) and first.text and first.stop_reason in ("max_tokens", "eos")

        with client.generate("Name three colours.", max_tokens=12, temperature=0) as stream:
            chunks = list(stream)
        assert chunks and "".join(chunks) == stream.result.text == stream.text
        assert stream.result.usage.cached_tokens > 0

        with client.generate(STORY, max_tokens=400, temperature=0) as story:
            head = next(story)
            aborted = story.abort()
        assert aborted.stop_reason == "aborted" and aborted.text.startswith(head)
        assert aborted.usage.completion_tokens < 400
        assert len(client.history) == 6

        client.reset()
        assert client.history == []
        again = client.chat("Say hi", max_tokens=6, temperature=0)
        # After the reset, "Say hi" is again a one-turn conversation.
        assert again.usage.prompt_tokens == first.usage.prompt_tokens
        with pytest.raises(Busy), client.generate(STORY, max_tokens=400) as running:
            next(running)
            client.chat("Me too", max_tokens=2)
        assert running.result is not None and running.result.stop_reason == "aborted"
