"""How the client reaches a worker: the seam between the request core and a process.

The client never calls `anyio.open_process` itself: it asks its transport to
`start()` a worker and gets `WorkerStreams` back (bytes to the worker, bytes
from it, its stderr, and its fate). `ProcessTransport` spawns the worker as a
child process, which is what every client does unless told otherwise; a test
or an embedder can pass its own (an in-process worker, a socket, a tap that
records the frames), as httpx takes a `transport=`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Protocol

import anyio
import anyio.abc

#: Set in the worker's environment: the worker exits when this process dies.
PARENT_ENV_VAR = "LLAMA_WORKER_PARENT_PID"


def default_worker_command() -> list[str]:
    """This interpreter running the worker package."""
    return [sys.executable, "-m", "worker"]


class WorkerStreams(Protocol):
    """One started worker. Methods may raise `anyio.BrokenResourceError`,
    `anyio.ClosedResourceError` or `OSError` once the worker is gone."""

    @property
    def pid(self) -> int | None:
        """The worker's process id, when it has one."""

    @property
    def returncode(self) -> int | None:
        """None while the worker runs; its exit status after (negative: killed by that signal)."""

    async def send(self, data: bytes) -> None:
        """Write bytes to the worker's input, all of them."""

    def receive(self) -> AsyncIterator[bytes]:
        """The worker's output as it arrives; ends when the worker closes it."""

    def stderr(self) -> AsyncIterator[bytes]:
        """The worker's log output; may end at once when there is none."""

    async def close_input(self) -> None:
        """Close the worker's input (its signal to exit)."""

    async def wait(self) -> int:
        """Wait for the worker to exit; its exit status."""

    def terminate(self) -> None:
        """Ask the worker to exit now (SIGTERM for a process)."""

    def kill(self) -> None:
        """End the worker at once (SIGKILL for a process)."""


class Transport(Protocol):
    """Starts workers: once when the client opens, again on every restart."""

    async def start(self) -> WorkerStreams: ...


class ProcessStreams:
    """A worker child process's pipes, as `WorkerStreams`."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(data)

    async def receive(self) -> AsyncIterator[bytes]:
        assert self.process.stdout is not None
        async for data in self.process.stdout:
            yield data

    async def stderr(self) -> AsyncIterator[bytes]:
        if self.process.stderr is not None:
            async for data in self.process.stderr:
                yield data

    async def close_input(self) -> None:
        if self.process.stdin is not None:
            await self.process.stdin.aclose()

    async def wait(self) -> int:
        return await self.process.wait()

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


class ProcessTransport:
    """Spawn `command` (default: this interpreter's `python -m worker`) with piped stdio."""

    def __init__(
        self, command: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None
    ) -> None:
        self.command = list(command) if command else default_worker_command()
        self.env = dict(env or {})
        self.cwd = cwd

    async def start(self) -> ProcessStreams:
        env = {**os.environ, **self.env, PARENT_ENV_VAR: str(os.getpid())}
        process = await anyio.open_process(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=self.cwd
        )
        return ProcessStreams(process)


__all__ = ["PARENT_ENV_VAR", "ProcessStreams", "ProcessTransport", "Transport", "WorkerStreams", "default_worker_command"]
