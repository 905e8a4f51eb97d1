"""Failure paths (issue 13): no host call waits forever, no callback breaks the client.

Each test first reproduces a way the Python host or the worker used to hang
or break, through real pipes with the real worker where it can produce the
fault, and with `tests.fake_worker` where it cannot (a broken stream, a
silent worker). Waits are bounded generously; nothing asserts a timing.
Figures for RELIABILITY.md's failure-path table come from `-s` runs (each
test prints how long the fault took to surface).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

import protocol
from host import (
    AsyncClient,
    Client,
    ProtocolViolation,
    ReplyTooLarge,
    WorkerCrashed,
    WorkerTimeout,
)
from tests.harness import REPO_ROOT, RawWorker, pid_alive

TIMEOUT = 120
LONG_TEXT = " ".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog near the river bank." for i in range(90))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fake(mode: str) -> list[str]:
    return [sys.executable, "-m", "tests.fake_worker", mode]


def report(what: str, seconds: float) -> None:
    print(f"\n[failure path] {what}: {seconds:.3f} s")


# ---------------------------------------------------------------------------
# one frame limit: a reply too large for the host becomes an error
# ---------------------------------------------------------------------------


def test_worker_answers_reply_too_large_instead_of_writing_a_frame_the_host_refuses() -> None:
    w = RawWorker()
    try:
        rid = w.new_id()
        w.send(protocol.Init(id=rid, protocol_version=1, max_frame_size=protocol.MIN_FRAME_SIZE))
        ready = w.recv()
        assert isinstance(ready, protocol.Ready) and ready.max_frame_size == protocol.DEFAULT_MAX_FRAME_SIZE
        w.load()
        text = "word " * 3000  # ~3,000 ids: over 4 KiB as JSON
        rid = w.request(protocol.Tokenize, text=text)
        err = w.recv()
        assert isinstance(err, protocol.Error) and err.id == rid
        assert err.code == protocol.ErrorCode.REPLY_TOO_LARGE and err.retryable is False
        assert "4096" in err.message
        # The stream is intact and the worker serves on; a small reply still fits.
        rid = w.request(protocol.Tokenize, text="word")
        ok = w.recv()
        assert isinstance(ok, protocol.Tokens) and ok.id == rid
        # A generation's chunks and done fit, whatever the limit.
        rid = w.request(protocol.Generate, input="Hi", max_tokens=8)
        frames = []
        while not isinstance(frames[-1] if frames else None, (protocol.Done, protocol.Error)):
            frames.append(w.recv())
        assert isinstance(frames[-1], protocol.Done)
        # A host that raises its limit gets the whole reply.
        w.send(protocol.Init(id=w.new_id(), protocol_version=1, max_frame_size=protocol.DEFAULT_MAX_FRAME_SIZE))
        assert isinstance(w.recv(), protocol.Ready)
        rid = w.request(protocol.Tokenize, text=text)
        tokens = w.recv()
        assert isinstance(tokens, protocol.Tokens) and tokens.count >= 3000
    finally:
        w.close()
    assert not w.stdout_violations


@pytest.mark.anyio
async def test_host_tokenize_over_the_frame_limit_fails_and_the_client_stays_usable() -> None:
    async with AsyncClient() as client:
        await client.load()
        t0 = time.perf_counter()
        with anyio.fail_after(TIMEOUT), pytest.raises(ReplyTooLarge) as info:
            await client.tokenize("a " * 7_000_000)  # ~28 MB of ids as JSON, over 16 MiB
        report("tokenize reply over 16 MiB -> ReplyTooLarge", time.perf_counter() - t0)
        assert info.value.code == "reply_too_large" and not info.value.retryable
        assert client.alive
        with anyio.fail_after(TIMEOUT):
            assert await client.tokenize("a b") != []
            await client.ping()


@pytest.mark.anyio
async def test_host_refuses_a_request_over_the_workers_limit_without_sending_it() -> None:
    async with AsyncClient([sys.executable, "-m", "worker", "--max-frame-size", "4096"], cwd=REPO_ROOT) as client:
        assert client.ready is not None and client.ready.max_frame_size == 4096
        await client.load()
        with pytest.raises(Exception) as info:
            await client.tokenize("x" * 10_000)
        assert getattr(info.value, "code", None) == "frame_too_large"
        # Not sent: the worker did not die of a fatal frame.
        await client.ping()
        assert client.alive


# ---------------------------------------------------------------------------
# a broken stream is a crash; an unreadable reply fails its own call
# ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["oversized", "garbage", "truncated"])
async def test_a_broken_stream_fails_every_pending_call_and_auto_restart_applies(mode: str) -> None:
    async with AsyncClient(fake(mode), cwd=REPO_ROOT, auto_restart=True, request_timeout=None) as client:
        first_pid = client.pid
        outcomes: list[BaseException] = []

        async def pending(call: object) -> None:
            # No timeout at all: only the client's handling of the fault can end it.
            try:
                await call  # type: ignore[misc]
            except BaseException as exc:  # noqa: BLE001
                outcomes.append(exc)

        t0 = time.perf_counter()
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pending, client.sessions(timeout=None))
                tg.start_soon(pending, client.tokenize("hello", timeout=None))
        report(f"{mode} frame -> WorkerCrashed for every pending call", time.perf_counter() - t0)
        assert len(outcomes) == 2 and all(isinstance(exc, WorkerCrashed) for exc in outcomes), outcomes
        crash = outcomes[0]
        assert isinstance(crash, WorkerCrashed)
        if mode == "truncated":
            assert crash.exit_code == 5  # it died by itself mid-frame
        else:
            assert isinstance(crash.__cause__, ProtocolViolation)  # killed by the client, and why
            assert "unreadable frame" in crash.message
        assert first_pid is not None and not pid_alive(first_pid)
        # auto_restart: the next call gets a new worker.
        with anyio.fail_after(30):
            await client.ping()
        assert client.pid != first_pid and client.alive


@pytest.mark.anyio
async def test_an_invalid_reply_with_an_id_fails_exactly_that_call() -> None:
    async with AsyncClient(fake("bad_reply"), cwd=REPO_ROOT) as client:
        pid = client.pid
        with anyio.fail_after(30), pytest.raises(ProtocolViolation) as info:
            await client.tokenize("hello")
        assert "invalid 'tokens' message" in info.value.message
        # Nothing else was touched: same worker, still answering.
        with anyio.fail_after(30):
            await client.ping()
        assert client.pid == pid and client.alive


@pytest.mark.anyio
async def test_a_silent_worker_cannot_hang_any_call() -> None:
    async with AsyncClient(fake("silent"), cwd=REPO_ROOT, request_timeout=1.0, shutdown_timeout=1.0) as client:
        t0 = time.perf_counter()
        with anyio.fail_after(30):
            for call in (client.tokenize("x"), client.sessions(), client.count_tokens("x"), client.reset(), client.cleanup()):
                with pytest.raises(WorkerTimeout):
                    await call
        report("silent worker, 5 control calls -> WorkerTimeout each (request_timeout=1 s)", time.perf_counter() - t0)
        with anyio.fail_after(30):
            with pytest.raises(WorkerTimeout):
                await client.sessions(timeout=0.2)  # an explicit timeout wins over the client's
            with pytest.raises(WorkerTimeout):
                await client.load(timeout=1.0)  # no default, but one can be given
            stream = await client.generate("Hi", timeout=1.0)
            with pytest.raises(WorkerTimeout):
                await stream.final()
        # Still the same, live worker: only the calls gave up.
        assert client.alive


# ---------------------------------------------------------------------------
# user callbacks are fenced off
# ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_throwing_callbacks_never_lose_a_frame_or_break_the_client() -> None:
    reported: list[tuple[str, str]] = []

    def on_log(level: str, message: str) -> None:
        raise RuntimeError("on_log blew up")

    def on_chunk(text: str) -> None:
        raise ValueError("on_chunk blew up")

    def on_progress(fraction: float) -> None:
        raise KeyError("on_progress blew up")

    async with AsyncClient(log_level="debug", on_log=on_log, on_callback_error=lambda exc, name: reported.append((name, type(exc).__name__))) as client:
        with anyio.fail_after(TIMEOUT):
            await client.load(on_progress=on_progress)
            chunks: list[str] = []
            async with await client.generate("Name three colours.", max_tokens=24, temperature=0) as stream:
                async for text in stream:
                    chunks.append(text)
            result = await client.chat("And three animals?", max_tokens=16, temperature=0, on_chunk=on_chunk)
        assert stream.result is not None and stream.result.text == "".join(chunks) and chunks
        assert result.text and result.usage.completion_tokens >= 1
        assert ("on_log", "RuntimeError") in reported  # a log frame arrived during the generation
        assert ("on_chunk", "ValueError") in reported
        assert ("on_progress", "KeyError") in reported
        with anyio.fail_after(TIMEOUT):
            await client.ping()
        assert client.alive


def test_a_throwing_error_hook_is_logged_and_the_blocking_client_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    def hook(exc: BaseException, name: str) -> None:
        raise RuntimeError("the hook itself failed")

    with Client(on_callback_error=hook) as client:
        client.load()
        result = client.chat("Hi", max_tokens=4, on_chunk=lambda text: 1 / 0)
        assert result.usage.completion_tokens >= 1
        assert client.ping() > 0
    assert any("on_callback_error raised" in r.getMessage() for r in caplog.records)
    assert any("ZeroDivisionError" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------
# restart is idempotent; a crash during restart is WorkerCrashed
# ---------------------------------------------------------------------------


def _counting_command(tmp_path: Path, second_spawn: str) -> tuple[list[str], Path]:
    """A command that records each spawn, and runs `second_spawn` ("worker" or a fake mode) the second time."""
    log = tmp_path / "spawns"
    script = tmp_path / "spawn.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys
            log = {str(log)!r}
            with open(log, "a") as f:
                f.write("spawn\\n")
            n = len(open(log).read().splitlines())
            if n == 2 and {second_spawn!r} != "worker":
                os.execv(sys.executable, [sys.executable, "-m", "tests.fake_worker", {second_spawn!r}])
            os.execv(sys.executable, [sys.executable, "-m", "worker"])
            """
        )
    )
    return [sys.executable, str(script)], log


