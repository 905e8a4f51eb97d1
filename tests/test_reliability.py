"""Reliability under faults, load and hostile input (issue 5).

`make test` runs short counts; `make soak` (LLAMA_WORKER_SOAK=1) runs the full
counts and writes the measured figures to `reliability-results.json`, which
RELIABILITY.md reports. Bars are asserted; times are recorded, not asserted
(the machines are shared and noisy), except where the bar itself is a
generous upper bound on something that normally takes milliseconds.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from typing import Any

import msgspec
import pytest

import protocol as P
from tests.harness import REPO_ROOT, RawWorker, pid_alive, wait_until

SOAK = os.environ.get("LLAMA_WORKER_SOAK") == "1"
FIGURES: dict[str, Any] = {}


def count(short: int, full: int) -> int:
    return full if SOAK else short


@pytest.fixture(scope="module", autouse=True)
def _write_figures() -> Any:
    yield
    if SOAK and FIGURES:
        out = REPO_ROOT / "reliability-results.json"
        out.write_text(json.dumps(FIGURES, indent=2, sort_keys=True), encoding="utf-8")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------------------
# fuzzing
# ---------------------------------------------------------------------------

_VALID = [
    {"type": "init", "id": 1, "protocol_version": 1},
    {"type": "load", "id": 2, "model_path": "/x.gguf", "n_ctx": 512, "n_threads": 1, "n_gpu_layers": 0, "seed": 1, "chat_format": "chatml", "system_prompt": "s"},
    {"type": "generate", "id": 3, "input": "hi", "max_tokens": 4, "temperature": 0.5, "top_p": 0.9, "stop": ["x"], "top_k": 3, "min_p": 0.1, "repeat_penalty": 1.1, "seed": 3, "mode": "chat"},
    {"type": "generate", "id": 4, "input": [{"role": "user", "content": "hi"}]},
    {"type": "abort", "id": 5, "target": 3},
    {"type": "reset", "id": 6, "system_prompt": "s"},
    {"type": "ping", "id": 7},
    {"type": "cleanup", "id": 8},
]
_WEIRD_VALUES: list[Any] = [
    None, True, False, -1, 0, 2**64, -(2**63) - 1, 1e308, -1e308, 1.5, "", "x" * 1000, "\u202e\u0301🦙",
    [], [1, "a"], {}, {"a": {"b": [None]}}, [[[[[]]]]],
]


def _mangle(rng: random.Random) -> bytes:
    """One hostile payload (the length prefix stays valid)."""
    base = dict(rng.choice(_VALID))
    kind = rng.randrange(10)
    if kind == 0:
        return os.urandom(rng.randrange(0, 64))
    if kind == 1:
        raw = msgspec.json.encode(base)
        return raw[: rng.randrange(0, len(raw))]
    if kind == 2:
        depth = rng.choice([10, 100, 1000, 5000])
        return b"[" * depth + b"]" * rng.choice([0, depth])
    if kind == 3:
        field = rng.choice(list(base))
        base[field] = rng.choice(_WEIRD_VALUES)
    elif kind == 4:
        base.pop(rng.choice(list(base)))
    elif kind == 5:
        base[f"extra{rng.randrange(99)}"] = rng.choice(_WEIRD_VALUES)
        base[rng.choice(list(base))] = rng.choice(_WEIRD_VALUES)
    elif kind == 6:
        base["type"] = rng.choice(["", "GENERATE", "teleport", "gen\u0000erate", 7, None])
    elif kind == 7:
        raw = msgspec.json.encode(base)
        pos = rng.randrange(len(raw))
        return raw[:pos] + bytes([rng.choice([0x80, 0xC0, 0xFF, 0xED])]) + raw[pos:]
    elif kind == 8:
        return rng.choice([b"null", b"42", b'"str"', b"[]", b"true", b"{}", b"1e999999", b'{"type":"ping","id":1e999}'])
    else:
        for field in list(base):
            if field != "type" and rng.random() < 0.5:
                base[field] = rng.choice(_WEIRD_VALUES)
    try:
        return msgspec.json.encode(base)
    except (OverflowError, TypeError):
        return b'{"type":"ping","id":' + str(2**70).encode() + b"}"


def _harmless(payload: bytes) -> bool:
    """A mangled frame that is still a valid destructive request is not hostile: skip it."""
    try:
        msg = P.decode_request(payload)
    except P.ProtocolError:
        return True
    return isinstance(msg, (P.Ping, P.Abort, P.Init))


def test_fuzzing_never_costs_the_worker_or_its_session(worker: RawWorker) -> None:
    first, _ = worker.generate("Remember this: the code word is heron.", max_tokens=8)
    rng = random.Random(1234)
    n = count(1500, 10_000)
    payloads: list[bytes] = []
    while len(payloads) < n:
        p = _mangle(rng)
        if _harmless(p):
            payloads.append(p)
    t0 = time.perf_counter()
    batch = 200
    replies = 0
    for start in range(0, n, batch):
        worker.send_raw(b"".join(P.frame(p) for p in payloads[start : start + batch]))
        for _ in payloads[start : start + batch]:
            worker.recv()
            replies += 1
    elapsed = time.perf_counter() - t0
    assert replies == n
    assert worker.proc.poll() is None
    follow, chunks = worker.generate("What was the code word?", max_tokens=8)
    assert "".join(chunks) == follow.text
    assert follow.usage.cached_tokens >= first.usage.prompt_tokens  # the session is intact
    assert not worker.stdout_violations
    FIGURES["fuzzing"] = {"frames": n, "replies": replies, "seconds": round(elapsed, 2), "frames_per_second": round(n / elapsed)}


# ---------------------------------------------------------------------------
# process death
# ---------------------------------------------------------------------------


def test_parent_killed_while_generating_takes_the_worker_with_it() -> None:
    script = textwrap.dedent(
        f"""
        import os, subprocess, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        import protocol as P
        w = subprocess.Popen([sys.executable, "-m", "worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        reader = P.reply_reader()
        def wait_for(kind):
            while True:
                data = os.read(w.stdout.fileno(), 65536)
                if not data:
                    sys.exit(1)
                if any(isinstance(m, kind) for m in reader.feed(data)):
                    return
        w.stdin.write(P.encode(P.Init(id=1, protocol_version=1)) + P.encode(P.Load(id=2))); w.stdin.flush()
        wait_for(P.Loaded)
        w.stdin.write(P.encode(P.Generate(id=3, input="Tell me a very long story.", max_tokens=4000))); w.stdin.flush()
        wait_for(P.Chunk)
        print(w.pid, flush=True)
        wait_for(P.Done)
        """
    )
    times = []
    for _ in range(count(1, 5)):
        parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        t0 = time.perf_counter()
        parent.kill()
        parent.wait()
        assert wait_until(lambda pid=worker_pid: not pid_alive(pid), timeout=20, interval=0.005)
        times.append(time.perf_counter() - t0)
    FIGURES["parent_death_seconds"] = {"samples": [round(t, 3) for t in times], "max": round(max(times), 3)}


# ---------------------------------------------------------------------------
# abort storm, load churn, long conversation
# ---------------------------------------------------------------------------


def test_abort_storm(worker: RawWorker) -> None:
    rng = random.Random(7)
    pid = worker.proc.pid
    prompt_long = " ".join(f"Item {i}: a line about tides and harbours." for i in range(60))
    stats = {"terminal": 0, "aborted": 0}

    def cycle(i: int) -> None:
        text = prompt_long + f" ({i})" if rng.random() < 0.3 else f"Tell me about the number {i}."
        rid = worker.request(P.Generate, input=text, max_tokens=64, temperature=0.7)
        when = rng.choice(["now", "first-chunk", "later"])
        early: list[Any] = []  # a terminal reply that came before we aborted
        if when != "now":
            wanted = 1 if when == "first-chunk" else rng.randrange(2, 12)
            chunks = 0
            while chunks < wanted:
                m = worker.recv()
                if getattr(m, "id", None) != rid:
                    continue
                if not isinstance(m, P.Chunk):
                    early.append(m)
                    break
                chunks += 1
        aid = worker.request(P.Abort, target=rid)
        got_done = got_ok = False
        while not (got_done and got_ok):
            m = early.pop() if early else worker.recv()
            if getattr(m, "id", None) == rid and isinstance(m, (P.Done, P.Error)):
                assert not got_done, "two terminal replies"
                assert isinstance(m, P.Done), m
                got_done = True
                stats["terminal"] += 1
                stats["aborted"] += m.stop_reason == "aborted"
            elif getattr(m, "id", None) == aid:
                assert isinstance(m, P.Ok)
                got_ok = True
        if i % 50 == 49:
            worker.request(P.Reset)
            worker.terminal(worker._next_id)

    # Warm-up cycles, not counted: the first ~15 grow resident memory by about
    # 100 MB (glibc's per-thread malloc arenas, KV cache pages touched for the
    # first time), after which it is flat. Growth past that is what a leak is.
    for i in range(count(10, 20)):
        cycle(i)
    stats.update(terminal=0, aborted=0)
    base = rss_bytes(pid)
    n = count(15, 500)
    t0 = time.perf_counter()
    for i in range(n):
        cycle(i)
    elapsed = time.perf_counter() - t0
    grown = rss_bytes(pid) / base - 1
    assert stats["terminal"] == n
    assert grown < 0.10, f"resident memory grew {grown:.1%} ({base} -> {rss_bytes(pid)} bytes)"
    FIGURES["abort_storm"] = {"cycles": n, "aborted": stats["aborted"], "rss_growth": round(grown, 4), "rss_bytes": rss_bytes(pid), "seconds": round(elapsed, 1)}


def test_load_churn(raw_worker: RawWorker) -> None:
    raw_worker.init()
    pid = raw_worker.proc.pid

    def cycle() -> int:
        raw_worker.load()
        raw_worker.generate("Hi", max_tokens=2)
        loaded = rss_bytes(pid)
        rid = raw_worker.request(P.Cleanup)
        assert isinstance(raw_worker.terminal(rid)[0], P.Ok)
        return loaded

    # Warm-up cycles: the first ones allocate caches that stay (about 6 MB here).
    for _ in range(3):
        base_loaded = cycle()
    base_rss, base_fds = rss_bytes(pid), fd_count(pid)
    n = count(10, 100)
    for _ in range(n):
        loaded = cycle()
    grown = rss_bytes(pid) / base_rss - 1
    grown_loaded = loaded / base_loaded - 1
    fds = fd_count(pid)
    assert fds <= base_fds, f"file descriptors leaked: {base_fds} -> {fds}"
    assert grown < 0.10, f"resident memory after cleanup grew {grown:.1%}"
    assert grown_loaded < 0.10, f"resident memory with a model loaded grew {grown_loaded:.1%}"
    FIGURES["load_churn"] = {
        "cycles": n,
        "rss_after_cleanup_growth": round(grown, 4),
        "rss_loaded_growth": round(grown_loaded, 4),
        "rss_loaded_bytes": loaded,
        "fds_before": base_fds,
        "fds_after": fds,
    }


def test_long_conversation_at_small_context(raw_worker: RawWorker) -> None:
    raw_worker.init()
    n_ctx = raw_worker.load(n_ctx=count(512, 1024), system_prompt="You are Captain Nemo. Always sign as Nemo.").model.n_ctx
    n = count(24, 200)
    truncated = 0
    for i in range(n):
        done, chunks = raw_worker.generate(f"Turn {i}: what do you see from the Nautilus now? Describe it in detail.", max_tokens=64, temperature=0.7)
        assert done.stop_reason in ("eos", "max_tokens", "stop_sequence")
        assert "".join(chunks) == done.text
        assert done.usage.prompt_tokens + 64 <= n_ctx
        truncated += done.truncated_messages
    assert truncated > 0
    # The system prompt survived: after trimming, the prompt still starts with
    # it, so its tokens are reused from the cache turn after turn.
    done, _ = raw_worker.generate("Who are you?", max_tokens=8)
    assert done.usage.cached_tokens >= 10
    FIGURES["long_conversation"] = {"turns": n, "n_ctx": n_ctx, "messages_trimmed": truncated}


# ---------------------------------------------------------------------------
# slow reader, text
# ---------------------------------------------------------------------------


def test_slow_reader_loses_nothing_and_abort_still_works() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO_ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    fcntl.fcntl(proc.stdout.fileno(), 1031, 4096)  # F_SETPIPE_SZ: a small pipe fills fast
    reader = P.reply_reader()
    frames: list[Any] = []

    def read_until(pred: Any) -> Any:
        while True:
            for m in frames:
                if pred(m):
                    return m
            data = os.read(proc.stdout.fileno(), 65536)
            assert data, "worker closed stdout"
            frames.extend(reader.feed(data))

    try:
        proc.stdin.write(P.encode(P.Init(id=1, protocol_version=1)) + P.encode(P.Load(id=2)))
        proc.stdin.flush()
        read_until(lambda m: isinstance(m, P.Loaded))
        frames.clear()
        proc.stdin.write(P.encode(P.Generate(id=3, input="Tell me a very long story about the sea.", max_tokens=3000, temperature=0.9)))
        proc.stdin.flush()
        read_until(lambda m: isinstance(m, P.Chunk))
        rss_before = rss_bytes(proc.pid)
        # Stop reading for the length of the bar (this pause is the test's subject, not a synchronisation).
        time.sleep(count(2, 5))
        rss_paused = rss_bytes(proc.pid)
        proc.stdin.write(P.encode(P.Abort(id=4, target=3)))
        proc.stdin.flush()
        done = read_until(lambda m: isinstance(m, P.Done))
        read_until(lambda m: isinstance(m, P.Ok) and m.id == 4)
        chunks = [m for m in frames if isinstance(m, P.Chunk)]
        assert "".join(c.text for c in chunks) == done.text
        assert frames.index(done) > frames.index(chunks[-1])  # nothing after the terminal reply
        assert done.stop_reason in ("aborted", "eos", "max_tokens")
        assert rss_paused - rss_before < 32 * 1024 * 1024
        FIGURES["slow_reader"] = {"chunk_frames": len(chunks), "completion_tokens": done.usage.completion_tokens, "rss_growth_while_paused_bytes": rss_paused - rss_before, "stop_reason": done.stop_reason}
    finally:
        proc.stdin.close()
        proc.wait(10)


@pytest.mark.parametrize(
    "text",
    [
        "Répète après moi : 🦙🚀✨ — naïve café 👩‍👩‍👧‍👦",
        "用中文写一句关于月亮的话。日本語でも一文書いてください。",
        "اكتب جملة عن البحر. כתוב משפט על הים.",
        "Z̵̢͖a̸̡͛l̷̰̈g̶͈̓o̴̤͑ combining marks: e\u0301 a\u0308 n\u0303",
    ],
)
def test_text_round_trips_as_valid_utf8(shared_worker: RawWorker, text: str) -> None:
    shared_worker.request(P.Reset)
    shared_worker.terminal(shared_worker._next_id)
    done, chunks = shared_worker.generate(text, max_tokens=48, temperature=0.8)
    assert "".join(chunks) == done.text
    for chunk in chunks:
        chunk.encode("utf-8")  # a str that encodes: no lone surrogates
    comp, chunks = shared_worker.generate(text, mode="completion", max_tokens=32, temperature=0.8)
    assert "".join(chunks) == comp.text
    assert not shared_worker.stdout_violations
