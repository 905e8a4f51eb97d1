"""The stdio loop: frames in, `LlamaWorker` calls, frames out.

Three threads, one job each:

- the reader (this module's `_read_loop`) decodes requests and answers
  `ping`, `abort`, `init` and `busy` at once, even while a load or a
  generation runs;
- the model thread (the main thread, `serve`) runs every llama.cpp call, one
  job at a time, because llama.cpp is not thread-safe;
- the writer (`stdio.FrameWriter`) owns the protocol stream.

A job is "active" from the moment the reader accepts it until just before
its terminal reply is queued. Clearing it *before* the reply matters: a host
that sends its next request the instant it sees `done` must not get `busy`.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import threading
import time
from dataclasses import dataclass, field

import msgspec

import protocol
from protocol import (
    Abort,
    Cleanup,
    CloseSession,
    Count,
    Detokenize,
    Tokenize,
    Preload,
    RestoreSession,
    SaveSession,
    Sessions,
    ErrorCode,
    Generate,
    Init,
    Load,
    Loaded,
    Ok,
    Ping,
    Pong,
    Progress,
    ProtocolError,
    Ready,
    Request,
    RequestId,
    Reset,
)

from .errors import WorkerError
from .llama_worker import LlamaWorker
from .stdio import FINAL_FLUSH_S, FrameWriter

log = logging.getLogger("worker")

#: Exit codes (documented in PROTOCOL.md).
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_FATAL_FRAME = 3
EXIT_PARENT_GONE = 4

PROGRESS_INTERVAL_S = 0.05  # at most ~20 progress events per second
#: The model thread's time to stop (abort the job, run queued cleanups, free
#: the model) once shutdown begins. The final flush of stdout then has its own
#: `FINAL_FLUSH_S` on top: a slow host still gets the last frames.
SHUTDOWN_GRACE_S = 1.5
#: When stdout breaks, how long to wait for stdin's end before calling it the
#: host's disappearance (exit 4) rather than its orderly close (exit 0).
EOF_AFTER_BROKEN_PIPE_S = 0.5
READ_SIZE = 256 * 1024


@dataclass
class _Job:
    request: Request
    received_at: float
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def id(self) -> RequestId:
        return self.request.id


_STOP = object()


class LogFrameHandler(logging.Handler):
    """Sends critical log records to the host as `log` frames (when `init` asks)."""

    _LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

    def __init__(self, writer: FrameWriter) -> None:
        super().__init__(level=logging.CRITICAL + 1)
        self._writer = writer

    def set_wire_level(self, name: str | None) -> None:
        self.setLevel(self._LEVELS[name] if name else logging.CRITICAL + 1)

    def emit(self, record: logging.LogRecord) -> None:
        # llama.cpp's own chatter stays on stderr unless it is a warning or worse.
        if record.name.startswith("llama.cpp") and record.levelno < logging.WARNING:
            return
        if record.name.startswith("worker.stdio"):
            return  # never recurse into the writer about the writer
        level = "error" if record.levelno >= logging.ERROR else "warning" if record.levelno >= logging.WARNING else "info" if record.levelno >= logging.INFO else "debug"
        try:
            self._writer.send(protocol.Log(level=level, message=self.format(record)))
        except Exception:  # noqa: BLE001
            self.handleError(record)


class WorkerServer:
    def __init__(
        self,
        worker: LlamaWorker,
        requests_fd: int,
        writer: FrameWriter,
        max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE,
        log_handler: LogFrameHandler | None = None,
    ) -> None:
        self._worker = worker
        self._requests_fd = requests_fd
        self._writer = writer
        self._max_frame_size = max_frame_size
        self._log_handler = log_handler
        self._jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._aux: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._active: _Job | None = None
        self._cleanups_pending = 0
        self._initialized = False
        self._ready_info: dict[str, object] | None = None
        self._shutting_down = threading.Event()
        self._shutdown_lock = threading.Lock()
        self._flushing = threading.Event()
        self._finished = threading.Event()
        self._stdin_ended = threading.Event()
        self.exit_code = EXIT_OK

    # ------------------------------------------------------------------
    # entry point
    # ------------------------------------------------------------------

    def serve(self) -> int:
        """Run until stdin ends or the host goes away; return the exit code."""
        self._ready_info = self._worker.initialize()
        reader = threading.Thread(target=self._read_loop, name="frame-reader", daemon=True)
        reader.start()
        threading.Thread(target=self._watch_writer, name="pipe-watch", daemon=True).start()
        threading.Thread(target=self._aux_loop, name="token-counter", daemon=True).start()
        while True:
            item = self._jobs.get()
            if item is _STOP:
                break
            if isinstance(item, _Job):
                self._run_job(item)
                if self._jobs.empty():
                    self._idle(item.request)
        self._worker.cleanup()
        self._flushing.set()
        self._writer.close(FINAL_FLUSH_S)
        self._finished.set()  # the watchdog, if shutdown started it, stands down
        return self.exit_code

    def shutdown(self, exit_code: int, reason: str) -> None:
        """Abort what runs and stop the model loop; callable from any thread, any number of times.

        The first call decides the exit code; later ones change nothing.
        """
        with self._shutdown_lock:
            if self._shutting_down.is_set():
                return
            self._shutting_down.set()
            self.exit_code = exit_code
        log.info("shutting down: %s", reason)
        threading.Thread(target=self._watchdog, name="shutdown-watchdog", daemon=True).start()
        with self._lock:
            if self._active is not None:
                self._active.cancel.set()
        self._jobs.put(_STOP)

    def _watchdog(self) -> None:
        """Exit hard if the model thread is stuck, allowing the final flush its own time."""
        if self._finished.wait(SHUTDOWN_GRACE_S):
            return
        if self._flushing.is_set() and self._finished.wait(FINAL_FLUSH_S + 0.5):
            return
        exit_now(self.exit_code, f"shutdown did not finish within {SHUTDOWN_GRACE_S} s (+{FINAL_FLUSH_S} s to flush); exiting hard")

    def _watch_writer(self) -> None:
        self._writer.broken.wait()
        # A host that closes stdin and stdout together closed the worker in
        # order: whichever pipe the worker notices first, the exit code is 0.
        if _pipe_hung_up(self._requests_fd) or self._stdin_ended.wait(EOF_AFTER_BROKEN_PIPE_S):
            self.shutdown(EXIT_OK, "end of stdin (stdout closed too)")
        else:
            self.shutdown(EXIT_PARENT_GONE, "the host closed the protocol pipe")

    # ------------------------------------------------------------------
    # reader thread
    # ------------------------------------------------------------------

    def _read_loop(self) -> None:
        reader = protocol.request_reader(self._max_frame_size)
        while not self._shutting_down.is_set():
            try:
                data = os.read(self._requests_fd, READ_SIZE)
            except InterruptedError:
                continue
            except OSError as exc:
                log.error("reading requests failed: %s", exc)
                data = b""
            if not data:
                self._stdin_ended.set()
                self.shutdown(EXIT_OK, "end of stdin")
                return
            for item in reader.feed(data):
                if isinstance(item, ProtocolError):
                    self._send_error(item.request_id, item.code, item.message)
                    if item.fatal:
                        log.error("fatal frame: %s", item.message)
                        self.shutdown(EXIT_FATAL_FRAME, item.message)
                        return
                    log.warning("rejected a frame: %s: %s", item.code.value, item.message)
                    continue
                try:
                    self._dispatch(item)
                except Exception as exc:  # noqa: BLE001 - one request must never kill the reader
                    log.exception("internal error handling %s", type(item).__name__)
                    self._send_error(item.id, ErrorCode.INTERNAL, f"internal error: {exc}")

    def _dispatch(self, msg: Request) -> None:
        if isinstance(msg, Ping):
            self._writer.send(Pong(id=msg.id))
            return
        if isinstance(msg, Init):
            self._handle_init(msg)
            return
        if not self._initialized:
            self._send_error(msg.id, ErrorCode.NOT_INITIALIZED, "send `init` before any other request")
            return
        if isinstance(msg, (Tokenize, Detokenize, Count)):
            self._aux.put(msg)  # beside the model thread: never busy, never in a generation's way
            return
        if isinstance(msg, Sessions):
            try:
                self._writer.send(self._worker.list_sessions(msg.id))
            except WorkerError as exc:
                self._send_error(msg.id, exc.code, exc.message)
            return
        if isinstance(msg, Abort):
            with self._lock:
                job = self._active
                if job is not None and (msg.target is None or msg.target == job.id):
                    job.cancel.set()
            self._writer.send(Ok(id=msg.id))
            return
        job = _Job(msg, time.perf_counter())
        with self._lock:
            if isinstance(msg, Cleanup):
                if self._active is not None:
                    self._active.cancel.set()
                self._cleanups_pending += 1
                self._jobs.put(job)
                return
            if self._active is not None and isinstance(self._active.request, Preload) and not self._cleanups_pending:
                # A preload is speculative: whatever comes next interrupts it and runs after it.
                self._active.cancel.set()
                self._active = job
                self._jobs.put(job)
                return
            if self._active is not None or self._cleanups_pending:
                busy_with = f"request {self._active.id!r} ({self._active.request.__struct_config__.tag})" if self._active else "cleanup"
                self._send_error(msg.id, ErrorCode.BUSY, f"the worker is busy with {busy_with}; retry when it ends or abort it")
                return
            self._active = job
            self._jobs.put(job)

    def _handle_init(self, msg: Init) -> None:
        if msg.protocol_version != protocol.PROTOCOL_VERSION:
            self._send_error(
                msg.id,
                ErrorCode.PROTOCOL_MISMATCH,
                f"this worker speaks protocol version {protocol.PROTOCOL_VERSION}, not {msg.protocol_version}",
            )
            return
        if self._log_handler is not None:
            self._log_handler.set_wire_level(msg.log_level)
        self._writer.max_frame_size = msg.max_frame_size or protocol.DEFAULT_MAX_FRAME_SIZE
        self._initialized = True
        assert self._ready_info is not None
        self._writer.send(Ready(id=msg.id, max_frame_size=self._max_frame_size, **self._ready_info))  # type: ignore[arg-type]

    # ------------------------------------------------------------------
    # model thread
    # ------------------------------------------------------------------

    def _run_job(self, job: _Job) -> None:
        req = job.request
        reply: msgspec.Struct
        try:
            if isinstance(req, Generate):
                reply = self._worker.generate(
                    req,
                    on_chunk=lambda text, rid=req.id: self._writer.send_chunk(rid, text),
                    should_abort=job.cancel.is_set,
                    started_at=job.received_at,
                )
                if reply.truncated_messages:  # type: ignore[attr-defined]
                    log.warning("context full: dropped the %d oldest messages of the history", reply.truncated_messages)  # type: ignore[attr-defined]
            elif isinstance(req, Load):
                reply = self._load(req, job)
            elif isinstance(req, Reset):
                self._worker.reset(req.system_prompt, req.session, req.history)
                reply = Ok(id=req.id)
            elif isinstance(req, Preload):
                reply = self._worker.preload(req, should_abort=job.cancel.is_set)
            elif isinstance(req, CloseSession):
                self._worker.close_session(req.session)
                reply = Ok(id=req.id)
            elif isinstance(req, SaveSession):
                reply = self._worker.save_session(req, should_abort=job.cancel.is_set)
            elif isinstance(req, RestoreSession):
                reply = self._worker.restore_session(req)
            elif isinstance(req, Cleanup):
                self._worker.cleanup()
                reply = Ok(id=req.id)
            else:  # pragma: no cover - the reader only queues the types above
                raise WorkerError(ErrorCode.INTERNAL, f"unexpected job {type(req).__name__}")
        except WorkerError as exc:
            level = logging.ERROR if exc.code in (ErrorCode.GENERATION_FAILED, ErrorCode.INTERNAL) else logging.WARNING
            log.log(level, "%s %r failed: %s: %s", req.__struct_config__.tag, req.id, exc.code.value, exc.message)
            reply = protocol.Error(id=req.id, code=exc.code, message=exc.message, retryable=exc.retryable)
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            log.exception("internal error in %s %r", req.__struct_config__.tag, req.id)
            reply = protocol.Error(id=req.id, code=ErrorCode.INTERNAL, message=f"internal error: {type(exc).__name__}: {exc}", retryable=False)
        with self._lock:
            if isinstance(req, Cleanup):
                self._cleanups_pending -= 1
            elif self._active is job:
                self._active = None
        self._writer.send(reply)

    def _aux_loop(self) -> None:
        """Token counting requests, in order, on their own thread (they only read the vocabulary)."""
        handlers = {Tokenize: self._worker.tokenize, Detokenize: self._worker.detokenize, Count: self._worker.count}
        while True:
            msg = self._aux.get()
            try:
                self._writer.send(handlers[type(msg)](msg))  # type: ignore[index, operator]
            except WorkerError as exc:
                self._send_error(msg.id, exc.code, exc.message)
            except Exception as exc:  # noqa: BLE001 - report, keep serving
                log.exception("internal error in %s %r", msg.__struct_config__.tag, msg.id)
                self._send_error(msg.id, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    def _idle(self, after: Request) -> None:
        """Work worth doing while no request waits (it must stay short: a request may arrive)."""
        try:
            self._worker.idle(after)
        except Exception:  # noqa: BLE001 - an optimisation must never take the worker down
            log.exception("idle work failed")

    def _load(self, req: Load, job: _Job) -> Loaded:
        last_sent = -1.0
        last_time = 0.0

        def progress(fraction: float) -> None:
            nonlocal last_sent, last_time
            now = time.monotonic()
            if fraction <= last_sent:
                return
            if fraction < 1.0 and now - last_time < PROGRESS_INTERVAL_S:
                return
            last_sent, last_time = fraction, now
            self._writer.send(Progress(id=req.id, fraction=round(fraction, 4)))

        t0 = time.perf_counter()
        info = self._worker.load_model(req, progress=progress, should_abort=job.cancel.is_set)
        return Loaded(id=req.id, model=info, load_ms=round((time.perf_counter() - t0) * 1000, 3))

    def _send_error(self, request_id: RequestId | None, code: ErrorCode, message: str) -> None:
        self._writer.send(protocol.Error(id=request_id, code=code, message=message, retryable=protocol.is_retryable(code)))


def _pipe_hung_up(fd: int) -> bool:
    """True when every writer of this pipe has closed it (POLLHUP), data left unread or not."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        return any(events & select.POLLHUP for _, events in poller.poll(0))
    except OSError:
        return False


def exit_now(code: int, message: str | None = None) -> None:
    """Leave the process at once with `code`, logging `message` only if that cannot block.

    Logging can block: a host that stopped draining stderr leaves the pipe
    full, and a handler's lock may be held by a thread stuck in that write.
    So the last words are written by a daemon thread given a moment, and
    `os._exit` follows whether it finished or not.
    """

    def last_words() -> None:
        if message:
            log.error("%s", message)
        logging.shutdown()

    speaker = threading.Thread(target=last_words, name="last-words", daemon=True)
    speaker.start()
    speaker.join(0.5)
    os._exit(code)