@pytest.mark.anyio
async def test_concurrent_callers_after_a_crash_get_one_restart(tmp_path: Path) -> None:
    command, spawns = _counting_command(tmp_path, "worker")
    async with AsyncClient(command, cwd=REPO_ROOT, auto_restart=True) as client:
        with anyio.fail_after(TIMEOUT):
            await client.load()
            await client.chat("Remember: blue.", max_tokens=4, temperature=0)
        wp = client._conn
        assert wp is not None and client.ready is not None
        os.kill(client.ready.pid, 9)
        with anyio.fail_after(30):
            await wp.gone.wait()  # the client noticed the death
        results: dict[str, object] = {}

        async def chat() -> None:
            results["chat"] = await client.chat("Which colour?", max_tokens=4, temperature=0)

        async def count() -> None:
            results["count"] = await client.count_tokens("Which colour?")

        async def ping() -> None:
            results["ping"] = await client.ping()

        t0 = time.perf_counter()
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                for fn in (chat, count, ping):
                    tg.start_soon(fn)
        report("3 concurrent calls after SIGKILL -> one restart, all answered", time.perf_counter() - t0)
        assert set(results) == {"chat", "count", "ping"}
        assert spawns.read_text().splitlines() == ["spawn", "spawn"]  # one restart, not three
        assert client.alive and pid_alive(client.pid)
        assert len(client.history) == 4  # the conversation came back once and went on


