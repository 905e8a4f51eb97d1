"""Where a request runs: the lanes, and the bookkeeping of the job lane.

- `INLINE`: answered on the reader thread at once, whatever runs.
- `AUX`: a thread of its own, in order of arrival, beside any job (token counting).
- `JOB`: the model thread, one at a time; another job meanwhile gets `busy`.
- `PREEMPTIBLE`: a job that the next job interrupts, then runs after (preload).
- `QUEUED`: a job that is never `busy`: it aborts the running one and runs after it (cleanup).

A job is "active" from the moment the reader accepts it until just before
its terminal reply is queued. Clearing it *before* the reply matters: a host
that sends its next request the instant it sees `done` must not get `busy`.
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from protocol import Request, RequestId

R = TypeVar("R", bound=Request, covariant=True)


class Lane(enum.Enum):
    INLINE = "inline"
    AUX = "aux"
    JOB = "job"
    PREEMPTIBLE = "preemptible"
    QUEUED = "queued"


@dataclass
class ThoughtControl:
    """A generation's thinking, shared between the model thread and the reader (`end_reasoning`)."""

    thinking: bool = False
    """Written by the decode loop: the model is inside a thought now."""
    end: threading.Event = field(default_factory=threading.Event)
    """Set by `end_reasoning`: close the thought at the next token."""


@dataclass
class Job(Generic[R]):
    """A request on its way through a lane: when it arrived, and whether it was asked to stop."""

    request: R
    lane: Lane
    received_at: float = field(default_factory=time.perf_counter)
    cancel: threading.Event = field(default_factory=threading.Event)
    thoughts: ThoughtControl = field(default_factory=ThoughtControl)

    @property
    def id(self) -> RequestId:
        return self.request.id


class JobLane:
    """The model thread's queue: which job is active, who is `busy`, who preempts whom."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Job[Request] | None] = queue.SimpleQueue()
        self._active: Job[Request] | None = None
        self._queued_pending = 0

    def submit(self, job: Job[Request]) -> str | None:
        """Queue `job`, or say why not (what the worker is busy with)."""
        with self._lock:
            if job.lane is Lane.QUEUED:
                if self._active is not None:
                    self._active.cancel.set()
                self._queued_pending += 1
            elif self._active is not None and self._active.lane is Lane.PREEMPTIBLE and not self._queued_pending:
                self._active.cancel.set()  # speculative work: the newcomer interrupts it and runs after it
                self._active = job
            elif self._active is not None or self._queued_pending:
                if self._active is None:
                    return "cleanup"
                return f"request {self._active.id!r} ({self._active.request.__struct_config__.tag})"
            else:
                self._active = job
            self._queue.put(job)
            return None

    def abort(self, target: RequestId | None) -> None:
        """Cancel the active job if `target` names it (None: whatever runs)."""
        with self._lock:
            job = self._active
            if job is not None and (target is None or target == job.id):
                job.cancel.set()

    def end_reasoning(self, target: RequestId | None) -> bool:
        """Ask the active job to end its thought if `target` names it (None: whatever runs); False when it is not thinking."""
        with self._lock:
            job = self._active
            if job is None or (target is not None and target != job.id) or not job.thoughts.thinking:
                return False
            job.thoughts.end.set()
            return True

    def finished(self, job: Job[Request]) -> None:
        """`job` is done: clear it (call before its terminal reply is queued)."""
        with self._lock:
            if job.lane is Lane.QUEUED:
                self._queued_pending -= 1
            elif self._active is job:
                self._active = None

    def next(self) -> Job[Request] | None:
        """The next job for the model thread; None once `stop` was called."""
        return self._queue.get()

    def idle(self) -> bool:
        return self._queue.empty()

    def stop(self) -> None:
        """Cancel the active job and end the model thread's loop after what is queued."""
        with self._lock:
            if self._active is not None:
                self._active.cancel.set()
        self._queue.put(None)
