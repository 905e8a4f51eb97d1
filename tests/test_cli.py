"""`llama-chat` end to end: one-shot runs, and an interactive session through a pseudo-terminal."""

from __future__ import annotations

import codecs
import json
import os
import platform
import re
import select
import subprocess
import sys
import time

import pytest

from tests.harness import REPO_ROOT, wait_until

TIMEOUT = 120.0  # generous: the machines are shared and noisy
CLI = [sys.executable, "-m", "host.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT)


# ---------------------------------------------------------------------------
# one-shot
# ---------------------------------------------------------------------------


def test_one_shot_prints_the_reply_and_exits_0() -> None:
    proc = run_cli("--prompt", "Say hi", "--max-tokens", "8", "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "Traceback" not in proc.stderr
    # The stats line goes to stderr, apart from the reply.
    assert re.search(r"\[\d+ tokens, [\d.]+ tok/s", proc.stderr), proc.stderr
    assert "tok/s" not in proc.stdout


def test_one_shot_json_prints_the_final_result() -> None:
    proc = run_cli("--prompt", "Say hi", "--max-tokens", "8", "--temperature", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {"text", "stop_reason", "usage", "timings"} <= result.keys()
    assert isinstance(result["text"], str) and result["text"]
    assert result["stop_reason"] in ("max_tokens", "eos")
    assert result["usage"]["prompt_tokens"] > 0
    assert 1 <= result["usage"]["completion_tokens"] <= 8
    assert result["timings"]["total_ms"] > 0 and "tokens_per_second" in result["timings"]


def test_missing_model_is_one_line_on_stderr_and_exit_1() -> None:
    proc = run_cli("--model", "/nonexistent.gguf", "--prompt", "Say hi")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("llama-chat: ") and "/nonexistent.gguf" in lines[0]


# ---------------------------------------------------------------------------
# interactive, through a pseudo-terminal
# ---------------------------------------------------------------------------

# Become a session leader with the pty as controlling terminal (so that ^C on
# the master is a SIGINT for the chat), then run the CLI in this process.
_IN_TERMINAL = (
    "import fcntl, os, sys, termios\n"
    "os.setsid()\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'host.cli', *sys.argv[1:]])\n"
)

STATS = re.compile(r"\[(\d+) tokens, [\d.]+ tok/s, first token \d+ ms, prompt (\d+) \((\d+) cached\), (\w+)\]\r?\n> ")


class Terminal:
    """The CLI on a pseudo-terminal; reads are bounded by a deadline, never by sleeping."""

    def __init__(self, *args: str) -> None:
        master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _IN_TERMINAL, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=REPO_ROOT,
            close_fds=True,
        )
        os.close(slave)
        self.master = master
        self.output = ""  # everything read so far
        self.pos = 0  # how far `expect` has consumed
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def _read(self, deadline: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            data = b""
        if not data:
            raise AssertionError(f"the terminal closed (exit {self.proc.poll()}); output:\n{self.output[-3000:]}")
        self.output += self._decoder.decode(data)
        return True

    def expect(self, pattern: str | re.Pattern[str], timeout: float = TIMEOUT) -> re.Match[str]:
        """Wait for `pattern` in the output not yet consumed; consume up to its end."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output, self.pos)
            if match:
                self.pos = match.end()
                return match
            if not self._read(deadline) and time.monotonic() >= deadline:
                raise AssertionError(f"no {regex.pattern!r} within {timeout} s; output:\n{self.output[-3000:]}")

    def send(self, data: str | bytes) -> None:
        os.write(self.master, data.encode() if isinstance(data, str) else data)

    def line(self, text: str) -> None:
        """Type a line, and consume its echo."""
        self.send(text + "\r")
        self.expect(re.escape(text) + r"\r?\n")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


@pytest.fixture
def terminal() -> Terminal:
    t = Terminal("--max-tokens", "64", "--temperature", "0")
    try:
        yield t  # type: ignore[misc]
    finally:
        t.close()


def reply_stats(t: Terminal) -> tuple[str, dict[str, object]]:
    """Wait for a reply and its stats line (and the prompt after it)."""
    start = t.pos
    m = t.expect(STATS)
    text = t.output[start : m.start()]
    stats = {"tokens": int(m[1]), "prompt": int(m[2]), "cached": int(m[3]), "stop": m[4]}
    return text, stats


def test_interactive_session(terminal: Terminal) -> None:
    t = terminal
    t.expect(r"commands: .*\r?\n> ")

    # A turn: the reply streams, then the stats line, then the prompt again.
    t.line("Say hi in three words.")
    text, first = reply_stats(t)
    assert text.strip(), t.output
    assert first["tokens"] >= 1 and first["stop"] in ("eos", "max_tokens")

    # Ctrl-C while a long reply streams stops it and keeps the session.
    t.line("Tell me a very long story about a dragon, a knight and a lost city.")
    t.expect(r"\S")  # some reply text has appeared
    t.send(b"\x03")
    text, story = reply_stats(t)
    assert story["stop"] == "aborted", t.output
    assert 1 <= story["tokens"] < 64
    assert t.proc.poll() is None

    t.line("What was the story about?")
    text, follow = reply_stats(t)
    assert text.strip(), t.output
    # The conversation went on: the prompt holds the earlier turns, mostly from the cache.
    assert follow["prompt"] > story["prompt"] > first["prompt"]
    assert follow["cached"] > story["prompt"] // 2

    t.line("/reset")
    t.expect(r"\(conversation cleared\)\r?\n> ")
    t.line("Say hi in three words.")
    _, after_reset = reply_stats(t)
    assert after_reset["prompt"] == first["prompt"]

    t.line("/quit")
    assert t.proc.wait(TIMEOUT) == 0


def test_interactive_sessions(terminal: Terminal) -> None:
    t = terminal
    t.expect(r"commands: .*\r?\n> ")
    t.line("Say hi in three words.")
    _, first = reply_stats(t)

    t.line("/session work")
    t.expect(r"\(session: work, 0 messages\)\r?\n> ")
    t.line("Say hi in three words.")
    _, other = reply_stats(t)
    assert other["prompt"] == first["prompt"]  # a fresh conversation, not a follow-up

    t.line("/sessions")
    t.expect(r"  default: 2 messages, \d+ tokens, KV in RAM\r?\n\* work: 2 messages, \d+ tokens, KV in context\r?\n> ")

    t.line("/session default")
    t.expect(r"\(session: default, 2 messages\)\r?\n> ")
    t.line("And again?")
    _, follow = reply_stats(t)
    assert follow["prompt"] > first["prompt"] and follow["cached"] >= first["prompt"]
    t.line("/quit")
    assert t.proc.wait(TIMEOUT) == 0


READ_SYSCALL = {"x86_64": 0, "aarch64": 63}.get(platform.machine())


def blocked_reading_stdin(pid: int) -> bool:
    """The process's main thread sits in read(0, ...)."""
    try:
        with open(f"/proc/{pid}/syscall", encoding="ascii") as f:
            fields = f.read().split()
    except OSError:
        return False
    return len(fields) > 1 and fields[0] == str(READ_SYSCALL) and int(fields[1], 16) == 0


def test_ctrl_c_at_the_prompt_quits(terminal: Terminal) -> None:
    if READ_SYSCALL is None or not os.path.exists("/proc/self/syscall"):
        pytest.skip("needs /proc/PID/syscall on x86_64 or aarch64")
    t = terminal
    t.expect(r"commands: .*\r?\n> ")
    # A SIGINT that lands after input() printed its prompt but before it blocks
    # in read() is only noticed at the next keystroke (CPython's own race), so
    # wait until the chat really waits for the keyboard.
    assert wait_until(lambda: blocked_reading_stdin(t.proc.pid), timeout=TIMEOUT)
    t.send(b"\x03")
    # The chat handles it: a clean exit, not death by signal.
    assert t.proc.wait(TIMEOUT) == 0