@pytest.mark.anyio
async def test_a_crash_during_restart_is_worker_crashed_with_its_cause(tmp_path: Path) -> None:
    command, spawns = _counting_command(tmp_path, "exit_on_load")
    async with AsyncClient(command, cwd=REPO_ROOT) as client:
        with anyio.fail_after(TIMEOUT):
            await client.load()
        assert client.ready is not None
        os.kill(client.ready.pid, 9)
        t0 = time.perf_counter()
        with anyio.fail_after(30), pytest.raises(WorkerCrashed) as info:
            await client.restart()  # the second spawn exits while loading
        report("crash during restart's load -> WorkerCrashed", time.perf_counter() - t0)
        crash = info.value
        assert "while restarting" in crash.message and crash.exit_code == 7
        assert isinstance(crash.__cause__, WorkerCrashed)
        assert "fake worker: exiting on load" in crash.stderr_tail
        # The lock was released: a later restart (a real worker) works.
        with anyio.fail_after(TIMEOUT):
            await client.restart()
            await client.chat("Hi", max_tokens=2)
        assert len(spawns.read_text().splitlines()) == 3


# ---------------------------------------------------------------------------
# one cancellation model: a cancelled call leaves the worker idle
# ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancelled_work_is_aborted_and_the_next_job_is_not_busy(tmp_path: Path) -> None:
    async with AsyncClient() as client:
        with anyio.fail_after(TIMEOUT):
            await client.load()
            await client.chat(LONG_TEXT, max_tokens=4)
            await client.save_session(tmp_path / "s.session")

        async def cancelled(name: str, call: object) -> None:
            with anyio.fail_after(TIMEOUT):
                t0 = time.perf_counter()
                with anyio.move_on_after(0.05) as scope:
                    await call  # type: ignore[misc]
                if scope.cancelled_caught:
                    report(f"{name} cancelled after 50 ms -> control back, worker idle", time.perf_counter() - t0)
                # A job: `busy` if the cancelled work were still running.
                await client.reset(session="probe")

        await cancelled("preload", client.preload(LONG_TEXT + " And once more: " + LONG_TEXT, session="other"))
        await cancelled("save_session", client.save_session(tmp_path / "t.session"))
        await cancelled("restore_session", client.restore_session(tmp_path / "s.session", session="third"))
        await cancelled("load", client.load())
        # A timeout is a cancellation too, and says so.
        with anyio.fail_after(TIMEOUT):
            with pytest.raises(WorkerTimeout):
                await client.preload(LONG_TEXT + " " + LONG_TEXT, session="other", timeout=0.05)
            await client.reset(session="probe")


