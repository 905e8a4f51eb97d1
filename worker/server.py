"""The stdio server: frames in, each request to its lane, replies out.

Threads, one job each:

- the reader (`_read_loop`) decodes requests and sends each one down the lane
  `routes.ROUTES` gives it: answered at once (`ping`, `init`, `abort`,
  `sessions`, `busy`, decode errors), queued for the token thread, or handed to
  the model thread;
- the model thread (the main thread, `serve`) runs every job, one at a time,
  because llama.cpp is not thread-safe;
- the token thread (`_aux_loop`) answers `tokenize`, `detokenize`, `count`;
- the writer (`stdio.FrameWriter`) owns the protocol stream;
- a pipe watch that notices when the host stops reading, and during shutdown
  a watchdog (`shutdown`); outside this module, the parent watch
  (`parent_watch`) and llama.cpp's own threads.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any

import protocol
from protocol import ErrorCode, ProtocolError, Request, RequestId

from .errors import WorkerError
from .handlers import Handlers
from .lanes import Job, JobLane, Lane
from .llama_worker import LlamaWorker
from .log_frames import LogFrameHandler
from .routes import ROUTES
from .shutdown import EXIT_FATAL_FRAME, EXIT_OK, EXIT_PARENT_GONE, Shutdown, pipe_hung_up
from .stdio import FINAL_FLUSH_S, FrameWriter

log = logging.getLogger("worker")

#: When stdout breaks, how long to wait for stdin's end before calling it the
#: host's disappearance (exit 4) rather than its orderly close (exit 0).
EOF_AFTER_BROKEN_PIPE_S = 0.5
READ_SIZE = 256 * 1024


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
        self._jobs = JobLane()
        self._aux: queue.SimpleQueue[Job[Request]] = queue.SimpleQueue()
        self._handlers = Handlers(worker, writer, self._jobs, max_frame_size, log_handler)
        self._shutdown = Shutdown(stop_work=self._jobs.stop)
        self._stdin_ended = threading.Event()

    @property
    def exit_code(self) -> int:
        return self._shutdown.exit_code

    # ------------------------------------------------------------------
    # entry point: the model thread
    # ------------------------------------------------------------------

    def serve(self) -> int:
        """Run until stdin ends or the host goes away; return the exit code."""
        self._handlers.prepare()
        threading.Thread(target=self._read_loop, name="frame-reader", daemon=True).start()
        threading.Thread(target=self._watch_writer, name="pipe-watch", daemon=True).start()
        threading.Thread(target=self._aux_loop, name="token-counter", daemon=True).start()
        while (job := self._jobs.next()) is not None:
            reply = self._handle(job, log_failures=True)
            self._jobs.finished(job)  # before the reply: the next job must not get `busy`
            self._writer.send(reply)
            if self._jobs.idle():
                self._idle(job.request)
        self._worker.cleanup()
        self._shutdown.flushing.set()
        self._writer.close(FINAL_FLUSH_S)
        self._shutdown.finished.set()  # the watchdog, if shutdown started it, stands down
        return self._shutdown.exit_code

    def shutdown(self, exit_code: int, reason: str) -> None:
        """Abort what runs and stop the model loop; callable from any thread, any number of times.

        The first call decides the exit code; later ones change nothing.
        """
        self._shutdown.begin(exit_code, reason)

    def _watch_writer(self) -> None:
        self._writer.broken.wait()
        # A host that closes stdin and stdout together closed the worker in
        # order: whichever pipe the worker notices first, the exit code is 0.
        if pipe_hung_up(self._requests_fd) or self._stdin_ended.wait(EOF_AFTER_BROKEN_PIPE_S):
            self.shutdown(EXIT_OK, "end of stdin (stdout closed too)")
        else:
            self.shutdown(EXIT_PARENT_GONE, "the host closed the protocol pipe")

    # ------------------------------------------------------------------
    # reader thread
    # ------------------------------------------------------------------

    def _read_loop(self) -> None:
        reader = protocol.request_reader(self._max_frame_size)
        while not self._shutdown.started.is_set():
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
        """Send `msg` down its lane (`routes.ROUTES`)."""
        route = ROUTES[type(msg)]
        if not route.before_init and not self._handlers.initialized:
            self._send_error(msg.id, ErrorCode.NOT_INITIALIZED, "send `init` before any other request")
            return
        job: Job[Request] = Job(msg, route.lane)
        if route.lane is Lane.INLINE:
            self._writer.send(self._handle(job))
        elif route.lane is Lane.AUX:
            self._aux.put(job)  # beside the model thread: never busy, never in a generation's way
        else:
            busy_with = self._jobs.submit(job)
            if busy_with is not None:
                self._send_error(msg.id, ErrorCode.BUSY, f"the worker is busy with {busy_with}; retry when it ends or abort it")

    # ------------------------------------------------------------------
    # every lane
    # ------------------------------------------------------------------

    def _handle(self, job: Job[Request], *, log_failures: bool = False) -> Any:
        """Run a request's handler; its reply, or the `error` reply that replaces it."""
        req = job.request
        tag = req.__struct_config__.tag
        try:
            return ROUTES[type(req)].handler(self._handlers, job)
        except WorkerError as exc:
            if log_failures:
                level = logging.ERROR if exc.code in (ErrorCode.GENERATION_FAILED, ErrorCode.INTERNAL) else logging.WARNING
                log.log(level, "%s %r failed: %s: %s", tag, req.id, exc.code.value, exc.message)
            return protocol.Error(id=req.id, code=exc.code, message=exc.message, retryable=exc.retryable)
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            log.exception("internal error in %s %r", tag, req.id)
            return protocol.Error(id=req.id, code=ErrorCode.INTERNAL, message=f"internal error: {type(exc).__name__}: {exc}", retryable=False)

    def _aux_loop(self) -> None:
        """Token counting requests, in order, on their own thread (they only read the vocabulary)."""
        while True:
            self._writer.send(self._handle(self._aux.get()))

    def _idle(self, after: Request) -> None:
        """Work worth doing while no request waits (it must stay short: a request may arrive)."""
        try:
            self._worker.idle(after)
        except Exception:  # noqa: BLE001 - an optimisation must never take the worker down
            log.exception("idle work failed")

    def _send_error(self, request_id: RequestId | None, code: ErrorCode, message: str) -> None:
        self._writer.send(protocol.Error(id=request_id, code=code, message=message, retryable=protocol.is_retryable(code)))
