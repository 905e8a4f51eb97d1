"""What each request does: one method per request type, named after it.

`routes.ROUTES` says which lane each runs in and points here. A handler gets
the `Job` (the request, when it arrived, its cancel event) and returns the
terminal reply; events (chunks, progress) go straight to the writer. A
`WorkerError` it raises becomes the request's `error` reply (the server does
that, in one place, for every lane).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import protocol
from protocol import (
    Abort,
    Cleanup,
    CloseSession,
    Count,
    Detokenize,
    EndReasoning,
    ErrorCode,
    Generate,
    Init,
    Load,
    Ok,
    Ping,
    Pong,
    Preload,
    Progress,
    Ready,
    Reset,
    RestoreSession,
    SaveSession,
    Sessions,
    Tokenize,
)

from .errors import WorkerError
from .lanes import Job, JobLane
from .llama_worker import LlamaWorker
from .log_frames import LogFrameHandler
from .stdio import FrameWriter

log = logging.getLogger("worker")

PROGRESS_INTERVAL_S = 0.05  # at most ~20 progress events per second


class Handlers:
    def __init__(
        self, worker: LlamaWorker, writer: FrameWriter, jobs: JobLane, max_frame_size: int, log_handler: LogFrameHandler | None = None
    ) -> None:
        self.worker = worker
        self.writer = writer
        self.jobs = jobs
        self.max_frame_size = max_frame_size
        self.log_handler = log_handler
        self.initialized = False
        self._ready_info: dict[str, Any] | None = None

    def prepare(self) -> None:
        """Initialize llama.cpp before the first request (what `ready` will announce)."""
        self._ready_info = self.worker.initialize()

    # -- inline: answered at once on the reader thread ----------------------

    def ping(self, job: Job[Ping]) -> Pong:
        return Pong(id=job.id)

    def init(self, job: Job[Init]) -> Ready:
        msg = job.request
        if msg.protocol_version != protocol.PROTOCOL_VERSION:
            raise WorkerError(ErrorCode.PROTOCOL_MISMATCH, f"this worker speaks protocol version {protocol.PROTOCOL_VERSION}, not {msg.protocol_version}")
        if self.log_handler is not None:
            self.log_handler.set_wire_level(msg.log_level)
        self.writer.max_frame_size = msg.max_frame_size or protocol.DEFAULT_MAX_FRAME_SIZE
        self.initialized = True
        assert self._ready_info is not None, "prepare() first"
        return Ready(id=msg.id, max_frame_size=self.max_frame_size, **self._ready_info)

    def abort(self, job: Job[Abort]) -> Ok:
        self.jobs.abort(job.request.target)
        return Ok(id=job.id)

    def end_reasoning(self, job: Job[EndReasoning]) -> Ok:
        target = job.request.target
        if not self.jobs.end_reasoning(target):
            what = "nothing runs" if target is None else f"request {target!r}"
            raise WorkerError(ErrorCode.NOT_REASONING, f"{what}: no thought to end (not running, never thought, or answering already)")
        return Ok(id=job.id)

    def sessions(self, job: Job[Sessions]) -> protocol.SessionList:
        return self.worker.list_sessions(job.id)

    # -- aux: the token thread ------------------------------------------------

    def tokenize(self, job: Job[Tokenize]) -> protocol.Tokens:
        return self.worker.tokenize(job.request)

    def detokenize(self, job: Job[Detokenize]) -> protocol.Text:
        return self.worker.detokenize(job.request)

    def count(self, job: Job[Count]) -> protocol.TokenCount:
        return self.worker.count(job.request)

    # -- jobs: the model thread ----------------------------------------------

    def generate(self, job: Job[Generate]) -> protocol.Done:
        rid = job.id
        done = self.worker.generate(
            job.request,
            on_chunk=lambda kind, text: self.writer.send_chunk(rid, text, reasoning=kind == "reasoning"),
            should_abort=job.cancel.is_set,
            started_at=job.received_at,
            thoughts=job.thoughts,
            on_tool_call=lambda index, call: self.writer.send(protocol.ToolCallEvent(id=rid, index=index, call=call)),
        )
        if done.truncated_messages:
            log.warning("context full: dropped the %d oldest messages of the history", done.truncated_messages)
        return done

    def load(self, job: Job[Load]) -> protocol.Loaded:
        rid = job.id
        last_sent = -1.0
        last_time = 0.0

        def progress(fraction: float) -> None:
            nonlocal last_sent, last_time
            now = time.monotonic()
            if fraction <= last_sent or (fraction < 1.0 and now - last_time < PROGRESS_INTERVAL_S):
                return
            last_sent, last_time = fraction, now
            self.writer.send(Progress(id=rid, fraction=round(fraction, 4)))

        t0 = time.perf_counter()
        info = self.worker.load_model(job.request, progress=progress, should_abort=job.cancel.is_set)
        return protocol.Loaded(id=rid, model=info, load_ms=round((time.perf_counter() - t0) * 1000, 3))

    def reset(self, job: Job[Reset]) -> Ok:
        req = job.request
        self.worker.reset(req.system_prompt, req.session, req.history)
        return Ok(id=job.id)

    def preload(self, job: Job[Preload]) -> protocol.Preloaded:
        return self.worker.preload(job.request, should_abort=job.cancel.is_set)

    def close_session(self, job: Job[CloseSession]) -> Ok:
        self.worker.close_session(job.request.session)
        return Ok(id=job.id)

    def save_session(self, job: Job[SaveSession]) -> protocol.Saved:
        return self.worker.save_session(job.request, should_abort=job.cancel.is_set)

    def restore_session(self, job: Job[RestoreSession]) -> protocol.Restored:
        return self.worker.restore_session(job.request)

    def cleanup(self, job: Job[Cleanup]) -> Ok:
        self.worker.cleanup()
        return Ok(id=job.id)
