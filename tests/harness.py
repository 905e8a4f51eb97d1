"""A raw-frame driver for the real worker process over real pipes.

Tests of the worker talk to it at the frame level (not through the host
client) so they can check exact ordering, raw bytes and hostile input. A
reader thread parses every byte the worker writes on stdout; anything that is
not a well-formed reply frame is recorded in `stdout_violations`, which every
test's teardown checks.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

import protocol

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180.0  # a hang detector, not a speed bar: shared machines can be very slow


class WorkerExited(AssertionError):
    pass


class RawWorker:
    def __init__(self, *args: str, env: dict[str, str] | None = None, cmd: list[str] | None = None) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            cmd or [sys.executable, "-m", "worker", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO_ROOT,
            env=full_env,
        )
        self.messages: queue.Queue[Any] = queue.Queue()
        self.stdout_violations: list[str] = []
        self.stdout_bytes = 0
        self._stderr = bytearray()
        self._next_id = 0
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._err_reader.start()

    # -- plumbing ----------------------------------------------------------

    def _read_stdout(self) -> None:
        reader = protocol.reply_reader()
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                if reader.buffered:
                    self.stdout_violations.append(f"{reader.buffered} trailing bytes that are not a whole frame")
                self.messages.put(None)
                return
            self.stdout_bytes += len(data)
            for item in reader.feed(data):
                if isinstance(item, protocol.ProtocolError):
                    self.stdout_violations.append(repr(item))
                else:
                    self.messages.put(item)

    def _read_stderr(self) -> None:
        fd = self.proc.stderr.fileno()  # type: ignore[union-attr]
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            self._stderr += data
            del self._stderr[:-65536]

    @property
    def stderr(self) -> str:
        return self._stderr.decode("utf-8", errors="replace")

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- sending -----------------------------------------------------------

    def send(self, message: msgspec.Struct) -> Any:
        self.send_raw(protocol.encode(message))
        return getattr(message, "id", None)

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def request(self, cls: type, **fields: Any) -> int:
        rid = self.new_id()
        self.send(cls(id=rid, **fields))
        return rid

    # -- receiving ---------------------------------------------------------

    def recv(self, timeout: float = TIMEOUT) -> Any:
        try:
            msg = self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no frame from the worker within {timeout} s; stderr tail:\n{self.stderr[-3000:]}") from None
        if msg is None:
            self.messages.put(None)
            raise WorkerExited(f"the worker's stdout closed (exit {self.proc.poll()}); stderr tail:\n{self.stderr[-3000:]}")
        return msg

    def until(self, pred: Callable[[Any], bool], timeout: float = TIMEOUT) -> tuple[Any, list[Any]]:
        """Read frames until one matches; return it and the frames before it."""
        deadline = time.monotonic() + timeout
        seen: list[Any] = []
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if pred(msg):
                return msg, seen
            seen.append(msg)

    def terminal(self, rid: Any, timeout: float = TIMEOUT) -> tuple[Any, list[Any]]:
        """The terminal reply of request `rid`, and every other frame before it."""
        return self.until(
            lambda m: getattr(m, "id", None) == rid and not isinstance(m, (protocol.Chunk, protocol.Progress)),
            timeout,
        )

    # -- conveniences --------------------------------------------------------

    def init(self, **fields: Any) -> protocol.Ready:
        rid = self.request(protocol.Init, protocol_version=1, **fields)
        reply, _ = self.terminal(rid)
        assert isinstance(reply, protocol.Ready), reply
        return reply

    def load(self, **fields: Any) -> protocol.Loaded:
        rid = self.request(protocol.Load, **fields)
        reply, _ = self.terminal(rid)
        assert isinstance(reply, protocol.Loaded), reply
        return reply

    def generate(self, input: Any, **fields: Any) -> tuple[protocol.Done, list[str]]:
        fields.setdefault("temperature", 0.0)
        rid = self.request(protocol.Generate, input=input, **fields)
        reply, before = self.terminal(rid)
        assert isinstance(reply, protocol.Done), reply
        chunks = [m.text for m in before if isinstance(m, protocol.Chunk) and m.id == rid]
        return reply, chunks

    def error_for(self, message: msgspec.Struct) -> protocol.Error:
        rid = self.send(message)
        reply, _ = self.terminal(rid)
        assert isinstance(reply, protocol.Error), reply
        return reply

    def close(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("the worker did not exit within 10 s of stdin closing") from None
        self._reader.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_until(pred: Callable[[], bool], timeout: float = TIMEOUT, interval: float = 0.02) -> bool:
    """Poll a condition that has no event to wait on (process exit, /proc state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        threading.Event().wait(interval)
    return pred()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