# ---------------------------------------------------------------------------
# worker shutdown
# ---------------------------------------------------------------------------


def _close_both_pipes(generating: bool, stdout_first: bool) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    reader = protocol.reply_reader()

    def until(kind: type) -> None:
        while True:
            data = os.read(proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
            assert data, "the worker ended early"
            if any(isinstance(m, kind) for m in reader.feed(data)):
                return

    try:
        proc.stdin.write(protocol.encode(protocol.Init(id=1, protocol_version=1)) + protocol.encode(protocol.Load(id=2)))
        proc.stdin.flush()
        until(protocol.Loaded)
        if generating:
            proc.stdin.write(protocol.encode(protocol.Generate(id=3, input="Tell me a long story.", max_tokens=2000)))
            proc.stdin.flush()
            until(protocol.Chunk)
        if stdout_first:
            # The worker's writer notices first (its log says so), stdin's end a moment later.
            proc.stdout.close()
            while b"protocol pipe is gone" not in proc.stderr.readline():
                pass
            proc.stdin.close()
        else:
            proc.stdin.close()
            proc.stdout.close()
        return proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def test_closing_stdin_and_stdout_at_once_gives_one_stable_exit_code() -> None:
    t0 = time.perf_counter()
    codes = [_close_both_pipes(generating=i % 3 != 0, stdout_first=i % 3 == 2) for i in range(9)]
    assert codes == [0] * 9, codes
    report("9 workers: spawn, load, (generate,) close stdin+stdout -> exit 0 each", time.perf_counter() - t0)


def test_the_writer_replaces_only_the_frame_that_fails_to_encode() -> None:
    from worker.stdio import FrameWriter

    out_r, out_w = os.pipe()
    writer = FrameWriter(out_w, max_frame_size=protocol.MIN_FRAME_SIZE)
    unencodable = protocol.Pong(id=object())  # type: ignore[arg-type]
    broken_done = protocol.Text(id=2, text=object())  # type: ignore[arg-type]
    big_log = protocol.Log(level="warning", message="x" * 10_000)
    for message in (protocol.Pong(id=1), broken_done, unencodable, big_log, protocol.Text(id=3, text="y" * 10_000), protocol.Pong(id=4)):
        writer.send(message)
    writer.send_chunk(5, "z" * 20_000)
    assert writer.flush(10)
    writer.close()
    os.close(out_w)
    data = b""
    while chunk := os.read(out_r, 65536):
        data += chunk
    os.close(out_r)
    got = protocol.reply_reader(protocol.MIN_FRAME_SIZE).feed(data)
    assert not any(isinstance(m, protocol.ProtocolError) for m in got), got
    assert isinstance(got[0], protocol.Pong) and got[0].id == 1
    assert isinstance(got[1], protocol.Error) and got[1].id == 2 and got[1].code == "internal"
    # (the unencodable pong has no usable id: it is dropped, logged)
    assert isinstance(got[2], protocol.Log) and got[2].message.endswith("[truncated]")
    assert isinstance(got[3], protocol.Error) and got[3].id == 3 and got[3].code == "reply_too_large"
    assert isinstance(got[4], protocol.Pong) and got[4].id == 4
    chunks = got[5:]
    assert all(isinstance(c, protocol.Chunk) and c.id == 5 for c in chunks) and len(chunks) > 1
    assert "".join(c.text for c in chunks) == "z" * 20_000  # split, nothing lost
